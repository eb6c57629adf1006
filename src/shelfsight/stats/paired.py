"""Paired comparisons of two benchmark cells scored on the same queries: difference, interval and p-value.

Two models evaluated on the same queries are far more precisely compared query by query than by overlapping
their separate intervals: most per-query variation is query difficulty, which both share. Every test here is
paired on queries. Significance is left to the caller, after a multiple-comparison correction (``holm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest

from shelfsight.stats.bootstrap import macro_df
from shelfsight.stats.macro import jackknife_macro, macro_scores, resampled_macro, stratified_bounds
from shelfsight.stats.resampling import (
    ClassificationMetric,
    as_seed_matrix,
    check_labels,
    check_metric,
    check_settings,
    chunks,
    correctness,
    percentile_bounds,
    resampled_means,
    streams,
    valid_queries,
)
from shelfsight.stats.seeds import Component, bootstrap_components, fiducial_bounds, fiducial_p_value, mean_components

__all__ = ["Comparison", "paired_classification", "paired_comparison"]

#: Permuted statistics within this distance of the observed one count as ties (summation-order rounding).
_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Comparison:
    """Difference ``a - b`` with its interval and a two-sided p-value; ``method`` names both."""

    difference: float
    low: float
    high: float
    p_value: float
    method: str
    n_queries: int
    seeds_a: int
    seeds_b: int


def paired_comparison(a: ArrayLike, b: ArrayLike, *, n_resamples: int = 1000, n_permutations: int = 10000,
                      confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare per-query scores ``a`` ``(Sa, Q)`` and ``b`` ``(Sb, Q)`` (or ``(Q,)``) of the same queries.

    Interval: with one seed per side, the paired percentile bootstrap (queries drawn jointly for ``a`` and ``b``);
    as soon as a side has several seeds, the two-level interval of ``shelfsight.stats.seeds``: one seed part per
    side with seeds, the query part from the seed-averaged per-query differences.
    p-value: the paired sign-flip randomisation test on the seed-averaged per-query differences (Dror et al.,
    2018), ``(1 + #{|permuted mean| >= |observed mean|}) / (1 + n_permutations)``; it assumes nothing about the
    score distribution and is exact up to Monte Carlo error. NaN queries (no relevant item) must be the same on
    both sides and in every seed, and are left out."""
    check_settings(n_resamples, confidence)
    _check_permutations(n_permutations)
    xa, xb = _paired_scores(a, b)
    method = f"{_interval_method(xa, xb)}; sign-flip permutation test on seed-averaged per-query differences"
    difference, low, high = _mean_difference_interval(xa, xb, n_resamples, confidence, seed)
    if xa.shape[1] == 0:
        return _empty(method, xa.shape[0], xb.shape[0])
    rng = streams(seed, 4)[3]
    p_value = sign_flip_p_value(xa.mean(axis=0) - xb.mean(axis=0), n_permutations, rng)
    return Comparison(difference, low, high, p_value, method, xa.shape[1], xa.shape[0], xb.shape[0])


def paired_classification(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike, *,
                          metric: ClassificationMetric, n_classes: int, n_resamples: int = 1000,
                          n_permutations: int = 10000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare two classifiers' predictions ``(Q,)`` or ``(S, Q)`` against the same ``y_true``.

    Interval: one seed per side, the paired bootstrap of the metric difference (queries drawn jointly; for macro
    metrics stratified by true class, the metric recomputed on every resample, BCa bounds on Student's t as in
    ``classification_interval``); several seeds on a side, the two-level interval (``shelfsight.stats.seeds``),
    its query part from that bootstrap for macro metrics.

    p-value, by case:

    - accuracy, one seed each: the exact McNemar test (binomial test of the discordant pairs against 1/2), the
      exact form of the sign-flip test on 0/1 correctness, with no Monte Carlo error.
    - accuracy with seeds: accuracy is a mean of per-query correctness, so the sign-flip test on the
      seed-averaged per-query correctness differences, as in ``paired_comparison``.
    - macro metrics, ``Sa == Sb``: macro scores are not per-query means, so signs cannot be flipped; instead the
      approximate randomisation test swaps a's and b's predictions query by query (seeds paired by position,
      all seeds of a query swapped together) and recomputes the metric difference.
    - macro metrics, ``Sa != Sb``: seeds cannot be paired for a swap, so the two-sided test dual to the
      two-level interval (the same variance components and pivots)."""
    check_settings(n_resamples, confidence)
    _check_permutations(n_permutations)
    check_metric(metric)
    true, pa = check_labels(y_true, pred_a, n_classes, "pred_a")
    _, pb = check_labels(y_true, pred_b, n_classes, "pred_b")
    if metric == "accuracy":
        if pa.shape[0] == 1 and pb.shape[0] == 1:
            return _mcnemar(true, pa, pb, n_resamples, confidence, seed)
        comparison = paired_comparison(correctness(true, pa), correctness(true, pb), n_resamples=n_resamples,
                                       n_permutations=n_permutations, confidence=confidence, seed=seed)
        return _with_method(comparison, f"{_interval_method(pa, pb)}; sign-flip permutation test on "
                                        "seed-averaged per-query correctness differences")
    return _macro_comparison(true, pa, pb, metric, n_classes, n_resamples, n_permutations, confidence, seed)


def sign_flip_p_value(differences: np.ndarray, n_permutations: int, rng: np.random.Generator) -> float:
    """Two-sided Monte Carlo p-value of the paired sign-flip test of ``mean(differences) == 0``.

    Under the null the sign of each query's difference is a fair coin; each permutation flips a random subset
    of signs. Signs come from raw 64-bit words (one bit per query), and each chunk's permuted sums from one
    matrix product."""
    d = np.asarray(differences, dtype=np.float64)
    total = float(d.sum())
    observed = abs(total)
    tie = _TIE_TOLERANCE * max(1.0, float(np.abs(d).sum()))
    extreme = 0
    for _, rows in chunks(n_permutations, d.size):
        flipped = random_bits(rng, rows, d.size).astype(np.float64) @ d
        extreme += int(np.count_nonzero(np.abs(total - 2.0 * flipped) >= observed - tie))
    return (1 + extreme) / (1 + n_permutations)


def random_bits(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """``(rows, width)`` fair 0/1 draws (uint8) from whole 64-bit words, several times cheaper than floats."""
    words = -(-width // 64)
    raw = rng.bit_generator.random_raw(rows * words).astype(np.uint64, copy=False)
    return np.unpackbits(raw.view(np.uint8).reshape(rows, words * 8), axis=1, count=width)


def _check_permutations(n_permutations: int) -> None:
    """At least one permutation, or the p-value formula has nothing to count."""
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")


def _paired_scores(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as ``(S, Q)`` on the valid queries, after checking that they score the same queries."""
    xa, xb = as_seed_matrix(a, "a"), as_seed_matrix(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a and b must score the same queries: a has Q={xa.shape[1]}, b has Q={xb.shape[1]}")
    valid_a, valid_b = valid_queries(xa, "a"), valid_queries(xb, "b")
    differs = np.flatnonzero(valid_a != valid_b)
    if differs.size:
        raise ValueError(f"a and b must have NaN on the same queries (no relevant item depends on labels only); "
                         f"{differs.size} queries differ (first: query {int(differs[0])})")
    return xa[:, valid_a], xb[:, valid_a]


def _interval_method(a: np.ndarray, b: np.ndarray, *, macro: bool = False) -> str:
    """Name of the paired interval: two-level as soon as one side has several seeds."""
    if a.shape[0] == 1 and b.shape[0] == 1:
        return "paired bootstrap over queries" + (", stratified by true class" if macro else "")
    return "paired two-level fiducial interval over seeds and queries"


def _mean_difference_interval(xa: np.ndarray, xb: np.ndarray, n_resamples: int, confidence: float,
                              seed: int) -> tuple[float, float, float]:
    """Estimate and interval of ``mean(a) - mean(b)`` (see ``paired_comparison``); degenerate sizes as in
    ``Interval``."""
    if xa.shape[1] == 0:
        return math.nan, math.nan, math.nan
    difference = float(xa.mean(axis=1).mean() - xb.mean(axis=1).mean())
    if xa.shape[1] == 1:
        return difference, difference, difference
    if xa.shape[0] == 1 and xb.shape[0] == 1:
        stats = resampled_means(xa[0] - xb[0], n_resamples, streams(seed, 4)[0])
        return (difference, *percentile_bounds(stats, confidence))
    terms = mean_components([xa, xb], [1.0, -1.0])
    return (difference, *fiducial_bounds(difference, terms, confidence, streams(seed, 4)[1]))


def _mcnemar(true: np.ndarray, pa: np.ndarray, pb: np.ndarray, n_resamples: int, confidence: float,
             seed: int) -> Comparison:
    """Exact McNemar test: under the null each discordant query favours a or b with probability 1/2."""
    ca, cb = pa[0] == true, pb[0] == true
    only_a, only_b = int(np.count_nonzero(ca & ~cb)), int(np.count_nonzero(~ca & cb))
    p_value = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    difference, low, high = _mean_difference_interval(ca[None].astype(np.float64), cb[None].astype(np.float64),
                                                      n_resamples, confidence, seed)
    if true.size == 0:
        p_value = math.nan
    return Comparison(difference, low, high, p_value, "paired bootstrap over queries; McNemar exact",
                      int(true.size), 1, 1)


def _macro_comparison(true: np.ndarray, pa: np.ndarray, pb: np.ndarray, metric: str, n_classes: int,
                      n_resamples: int, n_permutations: int, confidence: float, seed: int) -> Comparison:
    """Macro-metric difference: stratified paired bootstrap or two-level t interval, swap-permutation or t p-value
    (see ``paired_classification``)."""
    swap = pa.shape[0] == pb.shape[0]
    test = ("permutation test swapping a's and b's predictions per query" if swap
            else "test dual to the two-level interval")
    method = f"{_interval_method(pa, pb, macro=True)}; {test}"
    n_queries = true.size
    if n_queries == 0:
        return _empty(method, pa.shape[0], pb.shape[0])
    per_a, per_b = macro_scores(true, pa, metric, n_classes), macro_scores(true, pb, metric, n_classes)
    difference = float(per_a.mean() - per_b.mean())
    query_rng, _, _, perm_rng = streams(seed, 4)
    stats = resampled_macro(true, [pa, pb], metric, n_classes, n_resamples, query_rng)
    terms: list[Component] = []
    if pa.shape[0] == 1 and pb.shape[0] == 1:
        jackknife = jackknife_macro(true, pa[0], metric, n_classes) - jackknife_macro(true, pb[0], metric, n_classes)
        low, high = ((difference, difference) if n_queries == 1
                     else stratified_bounds(stats[0][0] - stats[1][0], difference, true, jackknife, confidence))
    else:
        terms = bootstrap_components([per_a, per_b], stats, [1.0, -1.0], macro_df(true))
        low, high = ((difference, difference) if n_queries == 1
                     else fiducial_bounds(difference, terms, confidence, streams(seed, 4)[1]))
    if swap:
        p_value = _swap_p_value(true, pa, pb, metric, n_classes, n_permutations, perm_rng)
    else:
        p_value = fiducial_p_value(difference, terms, streams(seed, 4)[1])  # the interval's pivots: dual
    return Comparison(difference, low, high, p_value, method, n_queries, pa.shape[0], pb.shape[0])


def _swap_p_value(true: np.ndarray, pa: np.ndarray, pb: np.ndarray, metric: str, n_classes: int,
                  n_permutations: int, rng: np.random.Generator) -> float:
    """Approximate randomisation: under the null a's and b's predictions of a query are exchangeable."""
    observed = abs(float(macro_scores(true, pa, metric, n_classes).mean()
                         - macro_scores(true, pb, metric, n_classes).mean()))
    extreme = 0
    for _, rows in chunks(n_permutations, pa.size):
        swapped = random_bits(rng, rows, true.size).astype(bool)[:, None, :]  # (rows, 1, Q), shared by seeds
        new_a, new_b = np.where(swapped, pb, pa), np.where(swapped, pa, pb)  # (rows, S, Q)
        diff = (macro_scores(true, new_a, metric, n_classes).mean(axis=1)
                - macro_scores(true, new_b, metric, n_classes).mean(axis=1))
        extreme += int(np.count_nonzero(np.abs(diff) >= observed - _TIE_TOLERANCE))
    return (1 + extreme) / (1 + n_permutations)


def _with_method(comparison: Comparison, method: str) -> Comparison:
    """The same numbers under a more specific method name."""
    return Comparison(comparison.difference, comparison.low, comparison.high, comparison.p_value, method,
                      comparison.n_queries, comparison.seeds_a, comparison.seeds_b)


def _empty(method: str, seeds_a: int, seeds_b: int) -> Comparison:
    """No valid query: nothing to compare."""
    return Comparison(math.nan, math.nan, math.nan, math.nan, method, 0, seeds_a, seeds_b)
