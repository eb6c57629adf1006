"""Results as plain files with their provenance: one JSON per cell, one tidy table per run.

The report and the leaderboard read only these files, never live objects.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLE_COLUMNS = ["model", "family", "dataset", "protocol", "strategy", "metric", "mean", "std", "n"]


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a model on a dataset with a strategy and a seed."""

    model: str
    dataset: str
    strategy: str
    seed: int

    @property
    def cell_id(self) -> str:
        raw = f"{self.model}__{self.dataset}__{self.strategy}__seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


@dataclass
class CellResult:
    """What one cell produced: metric values per protocol, costs, provenance, or the error."""

    cell: Cell
    status: str  # "ok" or "error"
    family: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """protocol -> metric -> value"""
    costs: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> CellResult:
        data = json.loads(text)
        data["cell"] = Cell(**data["cell"])
        return cls(**data)


class ResultStore:
    """``RUN/cells/<cell_id>.json`` files, written atomically, and the combined tables."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"

    def path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.cell_id}.json"

    def is_done(self, cell: Cell) -> bool:
        """Finished successfully; failed cells are tried again on the next run."""
        path = self.path(cell)
        return path.is_file() and CellResult.from_json(path.read_text()).status == "ok"

    def save(self, result: CellResult) -> Path:
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        target = self.path(result.cell)
        descriptor, temporary = tempfile.mkstemp(prefix=".cell-", dir=self.cells_dir)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(result.to_json())
        os.replace(temporary, target)
        return target

    def load_all(self) -> list[CellResult]:
        return [CellResult.from_json(p.read_text()) for p in sorted(self.cells_dir.glob("*.json"))]

    def write_tables(self) -> pd.DataFrame:
        """Aggregate seeds into mean, std and n per (model, dataset, protocol, strategy, metric)."""
        table = aggregate(self.load_all())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(self.run_dir / "results.csv", index=False)
        table.to_parquet(self.run_dir / "results.parquet", index=False)
        return table


def aggregate(results: list[CellResult]) -> pd.DataFrame:
    rows = [
        {"model": r.cell.model, "family": r.family, "dataset": r.cell.dataset, "protocol": protocol,
         "strategy": r.cell.strategy, "seed": r.cell.seed, "metric": metric, "value": value}
        for r in results if r.status == "ok"
        for protocol, values in {**r.metrics, "cost": r.costs}.items() for metric, value in values.items()
    ]
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    frame = pd.DataFrame(rows)
    keys = ["model", "family", "dataset", "protocol", "strategy", "metric"]
    grouped = frame.groupby(keys, sort=True)["value"]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["std"] = table["std"].fillna(0.0)
    return table[TABLE_COLUMNS]


def read_table(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        from shelfsight.errors import ShelfsightError

        raise ShelfsightError(f"{path}: no results table. Run `shelfsight bench CONFIG --run-dir {run_dir}` first.")
    return pd.read_csv(path)
