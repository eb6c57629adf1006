"""Run every cell of the experiment matrix; reuse a stored cell only when its inputs are unchanged; survive a
failing one.

Each cell's key digests its resolved inputs (``bench.identity``). On a rerun a stored cell is reused when
its key matches, and recomputed otherwise, with the reason said: which inputs changed, that it failed
before, or that ``recompute`` named it. The plan (``RUN/plan.json``: each planned cell and its key) is written
before the first cell runs, and every table and test of the run (results, significance, the label-budget tests,
the report, ``compare``) reads its cells only; a stored cell outside it is stale: named, kept on disk, used nowhere.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from shelfsight import __version__
from shelfsight.bench.aggregate import write_tables
from shelfsight.bench.budgets import is_budget_cell
from shelfsight.bench.compare import FamilySettings, write_significance
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry, config_to_json
from shelfsight.bench.context import RunContext
from shelfsight.bench.estimate import CellEstimate, RunEstimator
from shelfsight.bench.identity import describe_change, digest
from shelfsight.bench.label_budgets import write_label_budgets, write_tests
from shelfsight.bench.plan import Plan, plan_cells
from shelfsight.bench.results import Cell, CellResult, ResultStore, RunPlan, stale_note
from shelfsight.bench.run_progress import RunProgress, duration, print_plan, write_skipped
from shelfsight.bench.significance import describe_family, run_family
from shelfsight.bench.strategies import parse_strategy
from shelfsight.bench.tracking import Tracker, default_tracking_uri
from shelfsight.errors import ShelfsightError
from shelfsight.progress import run_display


class BenchDatasetError(ShelfsightError):
    """A dataset of the config cannot be loaded: the run stops before its first cell."""


def _load_datasets(context: RunContext) -> None:
    """Load every dataset up front: one clear error, not the same failure once per cell."""
    for dataset in context.config.datasets:
        try:
            context.provision.catalog(dataset)
        except Exception as exc:  # noqa: BLE001 - any loading failure stops the run with its reason
            raise BenchDatasetError(f"dataset {dataset.name!r} cannot be loaded: {exc}") from exc


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
    """Stored cells outside the plan (no longer asked for, or stored under other inputs): in no table or test."""
    table: pd.DataFrame | None = None
    tracking_uri: str | None = None
    seconds: float = 0.0
    """Wall time of the cells (planning and the tables excluded)."""


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
    context, cells, decisions, estimates = _planned(config, run_path, store, recompute)
    plan = RunPlan(tuple(cell for cell, _, _ in cells),
                   {cell.cell_id: d.key for (cell, _, _), d in zip(cells, decisions, strict=True)})
    store.write_plan(plan)  # from here on, every table and test reads these cells only
    print_plan(out, cells, decisions, estimates)
    started = time.perf_counter()
    with run_display(out, progress) as display:
        overall = RunProgress(display, [e.seconds for e in estimates])
        for number, (entry, decision) in enumerate(zip(cells, decisions, strict=True), start=1):
            cell_started = time.perf_counter()
            _run_one(context, store, tracker, summary, out, f"[{number}/{len(cells)}] {entry[0].cell_id}",
                     entry, decision, progress=progress)
            overall.done(number - 1, time.perf_counter() - cell_started if decision.reason else 0.0)
            if on_cell is not None:
                on_cell(entry[0])
    summary.seconds = time.perf_counter() - started
    write_skipped(run_path, context.provision.skipped, out)
    out.print(f"[bold]{len(cells)} cells[/] in {duration(summary.seconds)}: {len(summary.computed)} computed, "
              f"{len(summary.reused)} reused, {len(summary.failed)} failed")
    summary.stale = sorted(r.cell.cell_id for r in store.planned_results(plan)[1])
    if summary.stale:
        out.print(f"[yellow]{stale_note(summary.stale)}[/]")
    summary.table = write_tables(store, [cell for cell, _, _ in cells if not is_budget_cell(cell)],
                                 n_resamples=config.stats.bootstrap, seed=config.stats.seed)
    _write_label_budgets(run_path, config, [cell for cell, _, _ in cells], out)
    _write_family(run_path, config, plan, out)
    _write_provenance(run_path, config)
    store.write_plan(replace(plan, complete=True))
    try:
        tracker.log_table(f"{config.name}-results", [run_path / "results.csv", run_path / "config.json"],
                          {"config_digest": config.digest(), "cells": len(cells)})
    except Exception as exc:  # noqa: BLE001
        out.print(f"[yellow]MLflow logging of the results table failed: {exc}[/]")
    return summary


@dataclass(frozen=True)
class Decision:
    """Whether a cell runs, and why: ``reason`` None means the stored result is reused."""

    inputs: dict[str, object]
    key: str
    reason: str | None
    error: str = ""
    trace: str = ""


def _decide(context: RunContext, store: ResultStore, planned: tuple[Cell, ModelEntry, BenchDataset],
            forced: bool) -> Decision:
    cell, model, dataset = planned
    try:
        inputs = context.cell_inputs(cell, model, dataset)
    except Exception as exc:  # noqa: BLE001 - a cell whose inputs cannot be resolved fails alone
        return Decision({}, "", "new", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    key = digest(inputs)
    return Decision(inputs, key, _why_compute(store.load(cell), key, inputs, forced))


def _planned(config: BenchConfig, run_path: Path, store: ResultStore, recompute: Sequence[str]
             ) -> tuple[RunContext, Plan, list[Decision], list[CellEstimate]]:
    """Load the datasets (one clear error if one cannot be), plan the cells, decide reuse, estimate costs."""
    context = RunContext(config, run_path, forced=lambda cell: _forced(cell, recompute))
    _load_datasets(context)
    cells = plan_cells(config, seeded=context.provision.seeded_validation)
    context.provision.check_vectors((model.label, dataset.name) for _, model, dataset in cells)
    decisions = [_decide(context, store, planned, _forced(planned[0], recompute)) for planned in cells]
    return context, cells, decisions, _estimates(context, cells, decisions)


def show_plan(config: BenchConfig, run_dir: str | Path, *, console: Console, recompute: Sequence[str] = ()) -> float:
    """Print what ``run_bench`` would do and its estimated time, running nothing; returns the estimate (s)."""
    run_path = Path(run_dir)
    _, cells, decisions, estimates = _planned(config, run_path, ResultStore(run_path), recompute)
    print_plan(console, cells, decisions, estimates)
    return sum(e.seconds for e in estimates)


def _run_one(context: RunContext, store: ResultStore, tracker: Tracker, summary: BenchSummary, out: Console,
             prefix: str, planned: tuple[Cell, ModelEntry, BenchDataset], decision: Decision, *,
             progress: bool) -> None:
    cell, model, dataset = planned
    if decision.reason is None:
        summary.reused.append(cell.cell_id)
        out.print(f"{prefix}: [dim]reused (inputs unchanged)[/]")
        return
    summary.reasons[cell.cell_id] = decision.reason
    out.print(f"{prefix}: running ({decision.reason})")
    if not decision.error:
        result, per_query = context.run_cell(cell, model, dataset, progress=progress)
    else:
        result = CellResult(cell=cell, status="error", error=decision.error, details={"traceback": decision.trace})
        per_query = None
    result.key, result.inputs = decision.key, decision.inputs
    path = store.save(result, per_query)
    try:
        tracker.log_cell(result, context.identity.params(cell, model), path)
    except Exception as exc:  # noqa: BLE001 - results are on disk; tracking is best effort
        out.print(f"[yellow]MLflow logging failed for {cell.cell_id}: {exc}[/]")
    if result.status == "ok":
        summary.computed.append(cell.cell_id)
        out.print(f"{prefix}: [green]ok[/] in {result.costs.get('cell_seconds', 0):.1f} s")
    else:
        summary.failed.append(cell.cell_id)
        out.print(f"{prefix}: [red]failed[/]: {result.error}")


def _estimates(context: RunContext, cells: Plan, decisions: list[Decision]) -> list[CellEstimate]:
    """Each cell's estimate (0 for a reused one); a cell that cannot be estimated counts as unknown."""
    estimator = RunEstimator(context.config, context.provision)
    out = []
    for (cell, model, dataset), decision in zip(cells, decisions, strict=True):
        if decision.reason is None:
            out.append(CellEstimate(0.0, "reused"))
            continue
        try:
            out.append(estimator.estimate(cell, model, dataset))
        except Exception as exc:  # noqa: BLE001 - an estimate is advice; the cell says what is wrong
            out.append(CellEstimate(0.0, f"not estimated ({type(exc).__name__})"))
    return out


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


def _write_label_budgets(run_dir: Path, config: BenchConfig, cells: list[Cell], out: Console) -> None:
    """The label-efficiency curves of the plan's budget cells (an earlier plan's removed when it has none)."""
    try:
        write_label_budgets(run_dir, config, cells)
    except Exception as exc:  # noqa: BLE001 - the main table stands without the curves; say why
        out.print(f"[yellow]label-budget curves failed: {type(exc).__name__}: {exc}[/]")


def _write_family(run_dir: Path, config: BenchConfig, plan: RunPlan, out: Console) -> None:
    """Every comparison the run reports (each cell against its column's best, the label-budget tests, the
    report's recommendation and guidance) tested as one Holm family over the planned cells; then
    ``significance.csv`` and ``label-budgets-tests.csv`` as views of it. The report asks nothing more."""
    try:
        found = run_family(run_dir, FamilySettings.of(config.stats), plan)
        found.family.write(run_dir)
        write_significance(run_dir, found.family, found.significance)
        if found.budget_tests:
            write_tests(run_dir, found.budget_tests, found.family)
        out.print(describe_family(found.family))
    except Exception as exc:  # noqa: BLE001 - the table stands without them; say why
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
