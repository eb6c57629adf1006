"""The run's plan: the cells of the experiment matrix, in the order they run. Plain cells first, then the plain
cells the label-efficiency curves read and the config lacks, the label-budget cells (``KIND/N``), and the
cross-tuning cells (``toptune@A``) last, after the cells that make what they carry across."""

from __future__ import annotations

from collections.abc import Callable

from shelfsight.bench import strategies
from shelfsight.bench.budgets import ALL
from shelfsight.bench.config import BenchConfig, BenchDataset, ConfigError, ModelEntry
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import budget_strategy, is_stochastic, parse_strategy, seeded_validation

Plan = list[tuple[Cell, ModelEntry, BenchDataset]]


def plan_cells(config: BenchConfig, *, seeded: Callable[[str], bool] | None = None) -> Plan:
    """The matrix in a stable order: dataset, then model, then strategy, then seed; cross-tuning cells
    (``toptune@A``, ``finetune@A``) come last, after the cells that produce what they carry across.

    A deterministic cell appears once with seed None; a stochastic one once per seed of ``repeats``.
    Label-budget cells (``linear/5``, ``bench.label_budgets``) come after the plain cells, once per subset
    seed, with the plain cells their curves read (``all``, the pre-trained level) added if the config lacks them.
    ``seeded(dataset)`` says whether its classification validation part is a seeded draw (default: from
    the declared splits of public datasets; user catalogues count as seeded).
    """
    is_seeded = seeded or (lambda name: seeded_validation(name, None))

    def seeds(strategy: str, model: ModelEntry, dataset: BenchDataset) -> tuple[int | None, ...]:
        stochastic = is_stochastic(strategy, random_init=not model.pretrained,
                                   seeded_validation=is_seeded(dataset.name))
        return config.seeds if stochastic else (None,)

    plain = [
        (Cell(model.label, dataset.name, strategy.name, seed), model, dataset)
        for dataset in config.datasets for model in config.models for strategy in config.strategies
        if not strategies.get(strategy.name).expands and strategy.applies(model, dataset.name)
        for seed in seeds(strategy.name, model, dataset)
    ]
    crossed = [
        (Cell(model.label, dataset.name, strategy, seed), model, dataset)
        for dataset in config.datasets for model in config.models
        for strategy in config.crosstune_strategies(model, dataset.name) for seed in config.seeds
    ]
    by_name = {dataset.name: dataset for dataset in config.datasets}
    read_by_curves = [
        (Cell(model.label, name, kind, seed), model, by_name[name])
        for kind, model, name in required_plain(config) for seed in seeds(kind, model, by_name[name])
    ]
    budgeted = [(cell, model, by_name[name]) for cell, model, name in budget_cells(config)]
    plan = plain + read_by_curves + budgeted + crossed
    refuse_networkless(plan)
    return plan


def refuse_networkless(plan: Plan) -> None:
    """Precomputed vectors have no network: a cell that trains or runs one on them (fine-tuning, the fine-tuned
    side of cross-tuning, their label-budget cells) is refused here, before any cell runs, naming the fix."""
    refused: dict[str, list[str]] = {}
    for cell, model, _ in plan:
        if model.is_vectors and not strategies.get(parse_strategy(cell.strategy)[0]).frozen_embedding:
            refused.setdefault(model.label, []).append(f"{cell.strategy} on {cell.dataset}")
    if not refused:
        return
    label, cells = next(iter(refused.items()))
    others = f" ({len(refused) - 1} more vectors model(s) likewise)" if len(refused) > 1 else ""
    raise ConfigError(
        f"model {label!r} is precomputed vectors: it has no network to train, so these cells cannot run: "
        f"{', '.join(cells)}{others}. Keep those strategies to the other models (`models: [...]` on the strategy "
        "entry; for cross-tuning, `tuned:` without the fine-tuned side), or benchmark the network that made the "
        "vectors (a registered name, or its ONNX file as onnx:PATH).")


def budget_strategies(config: BenchConfig, model: ModelEntry, dataset: str) -> tuple[str, ...]:
    """The strategies the ``label_budgets`` section limits on this model and dataset: those it names, else the
    budgeted strategies the config runs there whose ``budget_default`` is set."""
    section = config.label_budgets
    if section is None or not section.applies(model.label, dataset):
        return ()
    if section.strategies is not None:
        return section.strategies
    return tuple(name for name in strategies.budgeted_names()
                 if strategies.get(name).budget_default and config.runs(name, model, dataset))


def budget_cells(config: BenchConfig) -> list[tuple[Cell, ModelEntry, str]]:
    """Every ``KIND/N`` cell of the config, dataset by dataset, then model, strategy, budget and seed."""
    section = config.label_budgets
    if section is None:
        return []
    return [(Cell(model.label, dataset.name, budget_strategy(kind, budget), seed), model, dataset.name)
            for dataset in config.datasets for model in config.models
            for kind in budget_strategies(config, model, dataset.name)
            for budget in section.numbers for seed in section.subset_seeds(config.seed)]


def required_plain(config: BenchConfig) -> list[tuple[str, ModelEntry, str]]:
    """The plain cells the curves read and the config may not run: ``all`` (the strategy on every training
    photo) and the pre-trained embedding (the zero-label level)."""
    section = config.label_budgets
    if section is None:
        return []
    needed: list[tuple[str, ModelEntry, str]] = []
    for dataset in config.datasets:
        for model in config.models:
            kinds = budget_strategies(config, model, dataset.name)
            if not kinds:
                continue
            wanted = [strategies.baseline().name, *(kinds if ALL in section.budgets else ())]
            needed += [(kind, model, dataset.name) for kind in wanted if not config.runs(kind, model, dataset.name)]
    return needed
