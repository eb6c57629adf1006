"""What the report reads: the run folder's stored results, never live objects.

``RUN/results.csv`` (the tidy table), ``RUN/cells/*.json`` of the run's plan (examples, confusion matrices,
errors; ``RUN/plan.json`` says which, the others are stale and only named), ``RUN/config.json`` and
``RUN/provenance.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.bench.leaderboard import MAIN_METRICS
from shelfsight.bench.results import CellResult, ResultStore, read_table, stale_note
from shelfsight.bench.strategies.zeroshot import TEXT_PROTOCOL
from shelfsight.catalog import declared_entry

NON_RETRIEVAL = ("cost", "classification")
CLASSIFICATION_METRIC = "accuracy"
RANDOM_INIT = "random-init"


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
    table = read_table(path)
    config = _json(path / "config.json")
    table["family"] = table["family"].fillna("unknown").astype(str)  # an empty family reads back as NaN
    floors = random_init_models(config)
    table.loc[table["model"].isin(floors), "family"] = RANDOM_INIT
    store = ResultStore(path)
    plan = store.read_plan()
    planned, stale = store.planned_results(plan)
    return RunData(run_dir=path, table=table, cells=tuple(planned), config=config,
                   provenance=_json(path / "provenance.json"), stale=tuple(sorted(r.cell.cell_id for r in stale)),
                   complete=plan is None or plan.complete)



def random_init_models(config: dict[str, Any]) -> set[str]:
    """Labels of the randomly initialised models (the floor): shown as their own family, since an
    untrained network says nothing about the family of the architecture it borrows."""
    floors = set()
    for entry in config.get("models") or []:
        if isinstance(entry, dict) and entry.get("pretrained") is False:
            floors.add(entry.get("alias") or f"{entry['name']}-random-init")
    return floors


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def datasets(table: pd.DataFrame) -> list[str]:
    return sorted(str(d) for d in table["dataset"].unique())


def retrieval_protocols(table: pd.DataFrame, dataset: str) -> list[str]:
    """The dataset's retrieval protocols, its declared main one first (the dataset entry's order)."""
    present = {str(p) for p in table.loc[table["dataset"] == dataset, "protocol"].unique()} - set(NON_RETRIEVAL)
    entry = declared_entry(dataset)
    declared = [p.name for p in (entry.protocols if entry else ()) if p.name in present]
    return declared + sorted(present - set(declared))


def main_protocol(table: pd.DataFrame, dataset: str) -> str | None:
    """The protocol that decides visual search: the declared main one; never search by words (zeroshot's)."""
    protocols = [p for p in retrieval_protocols(table, dataset) if p != TEXT_PROTOCOL]
    return protocols[0] if protocols else None


def main_metric(table: pd.DataFrame, dataset: str, protocol: str) -> str | None:
    """The leaderboard's sort metric: the first of ``MAIN_METRICS`` present (mMP@5, the paper's main score)."""
    present = set(table.loc[(table["dataset"] == dataset) & (table["protocol"] == protocol), "metric"])
    if protocol == "classification":
        return CLASSIFICATION_METRIC if CLASSIFICATION_METRIC in present else None
    return next((m for m in MAIN_METRICS if m in present), None)


def metric_rows(table: pd.DataFrame, dataset: str, protocol: str, metric: str) -> pd.DataFrame:
    """Rows (model, family, strategy, mean, std, n, ci_low, ci_high) of one metric, best first."""
    rows = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
    columns = ["model", "family", "strategy", "mean", "std", "n", "ci_low", "ci_high"]
    ordered = rows.reindex(columns=columns).sort_values(["mean", "model", "strategy"], ascending=[False, True, True])
    return ordered.reset_index(drop=True)
