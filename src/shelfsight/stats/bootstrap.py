"""Confidence intervals for one benchmark cell: a percentile bootstrap over queries, two-level when seeds vary.

A benchmark number is a mean over a finite set of queries (and, for stochastic strategies, over a few seeds);
another draw of queries or seeds would give another number. The interval says how far that could move.

Scores are per query, ``(Q,)`` or ``(S, Q)`` = seeds x queries. NaN marks a query without any relevant item:
it is left out of every average, and since relevance depends only on labels it must be NaN in every seed.
Resampling is vectorised: index matrices are drawn a chunk of resamples at a time, so memory stays bounded
(``_CHUNK_ELEMENTS`` per array) whatever ``Q`` and ``n_resamples`` are; each kind of draw (queries, the seeds of
each side, permutations) has its own random stream, so the result does not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ClassificationMetric", "Interval", "bootstrap_interval", "classification_interval"]

ClassificationMetric = Literal["accuracy", "macro_f1", "macro_precision", "macro_recall"]

#: Most elements of one resample chunk array (4M float64 = 32 MiB): bounded memory, still large enough to be fast.
_CHUNK_ELEMENTS = 1 << 22

OVER_QUERIES = "bootstrap over queries"
TWO_LEVEL = "two-level bootstrap over seeds and queries"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval; ``method`` names how it was resampled.

    ``estimate`` is the mean over seeds of the mean over the ``n_queries`` valid (non-NaN) queries."""

    estimate: float
    low: float
    high: float
    n_queries: int
    n_seeds: int
    method: str


def bootstrap_interval(scores: ArrayLike, *, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """Interval of a cell's mean score, so that a reader sees how much of a number is query (and seed) luck.

    ``scores`` is ``(Q,)`` or ``(S, Q)``. With one seed, queries are drawn with replacement. With several, each
    resample also draws seeds with replacement (one query draw shared by all drawn seeds) and averages the drawn
    seeds' means, so seed-to-seed variation widens the interval. No valid query gives a NaN interval; a single
    query gives no spread to estimate, so ``low == high == estimate``."""
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
    query_rng, seed_rng = streams(seed, 2)
    stats = resampled_means([x], [1.0], n_resamples, query_rng, [seed_rng])
    low, high = percentile_bounds(stats, confidence)
    return Interval(estimate, low, high, n_queries, n_seeds, method)


def classification_interval(y_true: ArrayLike, y_pred: ArrayLike, *, metric: ClassificationMetric, n_classes: int,
                            n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of a classification score, recomputed on every resample (macro scores are not query means).

    ``y_true`` is ``(Q,)``, ``y_pred`` ``(Q,)`` or ``(S, Q)``, labels in ``range(n_classes)``. Macro scores
    average over every class in ``range(n_classes)`` with ``zero_division=0``, exactly as scikit-learn's
    ``precision_recall_fscore_support(average="macro", labels=range(n_classes), zero_division=0)``. Resampling is
    the same as ``bootstrap_interval`` (two-level when ``S > 1``); accuracy, a mean of per-query correctness,
    goes through it directly."""
    check_settings(n_resamples, confidence)
    check_metric(metric)
    true, pred = check_labels(y_true, y_pred, n_classes, "y_pred")
    if metric == "accuracy":
        return bootstrap_interval(correctness(true, pred), n_resamples=n_resamples, confidence=confidence, seed=seed)
    n_seeds, n_queries = pred.shape
    method = OVER_QUERIES if n_seeds == 1 else TWO_LEVEL
    if n_queries == 0:
        return Interval(math.nan, math.nan, math.nan, 0, n_seeds, method)
    estimate = float(macro_scores(true, pred, metric, n_classes).mean())
    if n_queries == 1:
        return Interval(estimate, estimate, estimate, 1, n_seeds, method)
    query_rng, seed_rng = streams(seed, 2)
    stats = resampled_macro(true, [pred], [1.0], metric, n_classes, n_resamples, query_rng, [seed_rng])
    low, high = percentile_bounds(stats, confidence)
    return Interval(estimate, low, high, n_queries, n_seeds, method)


# --- shared helpers (also used by ``paired``) ---------------------------------------------------------------------


def check_settings(n_resamples: int, confidence: float) -> None:
    """Reject settings that would give a meaningless interval rather than return one."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def check_metric(metric: str) -> None:
    """A typo in a metric name must fail loudly, not fall through to some default score."""
    if metric not in get_args(ClassificationMetric):
        raise ValueError(f"metric must be one of {get_args(ClassificationMetric)}, got {metric!r}")


def as_seed_matrix(scores: ArrayLike, name: str) -> np.ndarray:
    """Per-query scores as a float ``(S, Q)`` matrix; a 1-d array is one seed."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (Q,) or (S, Q) with S >= 1, got {np.shape(scores)}")
    if np.isinf(x).any():
        raise ValueError(f"{name} has infinite scores; only NaN (query without a relevant item) is allowed")
    return x


def valid_queries(x: np.ndarray, name: str) -> np.ndarray:
    """Mask of the queries that have a score. NaN follows from the labels alone, so it must hit the same queries
    in every seed; a seed-dependent NaN means a bug upstream and would silently change which queries are averaged."""
    missing = np.isnan(x)
    differs = np.flatnonzero((missing != missing[0]).any(axis=0))
    if differs.size:
        raise ValueError(f"{name}: NaN must mark the same queries in every seed; {differs.size} queries differ "
                         f"(first: query {int(differs[0])})")
    return ~missing[0]


def check_labels(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 ``(Q,)`` and ``(S, Q)`` arrays in ``range(n_classes)`` (offset codes rely on that range)."""
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if pred.ndim == 1:
        pred = pred[None, :]
    if true.ndim != 1 or pred.ndim != 2 or pred.shape[0] == 0 or pred.shape[1] != true.shape[0]:
        raise ValueError(f"y_true must be (Q,) and {name} (Q,) or (S, Q) with the same Q, "
                         f"got {np.shape(y_true)} and {np.shape(y_pred)}")
    for label, array in (("y_true", true), (name, pred)):
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{label} must hold integer class indices, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= n_classes):
            raise ValueError(f"{label} has labels outside range({n_classes})")
    return true.astype(np.int64, copy=False), pred.astype(np.int64, copy=False)


def correctness(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-query 0/1 correctness, ``(S, Q)`` floats: accuracy is its mean, so it bootstraps like any score."""
    return (pred == true).astype(np.float64)


def streams(seed: int, count: int) -> list[np.random.Generator]:
    """Independent generators for each kind of draw, so results do not depend on chunking or on other settings."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(count)]


def chunks(total: int, row_elements: int) -> Iterator[tuple[int, int]]:
    """``(start, rows)`` blocks of ``total`` rows, each at most ``_CHUNK_ELEMENTS`` elements (at least one row)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, total, step):
        yield start, min(step, total - start)


def seed_weights(rng: np.random.Generator, rows: int, n_seeds: int) -> np.ndarray:
    """``(rows, S)`` share of each seed among ``S`` seeds drawn with replacement (all ones when ``S == 1``)."""
    if n_seeds == 1:
        return np.ones((rows, 1))
    codes = rng.integers(0, n_seeds, size=(rows, n_seeds)) + np.arange(rows)[:, None] * n_seeds
    return np.bincount(codes.ravel(), minlength=rows * n_seeds).reshape(rows, n_seeds) / n_seeds


def resampled_means(sides: Sequence[np.ndarray], signs: Sequence[float], n_resamples: int,
                    query_rng: np.random.Generator, seed_rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Bootstrap distribution of ``sum(sign * mean over drawn seeds of the mean over drawn queries)``.

    All sides share each query draw (that is what makes a comparison paired); each side draws its own seeds."""
    n_queries = sides[0].shape[1]
    stats = np.empty(n_resamples)
    single = all(x.shape[0] == 1 for x in sides)
    base = sum(sign * x[0] for x, sign in zip(sides, signs, strict=True)) if single else None
    for start, rows in chunks(n_resamples, n_queries):
        if base is None:
            per_query = sum(sign * (seed_weights(rng, rows, x.shape[0]) @ x)
                            for x, sign, rng in zip(sides, signs, seed_rngs, strict=True))
            idx = query_rng.integers(0, n_queries, size=(rows, n_queries))
            stats[start:start + rows] = np.take_along_axis(np.asarray(per_query), idx, axis=1).mean(axis=1)
        else:
            idx = query_rng.integers(0, n_queries, size=(rows, n_queries))
            stats[start:start + rows] = np.asarray(base)[idx].mean(axis=1)
    return stats


def resampled_macro(true: np.ndarray, sides: Sequence[np.ndarray], signs: Sequence[float], metric: str,
                    n_classes: int, n_resamples: int, query_rng: np.random.Generator,
                    seed_rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Bootstrap distribution of a macro score (or a signed sum of them), recomputed on every resample.

    Each chunk scores every (seed, resample) pair at once with ``macro_scores``; seeds are then weighted by
    their draw counts, exactly as ``resampled_means`` does for per-query scores."""
    n_queries = true.shape[0]
    widest = max(x.shape[0] for x in sides)
    stats = np.empty(n_resamples)
    for start, rows in chunks(n_resamples, n_queries * widest):
        weights = [seed_weights(rng, rows, x.shape[0]) for x, rng in zip(sides, seed_rngs, strict=True)]
        idx = query_rng.integers(0, n_queries, size=(rows, n_queries))
        total = np.zeros(rows)
        for x, sign, weight in zip(sides, signs, weights, strict=True):
            scores = macro_scores(true[idx], x[:, idx], metric, n_classes)  # (S, rows)
            total += sign * (weight * scores.T).sum(axis=1)
        stats[start:start + rows] = total
    return stats


def macro_scores(y_true: np.ndarray, y_pred: np.ndarray, metric: str, n_classes: int) -> np.ndarray:
    """Macro precision, recall or F1 of every row of ``y_pred`` ``(..., Q)`` against ``y_true`` (broadcast).

    Per-class counts come from one ``np.bincount`` over codes ``row * n_classes + label``, so thousands of
    resamples cost a few array passes. Classes with a zero denominator score 0 (``zero_division=0``), F1 is
    ``2 TP / (2 TP + FP + FN)``, as in scikit-learn."""
    pred = np.asarray(y_pred)
    true = np.broadcast_to(y_true, pred.shape)
    lead = pred.shape[:-1]
    rows = math.prod(lead)
    size = rows * n_classes
    offsets = (np.arange(rows, dtype=np.int64) * n_classes).reshape(*lead, 1)
    pred_codes, true_codes = (pred + offsets).ravel(), (true + offsets).ravel()
    predicted = np.bincount(pred_codes, minlength=size).reshape(*lead, n_classes)
    actual = np.bincount(true_codes, minlength=size).reshape(*lead, n_classes)
    hits = np.bincount(true_codes[(pred == true).ravel()], minlength=size).reshape(*lead, n_classes)
    if metric == "macro_precision":
        per_class = _divide(hits, predicted)
    elif metric == "macro_recall":
        per_class = _divide(hits, actual)
    elif metric == "macro_f1":
        per_class = _divide(2.0 * hits, predicted + actual)
    else:
        raise ValueError(f"not a macro metric: {metric!r}")
    return per_class.mean(axis=-1)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio with 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(np.shape(numerator))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def percentile_bounds(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of a bootstrap distribution."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)
