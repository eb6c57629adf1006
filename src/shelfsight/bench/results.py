"""Results as plain files with their provenance: one JSON per cell, one tidy table per run.

The report and the leaderboard read only these files, never live objects.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

TABLE_COLUMNS = ["model", "family", "dataset", "protocol", "strategy", "metric", "mean", "std", "n", "repeats",
                 "ci_low", "ci_high"]
"""``std`` is empty (NaN) when n=1; ``repeats`` says whether n counts seeds or the cell is deterministic;
``ci_low``/``ci_high`` are the 95% bootstrap interval over queries (and seeds, where there are several)."""
DETERMINISTIC = "deterministic"
SEEDS = "seeds"
QUERIES_SUFFIX = ".queries.parquet"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a model on a dataset with a strategy, and a seed when the cell is
    stochastic (``None``: deterministic, run once)."""

    model: str
    dataset: str
    strategy: str
    seed: int | None = None

    @property
    def cell_id(self) -> str:
        raw = f"{self.model}__{self.dataset}__{self.strategy}" + (f"__seed{self.seed}" if self.seed is not None else "")
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)

    @property
    def group(self) -> tuple[str, str, str]:
        """What the seeds of a stochastic cell are repeats of."""
        return self.model, self.dataset, self.strategy


@dataclass
class CellResult:
    """What one cell produced: metric values per protocol, costs, provenance, or the error.

    ``key`` digests ``inputs`` (``bench.identity``): a stored cell is reused only under the same key.
    """

    cell: Cell
    status: str  # "ok" or "error"
    family: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """protocol -> metric -> value"""
    costs: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    key: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> CellResult:
        data = json.loads(text)
        data["cell"] = Cell(**data["cell"])
        return cls(**data)


class ResultStore:
    """``RUN/cells/<cell_id>.json`` files with their per-query scores beside them
    (``<cell_id>.queries.parquet``: a ``protocol`` and a ``query`` column, then one column per metric;
    classification rows hold ``y_true`` and ``y_pred``), written atomically, and the combined tables."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"

    def path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.cell_id}.json"

    def queries_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.cell_id}{QUERIES_SUFFIX}"

    def load(self, cell: Cell) -> CellResult | None:
        path = self.path(cell)
        return CellResult.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save(self, result: CellResult, per_query: pd.DataFrame | None = None) -> Path:
        """Per-query scores first, then the JSON that makes the cell count as done."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        queries = self.queries_path(result.cell)
        if per_query is not None:
            atomic_write(queries, lambda target: per_query.to_parquet(target, index=False))
        else:
            queries.unlink(missing_ok=True)
        target = self.path(result.cell)
        atomic_write(target, lambda path: path.write_text(result.to_json(), encoding="utf-8"))
        return target

    def per_query(self, cell: Cell) -> pd.DataFrame | None:
        path = self.queries_path(cell)
        return pd.read_parquet(path) if path.is_file() else None

    def load_all(self, cells: list[Cell] | None = None) -> list[CellResult]:
        """Every stored cell, or only those of ``cells`` (the current plan) that are stored."""
        if cells is None:
            return [CellResult.from_json(p.read_text(encoding="utf-8")) for p in sorted(self.cells_dir.glob("*.json"))]
        return [r for r in (self.load(c) for c in cells) if r is not None]

    def write_plan(self, plan: RunPlan) -> Path:
        """``RUN/plan.json``, written atomically: the cells every table and test of the run reads."""
        return atomic_write(self.run_dir / PLAN_FILE, lambda path: path.write_text(plan.to_json(), encoding="utf-8"))

    def read_plan(self) -> RunPlan | None:
        """The run's plan; None for a run written before plans were recorded."""
        path = self.run_dir / PLAN_FILE
        return RunPlan.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None

    def planned_results(self, plan: RunPlan | None = None) -> tuple[list[CellResult], list[CellResult]]:
        """The stored cells of the plan (``plan``, else ``RUN/plan.json``) stored under their planned key, and
        every other stored cell (stale: not planned, or stored under other inputs). Without any plan (an
        older run): every stored cell, none stale."""
        plan = plan if plan is not None else self.read_plan()
        stored = self.load_all() if self.cells_dir.is_dir() else []
        if plan is None:
            return stored, []
        planned = [plan.keys.get(r.cell.cell_id) == r.key for r in stored]
        return ([r for r, keep in zip(stored, planned, strict=True) if keep],
                [r for r, keep in zip(stored, planned, strict=True) if not keep])


def read_table(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        raise ShelfsightError(f"{path}: no results table. Run `shelfsight bench CONFIG --run-dir {run_dir}` first.")
    table = pd.read_csv(path)
    for column in TABLE_COLUMNS:
        if column not in table:  # a table written before intervals existed
            table[column] = DETERMINISTIC if column == "repeats" else float("nan")
    return table


@dataclass(frozen=True)
class RunPlan:
    """The cells a run reports, each with the key it was planned under (``bench.identity``). Results,
    significance, label-budget tests, the report and ``compare`` read these cells only, so a model dropped
    from the config or a seed dropped from ``repeats`` cannot enter a table or a test. ``complete`` turns
    True once the run has written its tables for this plan (False: stopped half-way)."""

    cells: tuple[Cell, ...]
    keys: dict[str, str]
    """cell id -> key"""
    complete: bool = False

    def to_json(self) -> str:
        cells = [{**asdict(cell), "id": cell.cell_id, "key": self.keys.get(cell.cell_id, "")} for cell in self.cells]
        return json.dumps({"complete": self.complete, "cells": cells}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        data = json.loads(text)
        cells = tuple(Cell(c["model"], c["dataset"], c["strategy"], c["seed"]) for c in data["cells"])
        keys = {cell.cell_id: str(c["key"]) for cell, c in zip(cells, data["cells"], strict=True)}
        return cls(cells, keys, bool(data.get("complete", False)))


def stale_note(stale: list[str], shown: int = 5) -> str:
    """'N stored cells are not in this run's plan: a, b, ...' (empty when none)."""
    if not stale:
        return ""
    more = f" and {len(stale) - shown} more" if len(stale) > shown else ""
    return (f"{len(stale)} stored cell{'s are' if len(stale) > 1 else ' is'} not in this run's plan (dropped from the "
            f"config, or stored under other inputs): {', '.join(stale[:shown])}{more}. Left out of every table and "
            "test; the files stay in RUN/cells.")
