"""What the report reads: the run folder's stored results, never live objects.

``RUN/results.csv`` (the tidy table), ``RUN/cells/*.json`` of the run's plan (examples, confusion matrices,
errors; ``RUN/plan.json`` says which, the others are stale and only named), ``RUN/config.json`` and
``RUN/provenance.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.bench.results import CellResult, ResultStore, read_table, stale_note
from shelfsight.bench.table import read_json, with_families


@dataclass(frozen=True)
class RunData:
    """One bench run as stored: the aggregated table, each cell's record, config and versions."""

    run_dir: Path
    table: pd.DataFrame
    cells: tuple[CellResult, ...]
    config: dict[str, Any]
    provenance: dict[str, Any]
    stale: tuple[str, ...] = ()
    """Stored cells outside the run's plan (dropped from the config, or stored under other inputs)."""
    complete: bool = True
    """False when the run stopped after planning and before writing its tables (they are an earlier plan's)."""

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if c.status != "ok"]

    @property
    def scope_notes(self) -> list[str]:
        """What the report leaves out of its tables, and a run stopped half-way."""
        notes = [stale_note(list(self.stale))] if self.stale else []
        if not self.complete:
            notes.append("This run stopped before writing its tables for its latest plan: the tables and tests shown "
                         "are an earlier plan's. Rerun `shelfsight bench` to finish it.")
        return notes

    def cells_of(self, model: str, dataset: str, strategy: str) -> list[CellResult]:
        """The successful cells of one (model, dataset, strategy), by seed."""
        found = [c for c in self.cells if c.status == "ok" and
                 (c.cell.model, c.cell.dataset, c.cell.strategy) == (model, dataset, strategy)]
        return sorted(found, key=lambda c: -1 if c.cell.seed is None else c.cell.seed)


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; a missing table is a clear error, missing side files are empty."""
    path = Path(run_dir)
    config = read_json(path / "config.json")
    table = with_families(read_table(path), config)
    store = ResultStore(path)
    plan = store.read_plan()
    planned, stale = store.planned_results(plan)
    return RunData(run_dir=path, table=table, cells=tuple(planned), config=config,
                   provenance=read_json(path / "provenance.json"), stale=tuple(sorted(r.cell.cell_id for r in stale)),
                   complete=plan is None or plan.complete)
