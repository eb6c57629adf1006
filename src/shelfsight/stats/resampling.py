"""Shared pieces of the interval and test code: input checks, independent random streams, chunked resampling.

Scores are per query, ``(Q,)`` or ``(S, Q)`` = seeds x queries. NaN marks a query without any relevant item: it is
left out of every average, and since relevance depends only on labels it must be NaN in every seed. Resampling is
vectorised: index matrices are drawn a chunk of resamples at a time, so memory stays bounded (``_CHUNK_ELEMENTS``
per array) whatever ``Q`` and ``n_resamples`` are; each kind of draw has its own random stream, so a result does not
depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ClassificationMetric", "as_seed_matrix", "check_labels", "check_metric", "check_settings", "chunks",
    "correctness", "percentile_bounds", "resampled_means", "streams", "valid_queries",
]

ClassificationMetric = Literal["accuracy", "macro_f1", "macro_precision", "macro_recall"]

#: Most elements of one resample chunk array (4M float64 = 32 MiB): bounded memory, still large enough to be fast.
_CHUNK_ELEMENTS = 1 << 22


def check_settings(n_resamples: int, confidence: float) -> None:
    """Reject settings that would give a meaningless interval rather than return one."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 1 - alpha), got {confidence}")


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


def resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution of the mean of ``values`` ``(Q,)``, queries drawn with replacement.

    A paired comparison passes the per-query differences, so both sides share every query draw."""
    n_queries = values.shape[0]
    stats = np.empty(n_resamples)
    for start, rows in chunks(n_resamples, n_queries):
        idx = rng.integers(0, n_queries, size=(rows, n_queries))
        stats[start:start + rows] = values[idx].mean(axis=1)
    return stats


def percentile_bounds(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of a bootstrap distribution."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)
