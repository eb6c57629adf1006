"""Run every cell of the experiment matrix; reuse a stored cell only when its inputs are unchanged; survive a
failing one.

Each cell's key digests its resolved inputs (``bench.identity``). On a rerun a stored cell is reused when
its key matches, and recomputed otherwise, with the reason said: which inputs changed, that it failed
before, or that ``recompute`` named it. The results table holds the cells of the current plan only.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from shelfsight import __version__
from shelfsight.bench import strategies
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry, config_to_json
from shelfsight.bench.context import RunContext
from shelfsight.bench.identity import describe_change, digest
from shelfsight.bench.results import Cell, CellResult, ResultStore
from shelfsight.bench.strategies import is_stochastic, parse_strategy, seeded_validation
from shelfsight.bench.tracking import Tracker, default_tracking_uri


@dataclass
class BenchSummary:
    """What a run did with each cell of its plan."""

    run_dir: Path
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """cell id -> why it was computed (new, inputs changed, failed before, forced)."""
    stale: list[str] = field(default_factory=list)
    """Stored cells the config no longer asks for: left out of the table."""
    table: pd.DataFrame | None = None
    tracking_uri: str | None = None


Plan = list[tuple[Cell, ModelEntry, BenchDataset]]


def plan_cells(config: BenchConfig, *, seeded: Callable[[str], bool] | None = None) -> Plan:
    """The matrix in a stable order: dataset, then model, then strategy, then seed; cross-tuning cells
    (``toptune@A``, ``finetune@A``) come last, after the cells that produce what they carry across.

    A deterministic cell appears once with seed None; a stochastic one once per seed of ``repeats``.
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
    return plain + crossed


def run_bench(
    config: BenchConfig, run_dir: str | Path, *, tracking_uri: str | None = None, progress: bool = True,
    console: Console | None = None, on_cell: Callable[[Cell], None] | None = None, recompute: Sequence[str] = (),
) -> BenchSummary:
    """Evaluate every cell whose stored result is missing, failed, or keyed by other inputs; then write
    the results table (with intervals) and the significance of each cell against the best.

    ``recompute``: glob patterns of cell ids (``*toptune*``) to compute again whatever is stored; a
    cross-tuning cell whose source cell matches is recomputed too.
    """
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    out = console or Console(quiet=not progress)
    store = ResultStore(run_path)
    (run_path / "config.json").write_text(config_to_json(config))
    uri = tracking_uri or config.tracking.uri or default_tracking_uri(run_path)
    tracker = Tracker(uri, config.tracking.experiment or config.name, enabled=config.tracking.enabled,
                      artifact_root=run_path / "mlflow-artifacts")
    summary = BenchSummary(run_dir=run_path, tracking_uri=uri if config.tracking.enabled else None)
    context = RunContext(config, run_path, forced=lambda cell: _forced(cell, recompute))
    cells = plan_cells(config, seeded=context.seeded_validation)
    for number, (cell, model, dataset) in enumerate(cells, start=1):
        _run_one(context, store, tracker, summary, out, f"[{number}/{len(cells)}] {cell.cell_id}",
                 (cell, model, dataset), forced=_forced(cell, recompute), progress=progress)
        if on_cell is not None:
            on_cell(cell)
    planned = {cell.cell_id for cell, _, _ in cells}
    summary.stale = sorted(r.cell.cell_id for r in store.load_all() if r.cell.cell_id not in planned)
    if summary.stale:
        out.print(f"[yellow]{len(summary.stale)} stored cell(s) are not in this config and stay out of the "
                  f"table[/]: {', '.join(summary.stale[:5])}{' ...' if len(summary.stale) > 5 else ''}")
    summary.table = store.write_tables([cell for cell, _, _ in cells], n_resamples=config.stats.bootstrap,
                                       seed=config.stats.seed)
    _write_significance(run_path, config, out)
    _write_provenance(run_path, config)
    try:
        tracker.log_table(f"{config.name}-results", [run_path / "results.csv", run_path / "config.json"],
                          {"config_digest": config.digest(), "cells": len(cells)})
    except Exception as exc:  # noqa: BLE001
        out.print(f"[yellow]MLflow logging of the results table failed: {exc}[/]")
    return summary


def _run_one(context: RunContext, store: ResultStore, tracker: Tracker, summary: BenchSummary, out: Console,
             prefix: str, planned: tuple[Cell, ModelEntry, BenchDataset], *, forced: bool, progress: bool) -> None:
    cell, model, dataset = planned
    error, trace = "", ""
    try:
        inputs = context.cell_inputs(cell, model, dataset)
    except Exception as exc:  # noqa: BLE001 - a cell whose inputs cannot be resolved fails alone
        inputs, error, trace = {}, f"{type(exc).__name__}: {exc}", traceback.format_exc()
    key = digest(inputs) if inputs else ""
    stored = store.load(cell)
    reason = _why_compute(stored, key, inputs, forced)
    if reason is None:
        summary.reused.append(cell.cell_id)
        out.print(f"{prefix}: [dim]reused (inputs unchanged)[/]")
        return
    summary.reasons[cell.cell_id] = reason
    out.print(f"{prefix}: running ({reason})")
    if not error:
        result, per_query = context.run_cell(cell, model, dataset, progress=progress)
    else:
        result, per_query = CellResult(cell=cell, status="error", error=error, details={"traceback": trace}), None
    result.key, result.inputs = key, inputs
    path = store.save(result, per_query)
    try:
        tracker.log_cell(result, context.params(cell, model), path)
    except Exception as exc:  # noqa: BLE001 - results are on disk; tracking is best effort
        out.print(f"[yellow]MLflow logging failed for {cell.cell_id}: {exc}[/]")
    if result.status == "ok":
        summary.computed.append(cell.cell_id)
        out.print(f"{prefix}: [green]ok[/] in {result.costs.get('cell_seconds', 0):.1f} s")
    else:
        summary.failed.append(cell.cell_id)
        out.print(f"{prefix}: [red]failed[/]: {result.error}")


def _why_compute(stored: CellResult | None, key: str, inputs: dict[str, object], forced: bool) -> str | None:
    """None to reuse the stored cell; else the reason it is computed."""
    if forced:
        return "recompute requested"
    if stored is None:
        return "new"
    if stored.status != "ok":
        return "failed before"
    if not key or stored.key != key:
        return f"inputs changed: {describe_change(stored.inputs, inputs)}" if stored.inputs else \
            "stored without an input key (an older shelfsight)"
    return None


def _forced(cell: Cell, patterns: Sequence[str]) -> bool:
    """Whether ``recompute`` names the cell, or the cell that a cross-tuning cell carries across."""
    names = [cell.cell_id]
    kind, source = parse_strategy(cell.strategy)
    if source is not None:
        names.append(Cell(cell.model, source, kind, cell.seed).cell_id)
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _write_significance(run_dir: Path, config: BenchConfig, out: Console) -> None:
    from shelfsight.bench.compare import write_significance

    try:
        write_significance(run_dir, alpha=config.stats.alpha, n_permutations=config.stats.permutations,
                           n_resamples=config.stats.bootstrap, seed=config.stats.seed)
    except Exception as exc:  # noqa: BLE001 - the table stands without it; say why
        out.print(f"[yellow]significance tests failed: {type(exc).__name__}: {exc}[/]")


def _write_provenance(run_dir: Path, config: BenchConfig) -> None:
    import importlib.metadata as metadata

    packages = ("torch", "torchvision", "timm", "open_clip_torch", "transformers", "pymilvus", "milvus-lite",
                "mlflow", "numpy", "scikit-learn")
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    provenance = {"shelfsight": __version__, "python": platform.python_version(), "platform": platform.platform(),
                  "config_digest": config.digest(), "packages": versions, "written": time.time()}
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
