"""Confidence intervals for one benchmark cell: a percentile bootstrap over queries, a fiducial interval with seeds.

A benchmark number is a mean over a finite set of queries (and, for stochastic strategies, over a few seeds or
subset draws); another draw of queries or seeds would give another number. The interval says how far that could
move, at the ``confidence`` the caller asks for (a run passes ``1 - alpha``).

- One seed, a mean of per-query scores (retrieval metrics, accuracy): percentile bootstrap over queries.
- One seed, a macro score: bootstrap stratified by true class (``shelfsight.stats.macro``), so no resample
  invents a missing class scored 0, with BCa bounds on Student's t (``stratified_bounds``).
- Several seeds: the two-level interval of ``shelfsight.stats.seeds`` (variance components of seeds and queries,
  the seed part on its ``S - 1`` degrees of freedom); a bootstrap over 2 or 3 seeds under-covers badly.

Scores are ``(Q,)`` or ``(S, Q)``; NaN marks a query without any relevant item and is left out (it must be NaN in
every seed). Coverage of every case is measured by simulation in ``tests/test_coverage.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from shelfsight.stats.macro import jackknife_macro, macro_scores, resampled_macro, stratified_bounds
from shelfsight.stats.resampling import (
    ClassificationMetric,
    as_seed_matrix,
    check_labels,
    check_metric,
    check_settings,
    correctness,
    percentile_bounds,
    resampled_means,
    streams,
    valid_queries,
)
from shelfsight.stats.seeds import bootstrap_components, fiducial_bounds, mean_components

__all__ = ["ClassificationMetric", "Interval", "bootstrap_interval", "classification_interval"]

OVER_QUERIES = "bootstrap over queries"
OVER_CLASSES = "bootstrap over queries, stratified by true class"
TWO_LEVEL = "two-level fiducial interval over seeds and queries"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; ``method`` names how the interval was made.

    ``estimate`` is the mean over seeds of the score over the ``n_queries`` valid (non-NaN) queries."""

    estimate: float
    low: float
    high: float
    n_queries: int
    n_seeds: int
    method: str


def bootstrap_interval(scores: ArrayLike, *, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """Interval of a cell's mean score, so that a reader sees how much of a number is query (and seed) luck.

    ``scores`` is ``(Q,)`` or ``(S, Q)``. One seed: percentile bootstrap, queries drawn with replacement. Several
    seeds: the two-level interval (module docstring); ``n_resamples`` is then unused. No valid query gives a NaN
    interval; a single query gives no spread to estimate, so ``low == high == estimate``."""
    check_settings(n_resamples, confidence)
    x = as_seed_matrix(scores, "scores")
    x = x[:, valid_queries(x, "scores")]
    n_seeds, n_queries = x.shape
    method = OVER_QUERIES if n_seeds == 1 else TWO_LEVEL
    if n_queries == 0:
        return Interval(math.nan, math.nan, math.nan, 0, n_seeds, method)
    estimate = float(x.mean(axis=1).mean())
    if n_queries == 1:
        return Interval(estimate, estimate, estimate, 1, n_seeds, method)
    if n_seeds == 1:
        stats = resampled_means(x[0], n_resamples, streams(seed, 2)[0])
        low, high = percentile_bounds(stats, confidence)
    else:
        low, high = fiducial_bounds(estimate, mean_components([x], [1.0]), confidence, streams(seed, 2)[1])
    return Interval(estimate, low, high, n_queries, n_seeds, method)


def classification_interval(y_true: ArrayLike, y_pred: ArrayLike, *, metric: ClassificationMetric, n_classes: int,
                            n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of a classification score; macro scores are recomputed on every (stratified) resample.

    ``y_true`` is ``(Q,)``, ``y_pred`` ``(Q,)`` or ``(S, Q)``, labels in ``range(n_classes)``. Macro scores
    average over every class in ``range(n_classes)`` with ``zero_division=0``, exactly as scikit-learn's
    ``precision_recall_fscore_support(average="macro", labels=range(n_classes), zero_division=0)``. Accuracy, a
    mean of per-query correctness, goes through ``bootstrap_interval``; a macro score with one seed gets the
    bootstrap stratified by true class (BCa bounds on Student's t), with several the two-level interval whose
    query part comes from that bootstrap."""
    check_settings(n_resamples, confidence)
    check_metric(metric)
    true, pred = check_labels(y_true, y_pred, n_classes, "y_pred")
    if metric == "accuracy":
        return _within_unit(bootstrap_interval(correctness(true, pred), n_resamples=n_resamples,
                                               confidence=confidence, seed=seed))
    n_seeds, n_queries = pred.shape
    method = OVER_CLASSES if n_seeds == 1 else TWO_LEVEL
    if n_queries == 0:
        return Interval(math.nan, math.nan, math.nan, 0, n_seeds, method)
    per_seed = macro_scores(true, pred, metric, n_classes)
    estimate = float(per_seed.mean())
    if n_queries == 1:
        return Interval(estimate, estimate, estimate, 1, n_seeds, method)
    query_rng, pivot_rng = streams(seed, 2)
    stats = resampled_macro(true, [pred], metric, n_classes, n_resamples, query_rng)[0]
    if n_seeds == 1:
        jackknife = jackknife_macro(true, pred[0], metric, n_classes)
        low, high = stratified_bounds(stats[0], estimate, true, jackknife, confidence)
    else:
        terms = bootstrap_components([per_seed], [stats], [1.0], macro_df(true))
        low, high = fiducial_bounds(estimate, terms, confidence, pivot_rng)
    return _within_unit(Interval(estimate, low, high, n_queries, n_seeds, method))


def _within_unit(interval: Interval) -> Interval:
    """A classification score lies in [0, 1]: a t-based bound past it (few seeds, a score near 0 or 1) is cut
    there, which keeps the coverage and never reports an impossible value."""
    return replace(interval, low=float(np.clip(interval.low, 0.0, 1.0)), high=float(np.clip(interval.high, 0.0, 1.0)))


def macro_df(true: np.ndarray) -> float:
    """Degrees of freedom of a macro score's query part: ``Q - classes`` (one mean is estimated per class)."""
    return float(max(1, true.size - np.unique(true).size))
