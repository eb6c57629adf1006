"""Pure functions over a run's results table (``RUN/results.csv``): which protocol and metric decide a dataset,
one metric's rows best first, and each cell's costs. The recommendation, the run's family of comparisons and the
report all read the table through these, so they agree on what decides."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.leaderboard import MAIN_METRICS
from shelfsight.bench.results import read_table
from shelfsight.bench.strategies.zeroshot import TEXT_PROTOCOL
from shelfsight.catalog import declared_entry

NON_RETRIEVAL = ("cost", "classification")
CLASSIFICATION_METRIC = "accuracy"
RANDOM_INIT = "random-init"
NO_TRAINING = tuple(s.name for s in registry.REGISTRY.values() if s.tier == registry.NO_TRAINING)
"""Strategies that fit nothing: their tuning time is zero, not unknown."""


def read_json(path: Path) -> dict[str, Any]:
    """A run's side file (``config.json``, ``provenance.json``) as a dict; empty when absent."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def load_table(run_dir: str | Path) -> pd.DataFrame:
    """The run's results table with its families as the recommendation reads them (``with_families``)."""
    path = Path(run_dir)
    return with_families(read_table(path), read_json(path / "config.json"))


def with_families(table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """An empty family reads back as NaN: "unknown"; a randomly initialised model is its own family."""
    table["family"] = table["family"].fillna("unknown").astype(str)
    table.loc[table["model"].isin(random_init_models(config)), "family"] = RANDOM_INIT
    return table


def random_init_models(config: dict[str, Any]) -> set[str]:
    """Labels of the randomly initialised models (the floor): shown as their own family, since an
    untrained network says nothing about the family of the architecture it borrows."""
    floors = set()
    for entry in config.get("models") or []:
        if isinstance(entry, dict) and entry.get("pretrained") is False:
            floors.add(entry.get("alias") or f"{entry['name']}-random-init")
    return floors


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


def cost_frame(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """(model, strategy) -> cost means on one dataset, with the gaps that have a known value filled:
    no-training strategies tuned for 0 s, and a backbone's extraction rate (missing when the
    embeddings came from the cache) taken from another cell of the same model."""
    rows = table[(table["dataset"] == dataset) & (table["protocol"] == "cost")]
    if rows.empty:
        return pd.DataFrame()
    frame = rows.pivot_table(index=["model", "strategy"], columns="metric", values="mean")
    if "params_m" not in frame and "params" in frame:
        frame["params_m"] = frame["params"] / 1e6
    if "tune_seconds" not in frame:
        frame["tune_seconds"] = math.nan
    untrained = frame.index.get_level_values("strategy").isin(NO_TRAINING)
    frame.loc[untrained, "tune_seconds"] = frame.loc[untrained, "tune_seconds"].fillna(0.0)
    if "extract_images_per_s" in frame:
        per_model = frame.groupby(level="model")["extract_images_per_s"].transform("max")
        frame["extract_images_per_s"] = frame["extract_images_per_s"].fillna(per_model)
    return frame
