"""The results table: each (model, dataset, strategy) cell's seeds combined into a mean, a spread and a
95% bootstrap interval over queries.

A deterministic cell runs once: n=1, ``repeats`` says "deterministic", std is empty, and the interval
is a bootstrap over its queries. A stochastic cell has one result per seed: mean and std over seeds,
and an interval over seeds and queries (``shelfsight.stats``: a two-level fiducial interval whose seed part keeps
its own degrees of freedom) so that both sources of variance widen it (Bouthillier et al. 2021). Costs get no
interval.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from shelfsight.bench.leaderboard import CLASSIFICATION_METRICS, MAIN_METRICS
from shelfsight.bench.results import DETERMINISTIC, SEEDS, TABLE_COLUMNS, Cell, CellResult, ResultStore
from shelfsight.bench.strategies.base import CLASSIFICATION
from shelfsight.stats import bootstrap_interval, classification_interval

COST = "cost"
LABEL_COLUMNS = ("y_true", "y_pred")


def aggregate(results: list[CellResult], store: ResultStore | None = None, *, n_resamples: int = 1000,
              seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One row per (model, family, dataset, protocol, strategy, metric) of the successful cells."""
    groups: dict[tuple[str, str, str], list[CellResult]] = defaultdict(list)
    for result in results:
        if result.status == "ok":
            groups[result.cell.group].append(result)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: -1 if r.cell.seed is None else r.cell.seed)
        frames = [store.per_query(r.cell) if store is not None else None for r in members]
        rows.extend(_group_rows(members, frames, n_resamples=n_resamples, seed=seed))
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.sort_values(["model", "family", "dataset", "protocol", "strategy", "metric"]).reset_index(drop=True)


def write_tables(store: ResultStore, cells: list[Cell] | None = None, *, n_resamples: int = 1000, seed: int = 0,
                 progress: bool = False) -> pd.DataFrame:
    """``RUN/results.csv`` and ``.parquet``: seeds aggregated into mean, std, n and a bootstrap interval per
    (model, dataset, protocol, strategy, metric), over the cells of the plan (every stored cell when ``cells`` is
    None)."""
    table = aggregate(store.load_all(cells), store, n_resamples=n_resamples, seed=seed, progress=progress)
    store.run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(store.run_dir / "results.csv", index=False)
    table.to_parquet(store.run_dir / "results.parquet", index=False)
    return table


def _group_rows(members: list[CellResult], frames: list[pd.DataFrame | None], *, n_resamples: int,
                seed: int) -> list[dict[str, object]]:
    first = members[0]
    repeats = DETERMINISTIC if all(r.cell.seed is None for r in members) else SEEDS
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for result in members:
        for protocol, metrics in {**result.metrics, COST: result.costs}.items():
            for metric, value in metrics.items():
                values[(protocol, metric)].append(float(value))
    rows = []
    for (protocol, metric), observed in values.items():
        array = np.array(observed, dtype=float)
        low, high = (np.nan, np.nan)
        if protocol != COST and all(f is not None for f in frames):
            low, high = interval(protocol, metric, [f for f in frames if f is not None], _n_classes(first),
                                 n_resamples=n_resamples, seed=seed)
        rows.append({"model": first.cell.model, "family": first.family, "dataset": first.cell.dataset,
                     "protocol": protocol, "strategy": first.cell.strategy, "metric": metric,
                     "mean": float(np.nanmean(array)) if not np.isnan(array).all() else np.nan,
                     "std": float(np.std(array, ddof=1)) if len(array) > 1 else np.nan, "n": len(array),
                     "repeats": repeats, "ci_low": low, "ci_high": high})
    return rows


def _n_classes(result: CellResult) -> int | None:
    classes = result.details.get("classes")
    return int(classes) if isinstance(classes, int | float) else None


def interval(protocol: str, metric: str, frames: list[pd.DataFrame], n_classes: int | None, *,
             n_resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """The bootstrap interval of one metric from the per-query scores of a cell's seeds; NaN when the
    metric has no per-query scores (e.g. the index's recall against exact search)."""
    if protocol == CLASSIFICATION:
        if metric not in CLASSIFICATION_METRICS:
            return np.nan, np.nan
        labels = per_query_matrix(frames, protocol, list(LABEL_COLUMNS))
        if labels is None:
            return np.nan, np.nan
        y_true, y_pred = labels
        classes = n_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
        found = classification_interval(y_true[0].astype(np.int64), y_pred.astype(np.int64),
                                        metric=metric,  # type: ignore[arg-type]  # checked above
                                        n_classes=classes, n_resamples=n_resamples, confidence=confidence,
                                        seed=seed)
    else:
        scores = per_query_matrix(frames, protocol, [metric])
        if scores is None:
            return np.nan, np.nan
        found = bootstrap_interval(scores[0], n_resamples=n_resamples, confidence=confidence, seed=seed)
    return float(found.low), float(found.high)


def per_query_matrix(frames: list[pd.DataFrame], protocol: str, columns: list[str],
                     queries: list[str] | None = None) -> list[np.ndarray] | None:
    """For each column, an ``(S, Q)`` array over the seeds' frames, aligned on the query ids they all
    share (or on ``queries``, when given); None when a column is missing."""
    parts = []
    for frame in frames:
        part = frame[frame["protocol"] == protocol]
        if part.empty or any(c not in part or part[c].isna().all() for c in columns):
            return None
        parts.append(part.set_index("query"))
    shared = queries if queries is not None else sorted(set.intersection(*(set(p.index) for p in parts)))
    return [np.vstack([p.loc[shared, c].to_numpy(dtype=float) for p in parts]) for c in columns]


def shared_queries(frames: list[pd.DataFrame], protocol: str, columns: list[str]) -> list[str]:
    """Queries present, with a value in every column, in every frame."""
    shared: set[str] | None = None
    for frame in frames:
        part = frame[frame["protocol"] == protocol]
        if any(c not in part for c in columns):
            return []
        scored = set(part.loc[part[columns].notna().all(axis=1), "query"])
        shared = scored if shared is None else shared & scored
    return sorted(shared or ())


def main_metric(protocol: str, metrics: set[str]) -> str | None:
    """The metric a column is ranked by: accuracy for classification, else the leaderboard's first present
    (mMP@5, the paper's main score)."""
    wanted = ("accuracy",) if protocol == CLASSIFICATION else MAIN_METRICS
    return next((m for m in wanted if m in metrics), None)
