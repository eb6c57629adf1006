"""The strategies, declared once each, in one explicit registry.

Runner, config, leaderboard, report and recommendation read this registry: a strategy's name is spelled
in its own module only. Adding one is a new module with a ``STRATEGY`` and a line in ``REGISTRY``.
"""

from __future__ import annotations

from shelfsight.bench.strategies import (
    compress,
    compress_toptune,
    crosstune,
    finetune,
    knn,
    linear,
    ncm,
    openset,
    pretrained,
    toptune,
    whiten,
    zeroshot,
)
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    FULL_TRAINING,
    HEAD_ONLY,
    NO_TRAINING,
    TIER_NAMES,
    TUNING_RECORD,
    CellRequest,
    ConfigSection,
    CostParts,
    CostQuery,
    Prepared,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
    TunedModel,
    TuningServices,
    budget_strategy,
    parse_strategy,
    split_budget,
)
from shelfsight.bench.strategies.scoring import ClassificationData, classification_data, retrieval_scores
from shelfsight.bench.strategies.toptune import train_toptune
from shelfsight.catalog import Catalog, classification_for, declared_entry

__all__ = [
    "CLASSIFICATION", "FULL_TRAINING", "HEAD_ONLY", "NO_TRAINING", "REGISTRY", "TIER_NAMES", "TUNING_RECORD",
    "CellRequest", "ClassificationData", "ConfigSection", "CostParts", "CostQuery", "Prepared", "Sections", "Strategy",
    "StrategyInputs", "StrategyOutput", "TunedModel", "TuningServices", "baseline", "budget_strategy",
    "budgeted_names", "carried", "carried_names", "classification_data", "config_sections", "expanding", "get",
    "is_stochastic", "names", "parse_strategy", "rank", "retrieval_scores", "seeded_validation", "split_budget",
    "strategy_of", "tier_of", "train_toptune",
]

REGISTRY: dict[str, Strategy] = {s.name: s for s in (
    pretrained.STRATEGY,
    whiten.STRATEGY,  # no training either: after the frozen embedding it adapts
    zeroshot.STRATEGY, knn.STRATEGY, ncm.STRATEGY, linear.STRATEGY, toptune.STRATEGY,
    finetune.STRATEGY, crosstune.STRATEGY,
    compress.STRATEGY, compress_toptune.STRATEGY,
    openset.STRATEGY,
)}
"""In order of cost: the order of leaderboards, charts and the recommendation's budgets."""


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Strategy:
    """The strategy called ``name``; a typo names the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def strategy_of(cell_strategy: str) -> Strategy:
    """The strategy that runs a cell: ``toptune@A`` is run by the expanding (cross-tuning) strategy."""
    kind, source = parse_strategy(cell_strategy)
    return expanding() if source is not None else get(kind)


def carried(kind: str) -> Strategy:
    strategy = get(kind)
    if strategy.carry is None:
        raise ValueError(f"strategy {kind!r} produces no tuned model to carry across; use one of "
                         f"{', '.join(carried_names())}")
    return strategy


def carried_names() -> tuple[str, ...]:
    """Strategies whose tuned model another dataset can evaluate (``NAME@SOURCE``)."""
    return tuple(s.name for s in REGISTRY.values() if s.carry is not None)


def budgeted_names() -> tuple[str, ...]:
    """Strategies that learn from training labels: what a label-efficiency curve can limit."""
    return tuple(s.name for s in REGISTRY.values() if s.budgeted)


def config_sections() -> tuple[ConfigSection, ...]:
    """The config sections the strategies own, in registry order: the bench config's strategy sections."""
    return tuple(s.section for s in REGISTRY.values() if s.section is not None)


def expanding() -> Strategy:
    return next(s for s in REGISTRY.values() if s.expands)


def baseline() -> Strategy:
    return next(s for s in REGISTRY.values() if s.baseline)


def tier_of(cell_strategy: str) -> int:
    """A cell's cost tier; a cross-tuning cell costs what its carried strategy costs; unknown: full training."""
    kind, _ = parse_strategy(cell_strategy)
    return REGISTRY[kind].tier if kind in REGISTRY else FULL_TRAINING


def rank(cell_strategy: str) -> tuple[int, str]:
    """Sort key: plain strategies in registry order, then cross-tuned ones (``toptune@A``) by name."""
    order = list(REGISTRY)
    return (order.index(cell_strategy) if cell_strategy in REGISTRY else len(order), cell_strategy)


def is_stochastic(cell_strategy: str, *, random_init: bool, seeded_validation: bool) -> bool:
    """Whether a cell must run per seed: a stochastic strategy, a randomly initialised backbone (the seed
    draws its weights), or a classification strategy whose validation part is a seeded draw."""
    strategy = strategy_of(cell_strategy)
    return strategy.stochastic or random_init or (strategy.classifies and seeded_validation)


def seeded_validation(dataset: str, catalog: Catalog | None) -> bool:
    """True when classification carves its validation part from train with the seed (no ``val`` split)."""
    entry = declared_entry(dataset)
    if entry is not None and entry.classification is not None:
        return entry.classification.val is None
    if catalog is None:
        return True
    splits = classification_for(dataset, catalog)
    return splits is None or splits.val is None
