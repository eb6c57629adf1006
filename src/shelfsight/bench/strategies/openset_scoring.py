"""The numbers of an ``openset`` cell from its scores: per (head, score) of a task, AUROC with a class-bootstrap
interval, FPR at 95% TPR, the threshold chosen on the calibration (validation) queries for the target precision of
"match" answers, the open-set accuracy at that threshold and the shares of known and unknown photos it accepts;
paired AUROC differences between heads; and the interval of a mean AUROC over seeds (the report's).

Interval of AUROC. AUROC is no mean of per-query values, so the results table's per-query bootstrap must not be
applied to it: no per-query column carries its name (the table leaves its interval empty) and this module makes
it. With one seed: a percentile bootstrap over whole classes (known and unknown classes resampled separately),
the interval of the AUROC of this draw of unknown classes had other classes been in the catalogue. With several
seeds, each seed is an independent draw of unknown classes (and of the heads' training): a t interval on the
per-seed AUROCs, ``S - 1`` degrees of freedom (``stats.seeds``), which holds both the class draw and the queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from shelfsight.metrics.openset import (
    auroc,
    cluster_bootstrap_auroc,
    fpr_at_tpr,
    openset_correct,
    precision_threshold,
)
from shelfsight.stats.seeds import fiducial_bounds, seed_component

CONFIDENCE = 0.95
TPR = 0.95
MEASURES = ("auroc", "fpr95", "openset_accuracy", "threshold", "known_accept", "unknown_accept", "known_accuracy")
"""The metrics of each (head, score), named ``MEASURE:HEAD:SCORE``; only ``openset_accuracy`` (a mean of per-query
values) has a per-query column of its name, so only its results-table interval is a query bootstrap."""
SCORE_COLUMN = "score"
UNKNOWN_COLUMN = "unknown"


@dataclass(frozen=True)
class TaskQueries:
    """The queries of one task: calibration (validation photos) and test, each flagged known or unknown with its
    class (the class bootstrap's unit)."""

    cal_known: np.ndarray
    test_ids: tuple[str, ...]
    test_known: np.ndarray
    test_classes: np.ndarray


@dataclass(frozen=True)
class Scored:
    """One (head, score) of a task: confidences of the calibration and test queries, and whether each query's
    answer (top-1 match, predicted class) is right (always False for an unknown query)."""

    head: str
    score: str
    cal: np.ndarray
    cal_right: np.ndarray
    test: np.ndarray
    test_right: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.head}:{self.score}"


def metric_name(measure: str, scored_key: str) -> str:
    return f"{measure}:{scored_key}"


def measure(queries: TaskQueries, scored: Scored, target: float) -> tuple[dict[str, float], dict[str, Any],
                                                                           np.ndarray]:
    """The metrics of one (head, score), its details (threshold found or not), and per-query open-set
    correctness."""
    known, unknown = scored.test[queries.test_known], scored.test[~queries.test_known]
    threshold = precision_threshold(scored.cal, scored.cal_right, target)
    correct = openset_correct(scored.test, queries.test_known, scored.test_right, threshold.value)
    accepted = scored.test >= threshold.value
    values = {"auroc": auroc(known, unknown), "fpr95": fpr_at_tpr(known, unknown, TPR),
              "openset_accuracy": float(correct.mean()),
              "threshold": threshold.value if math.isfinite(threshold.value) else math.nan,
              "known_accept": float(accepted[queries.test_known].mean()),
              "unknown_accept": float(accepted[~queries.test_known].mean()),
              "known_accuracy": float(scored.test_right[queries.test_known].mean())}
    detail = {"threshold_reached": threshold.reached, "calibration_precision": threshold.precision,
              "calibration_accepted": threshold.accepted,
              "calibration_queries": {"known": int(queries.cal_known.sum()),
                                      "unknown": int((~queries.cal_known).sum())}}
    return {metric_name(m, scored.key): v for m, v in values.items()}, detail, correct


def class_bootstrap(queries: TaskQueries, scored: Sequence[Scored], *, n_resamples: int,
                    seed: int) -> np.ndarray:
    """``(len(scored), n_resamples)`` AUROCs under one shared series of class resamples (paired across heads)."""
    known, classes = queries.test_known, queries.test_classes
    pairs = tuple((s.test[known], s.test[~known]) for s in scored)
    return cluster_bootstrap_auroc(pairs[0][0], classes[known], pairs[0][1], classes[~known],
                                   n_resamples=n_resamples, rng=np.random.default_rng(seed), others=pairs[1:])


def percentile(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return math.nan, math.nan
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100.0 - tail))


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of a zero difference (the share of resamples on the far side of 0,
    doubled)."""
    finite = differences[np.isfinite(differences)]
    if not len(finite):
        return math.nan
    return float(min(1.0, 2.0 * min((finite <= 0).mean(), (finite >= 0).mean())))


def task_intervals(queries: TaskQueries, scored: Sequence[Scored], baseline: str | None, *, n_resamples: int,
                   seed: int) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """AUROC interval of each (head, score) by the class bootstrap, and the paired difference of each other head's
    main score with ``baseline``'s (the task's frozen embedding): does tuning help or hurt rejection?"""
    draws = class_bootstrap(queries, scored, n_resamples=n_resamples, seed=seed)
    intervals = {s.key: list(percentile(draws[i])) for i, s in enumerate(scored)}
    mains = {s.head: i for i, s in reversed(list(enumerate(scored)))}  # each head's first score is its main one
    paired: list[dict[str, Any]] = []
    if baseline is None or baseline not in mains:
        return intervals, paired
    b = mains[baseline]
    for head, a in mains.items():
        if head == baseline:
            continue
        observed = metric_of(queries, scored[a]) - metric_of(queries, scored[b])
        low, high = percentile(draws[a] - draws[b])
        paired.append({"a": scored[a].key, "b": scored[b].key, "difference": observed, "low": low, "high": high,
                       "p": bootstrap_p(draws[a] - draws[b])})
    return intervals, paired


def metric_of(queries: TaskQueries, scored: Scored) -> float:
    return auroc(scored.test[queries.test_known], scored.test[~queries.test_known])


def seeds_p(per_seed: Sequence[float], single: float | None = None) -> float:
    """Two-sided p of a zero mean difference over seeds: a one-sample t test (``S - 1`` degrees of freedom, the
    test of ``seeds_interval``'s t interval); with one seed, ``single``, that cell's class-bootstrap p."""
    values = np.asarray([v for v in per_seed if math.isfinite(v)], dtype=float)
    if len(values) < 2:
        return float(single) if single is not None and len(values) == 1 else math.nan
    spread = float(values.std(ddof=1))
    if spread == 0.0:
        return 1.0 if values.mean() == 0.0 else 0.0
    statistic = float(values.mean()) / (spread / math.sqrt(len(values)))
    return float(2.0 * student_t.sf(abs(statistic), len(values) - 1))


def seeds_interval(per_seed: Sequence[float], single: Sequence[float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of a mean AUROC (or AUROC difference) over seeds: a t interval on the seeds (``S - 1``
    degrees of freedom); with one seed, ``single``, that cell's class-bootstrap interval."""
    values = np.asarray([v for v in per_seed if math.isfinite(v)], dtype=float)
    if not len(values):
        return math.nan, math.nan, math.nan
    estimate = float(values.mean())
    if len(values) == 1:
        low, high = (single[0], single[1]) if single is not None else (math.nan, math.nan)
        return estimate, float(low), float(high)
    low, high = fiducial_bounds(estimate, [seed_component(values)], CONFIDENCE, np.random.default_rng(0))
    return estimate, low, high
