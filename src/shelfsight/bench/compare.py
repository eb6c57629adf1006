"""Paired comparisons between cells scored on the same queries.

``compare(run, "lite2:pretrained", "lite0:pretrained")`` gives the difference of a metric, its 95%
interval (paired bootstrap over queries; seeds resampled too where a cell has several) and a two-sided
p-value (paired permutation test on per-query differences; exact McNemar for single-seed accuracy).
``write_significance`` compares every cell with the best of its column and applies Holm's correction over
all those comparisons, so "tied with the best" means "not significantly below it" (Dror et al. 2018).
A difference is significant when the Holm-adjusted p-value is below alpha *and* its interval, which also
resamples seeds, excludes zero (``decide``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shelfsight.bench.aggregate import LABEL_COLUMNS, per_query_matrix
from shelfsight.bench.leaderboard import CLASSIFICATION_METRICS, MAIN_METRICS
from shelfsight.bench.results import CellResult, ResultStore
from shelfsight.bench.strategies.base import CLASSIFICATION, split_budget
from shelfsight.catalog import declared_entry
from shelfsight.errors import ShelfsightError
from shelfsight.stats import Comparison, holm, paired_classification, paired_comparison

SIGNIFICANCE_FILE = "significance.csv"
Group = tuple[str, str, str]
"""(model, dataset, strategy): the seeds of one cell."""


@dataclass(frozen=True)
class CellComparison:
    """A - B on one metric of one protocol, with its interval and p-value (Holm-adjusted when known)."""

    dataset: str
    protocol: str
    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    result: Comparison
    p_adjusted: float | None = None

    def significant(self, alpha: float = 0.05) -> bool:
        return decide(self.result, self.p_adjusted, alpha)

    def sentence(self, alpha: float = 0.05) -> str:
        r = self.result
        p = f"p={r.p_value:.3g}" + (f", Holm-adjusted {self.p_adjusted:.3g}" if self.p_adjusted is not None else "")
        verdict = ("better" if r.difference > 0 else "worse") if self.significant(alpha) else "tied within noise"
        return (f"{self.a} vs {self.b} on {self.dataset} {self.protocol} {self.metric}: {self.mean_a:.4f} vs "
                f"{self.mean_b:.4f}, difference {r.difference:+.4f} (95% CI {r.low:+.4f} to {r.high:+.4f}; {p}; "
                f"{r.method}; {r.n_queries} queries) -> {verdict}")


def decide(result: Comparison, p_adjusted: float | None, alpha: float) -> bool:
    """Significant when the (Holm-adjusted) p-value is below ``alpha`` and the 95% interval of the
    difference excludes zero. The permutation test sees per-query noise only (seed-averaged scores); the
    interval also resamples seeds, so with few seeds of a noisy strategy it is the stricter of the two."""
    p = p_adjusted if p_adjusted is not None else result.p_value
    return bool(p < alpha) and not (result.low <= 0.0 <= result.high)


class RunScores:
    """The stored cells of a run, grouped by (model, dataset, strategy), with their per-query scores."""

    def __init__(self, run_dir: str | Path) -> None:
        self.store = ResultStore(run_dir)
        self.groups: dict[Group, list[CellResult]] = defaultdict(list)
        for result in self.store.load_all():
            if result.status == "ok":
                self.groups[result.cell.group].append(result)
        self._frames: dict[Group, list[pd.DataFrame] | None] = {}

    def frames(self, group: Group) -> list[pd.DataFrame] | None:
        if group not in self._frames:
            found = [self.store.per_query(r.cell) for r in self.groups[group]]
            self._frames[group] = None if any(f is None for f in found) else [f for f in found if f is not None]
        return self._frames[group]

    def mean(self, group: Group, protocol: str, metric: str) -> float:
        values = [r.metrics.get(protocol, {}).get(metric, math.nan) for r in self.groups[group]]
        return float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan

    def n_classes(self, group: Group) -> int | None:
        classes = self.groups[group][0].details.get("classes")
        return int(classes) if isinstance(classes, int | float) else None

    def find(self, reference: str, dataset: str | None) -> Group:
        """``MODEL:STRATEGY`` (split at the last colon) on ``dataset`` (optional when only one has it)."""
        model, sep, strategy = reference.rpartition(":")
        if not sep or not model or not strategy:
            raise ShelfsightError(f"cell {reference!r}: write it as MODEL:STRATEGY, e.g. efficientnet_lite0:pretrained")
        matches = [g for g in self.groups if g[0] == model and g[2] == strategy and dataset in (None, g[1])]
        if len(matches) == 1:
            return matches[0]
        known = sorted({f"{g[0]}:{g[2]}" for g in self.groups})
        if not matches:
            raise ShelfsightError(f"no stored cell {reference!r}{f' on {dataset}' if dataset else ''}; "
                                  f"known: {', '.join(known[:12])}")
        raise ShelfsightError(f"{reference!r} was run on several datasets ({', '.join(sorted(g[1] for g in matches))});"
                              " name one with --dataset")

    def compare(self, a: Group, b: Group, protocol: str, metric: str, *, n_permutations: int = 10000,
                n_resamples: int = 1000, seed: int = 0) -> CellComparison:
        """Paired on the queries both cells scored (NaN rows, queries with nothing relevant, left out)."""
        frames_a, frames_b = self.frames(a), self.frames(b)
        if frames_a is None or frames_b is None:
            missing = a if frames_a is None else b
            raise ShelfsightError(f"{':'.join(missing)} has no per-query scores (computed by an older shelfsight); "
                                  "rerun it with --recompute")
        columns = list(LABEL_COLUMNS) if protocol == CLASSIFICATION else [metric]
        shared = _shared_queries(frames_a + frames_b, protocol, columns)
        if not shared:
            raise ShelfsightError(f"{':'.join(a)} and {':'.join(b)} share no scored query on {protocol} {metric}")
        left = per_query_matrix(frames_a, protocol, columns, queries=shared)
        right = per_query_matrix(frames_b, protocol, columns, queries=shared)
        assert left is not None and right is not None
        options = {"n_permutations": n_permutations, "n_resamples": n_resamples, "seed": seed}
        if protocol == CLASSIFICATION:
            if metric not in CLASSIFICATION_METRICS:
                raise ShelfsightError(f"classification metric {metric!r}: use one of "
                                      f"{', '.join(CLASSIFICATION_METRICS)}")
            classes = self.n_classes(a) or self.n_classes(b) or int(max(left[0].max(), left[1].max())) + 1
            result = paired_classification(left[0][0].astype(np.int64), left[1].astype(np.int64),
                                           right[1].astype(np.int64), metric=metric,  # type: ignore[arg-type]
                                           n_classes=classes, **options)
        else:
            result = paired_comparison(left[0], right[0], **options)
        return CellComparison(a[1], protocol, metric, f"{a[0]} · {a[2]}", f"{b[0]} · {b[2]}",
                              self.mean(a, protocol, metric), self.mean(b, protocol, metric), result)


def _shared_queries(frames: list[pd.DataFrame], protocol: str, columns: list[str]) -> list[str]:
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


def compare(run_dir: str | Path, a: str, b: str, *, metric: str | None = None, protocol: str | None = None,
            dataset: str | None = None, n_permutations: int = 10000, n_resamples: int = 1000,
            seed: int = 0) -> CellComparison:
    """Compare two cells of a run (``MODEL:STRATEGY``) on one metric; defaults: the first retrieval
    protocol both scored and its main metric (mMP@5)."""
    scores = RunScores(run_dir)
    group_a = scores.find(a, dataset)
    group_b = scores.find(b, dataset or group_a[1])
    if group_a[1] != group_b[1]:
        raise ShelfsightError(f"{a} ({group_a[1]}) and {b} ({group_b[1]}) were scored on different datasets")
    first_a, first_b = scores.groups[group_a][0], scores.groups[group_b][0]
    entry = declared_entry(group_a[1])
    declared = [p.name for p in entry.protocols] if entry is not None else []
    protocols = sorted((p for p in first_a.metrics if p in first_b.metrics),
                       key=lambda p: (declared.index(p) if p in declared else len(declared), p))
    if protocol is None:
        retrieval = [p for p in protocols if p != CLASSIFICATION]
        protocol = (retrieval or protocols or [""])[0]
    if protocol not in protocols:
        raise ShelfsightError(f"both cells must have protocol {protocol!r}; shared: {', '.join(protocols) or 'none'}")
    metric = metric or main_metric(protocol, set(first_a.metrics[protocol]))
    if metric is None or metric not in first_a.metrics[protocol] or metric not in first_b.metrics[protocol]:
        raise ShelfsightError(f"metric {metric!r} is not scored by both cells on {protocol}")
    return scores.compare(group_a, group_b, protocol, metric, n_permutations=n_permutations,
                          n_resamples=n_resamples, seed=seed)


def adjust(comparisons: list[CellComparison]) -> list[CellComparison]:
    """The same comparisons with Holm-adjusted p-values over the whole list (one family)."""
    from dataclasses import replace

    adjusted = holm(np.array([c.result.p_value for c in comparisons], dtype=float))
    return [replace(c, p_adjusted=float(p)) for c, p in zip(comparisons, adjusted, strict=True)]


def write_significance(run_dir: str | Path, *, alpha: float = 0.05, n_permutations: int = 10000,
                       n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each cell against the best of its (dataset, protocol) column on the main metric; Holm over all rows.
    Writes ``RUN/significance.csv``; ``tied`` marks cells not significantly below the best."""
    scores = RunScores(run_dir)
    comparisons: list[tuple[Group, CellComparison]] = []
    for (_, protocol, metric), groups in _columns(scores).items():
        best = max(groups, key=lambda g: scores.mean(g, protocol, metric))
        for group in groups:
            if group != best and scores.frames(group) is not None and scores.frames(best) is not None:
                comparisons.append((group, scores.compare(best, group, protocol, metric, n_permutations=n_permutations,
                                                          n_resamples=n_resamples, seed=seed)))
    adjusted = adjust([c for _, c in comparisons]) if comparisons else []
    rows = [{"dataset": c.dataset, "protocol": c.protocol, "metric": c.metric, "model": g[0], "strategy": g[2],
             "best": c.a, "best_mean": c.mean_a, "mean": c.mean_b, "difference": c.result.difference,
             "ci_low": c.result.low, "ci_high": c.result.high, "p_value": c.result.p_value,
             "p_holm": c.p_adjusted, "tied": not c.significant(alpha), "method": c.result.method,
             "queries": c.result.n_queries} for (g, _), c in zip(comparisons, adjusted, strict=True)]
    table = pd.DataFrame(rows, columns=["dataset", "protocol", "metric", "model", "strategy", "best", "best_mean",
                                        "mean", "difference", "ci_low", "ci_high", "p_value", "p_holm", "tied",
                                        "method", "queries"])
    table.to_csv(Path(run_dir) / SIGNIFICANCE_FILE, index=False)
    return table


def _columns(scores: RunScores) -> dict[tuple[str, str, str], list[Group]]:
    """(dataset, protocol, main metric) -> the cells that scored it."""
    columns: dict[tuple[str, str, str], list[Group]] = defaultdict(list)
    for group, members in sorted(scores.groups.items()):
        if split_budget(group[2])[1] is not None:
            continue  # label-budget cells are compared along their curves (bench.label_budgets), not here
        for protocol, metrics in members[0].metrics.items():
            metric = main_metric(protocol, set(metrics))
            if metric is not None:
                columns[(group[1], protocol, metric)].append(group)
    return {key: groups for key, groups in columns.items() if len(groups) > 1}


def read_significance(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    path = Path(run_dir) / SIGNIFICANCE_FILE
    return pd.read_csv(path) if path.is_file() else None
