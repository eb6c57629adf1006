"""Tests of ``shelfsight.stats``: hand-computed cases and independent references (scipy's bootstrap and t
intervals, scikit-learn's metrics, statsmodels' Holm), and simulations of the tests' false-positive rate and power.

Interval coverage is measured in ``tests/test_coverage.py`` (1,000 simulations per case). The simulations here run
400 draws each with fewer resamples/permutations than the defaults (stated per test); the rates they print are
Monte Carlo estimates with a standard error of about 1.1 points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, bootstrap, sem, ttest_rel
from scipy.stats import t as student_t
from sklearn.metrics import precision_recall_fscore_support, recall_score
from statsmodels.stats.multitest import multipletests

from shelfsight.stats import (
    Comparison,
    Interval,
    bootstrap_interval,
    classification_interval,
    holm,
    paired_classification,
    paired_comparison,
    resampling,
)
from shelfsight.stats.macro import ClassStrata, jackknife_macro
from shelfsight.stats.seeds import Component, fiducial_p_value, mean_components

N_SIMULATIONS = 400
MACRO = {"macro_precision": 0, "macro_recall": 1, "macro_f1": 2}


def precision_at_5(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """P@5-like per-query scores: each of 5 neighbours is relevant with the query's probability ``p``."""
    return (rng.random((*p.shape, 5)) < p[..., None]).mean(axis=-1)


# --- bootstrap_interval ------------------------------------------------------------------------------------------


def test_three_query_mean_and_bounds() -> None:
    interval = bootstrap_interval([0.2, 0.5, 0.8])
    assert isinstance(interval, Interval)
    assert interval.estimate == pytest.approx(0.5)
    assert 0.2 - 1e-12 <= interval.low < 0.5 < interval.high <= 0.8 + 1e-12  # a mean of 0.8s may round up 1 ulp
    assert (interval.n_queries, interval.n_seeds, interval.method) == (3, 1, "bootstrap over queries")


def test_two_query_percentiles_are_exact() -> None:
    """With scores {0, 1} the resampled mean is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: 2.5% -> 0, 97.5% -> 1."""
    interval = bootstrap_interval(np.array([0.0, 1.0]), n_resamples=4000)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_nan_queries_are_excluded_and_seeds_averaged() -> None:
    interval = bootstrap_interval([[0.2, math.nan, 0.8], [0.4, math.nan, 1.0]])
    assert interval.estimate == pytest.approx(0.6)  # mean of the seed means 0.5 and 0.7
    assert (interval.n_queries, interval.n_seeds) == (2, 2)
    assert interval.method == "two-level fiducial interval over seeds and queries"


def test_degenerate_inputs() -> None:
    empty = bootstrap_interval([math.nan, math.nan])
    assert math.isnan(empty.estimate) and math.isnan(empty.low) and math.isnan(empty.high)
    assert empty.n_queries == 0
    single = bootstrap_interval([[math.nan, 0.3], [math.nan, 0.5]])
    assert (single.estimate, single.low, single.high, single.n_queries) == (pytest.approx(0.4),) * 3 + (1,)
    assert single.low == single.high == single.estimate


def test_interval_width_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    scores = rng.beta(2, 3, 2000)
    interval = bootstrap_interval(scores, n_resamples=2000)
    expected = 2 * 1.959964 * scores.std(ddof=1) / math.sqrt(scores.size)
    assert interval.high - interval.low == pytest.approx(expected, rel=0.1)
    assert interval.low < scores.mean() < interval.high


def test_result_does_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    scores = rng.random((3, 50))
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, (2, 50))

    def run() -> tuple[object, ...]:
        return (bootstrap_interval(scores[0], n_resamples=300), bootstrap_interval(scores, n_resamples=300),
                paired_comparison(scores, scores[0] + 0.01, n_resamples=300, n_permutations=300),
                classification_interval(y_true, y_pred, metric="macro_f1", n_classes=4, n_resamples=300))

    default = run()
    monkeypatch.setattr(resampling, "_CHUNK_ELEMENTS", 160)  # a few resamples per chunk
    assert run() == default


def test_two_level_interval_includes_seed_variation() -> None:
    """Three seeds shifted by -0.05, 0, +0.05 on the same 1000 queries: drawing seeds too must widen the interval
    well beyond the one over queries of the seed-averaged scores (same estimate)."""
    rng = np.random.default_rng(5)
    base = 0.8 * rng.beta(2, 2, 1000) + 0.1
    scores = base + np.array([-0.05, 0.0, 0.05])[:, None] + rng.normal(0, 0.02, (3, 1000))
    two_level = bootstrap_interval(scores)
    queries_only = bootstrap_interval(scores.mean(axis=0))
    assert two_level.method == "two-level fiducial interval over seeds and queries"
    assert queries_only.method == "bootstrap over queries"
    assert two_level.estimate == pytest.approx(queries_only.estimate)
    width, narrow = two_level.high - two_level.low, queries_only.high - queries_only.low
    print(f"two-level width {width:.4f} vs queries only {narrow:.4f}")
    assert width > 2 * narrow


def test_one_level_interval_matches_scipy_percentile_bootstrap() -> None:
    """An independent implementation on the same data, at a confidence other than 95%: scipy's percentile
    bootstrap. Both use 20,000 resamples from different streams; their 5% and 95% quantiles differ by Monte Carlo
    error only (sd ~0.03 of the standard error each), so they must agree within 10% of a standard error."""
    rng = np.random.default_rng(21)
    for scores in (rng.beta(0.5, 3.0, 300), (rng.random(150) < 0.3).astype(float)):
        ours = bootstrap_interval(scores, n_resamples=20000, confidence=0.9, seed=1)
        reference = bootstrap((scores,), np.mean, n_resamples=20000, confidence_level=0.9, method="percentile",
                              random_state=2).confidence_interval
        tolerance = 0.1 * scores.std(ddof=1) / math.sqrt(scores.size)
        assert ours.low == pytest.approx(reference.low, abs=tolerance)
        assert ours.high == pytest.approx(reference.high, abs=tolerance)


def test_accuracy_interval_matches_scipy_on_correctness() -> None:
    """Accuracy with one seed is a mean of 0/1 correctness: scipy's percentile bootstrap of that mean, at 80%."""
    rng = np.random.default_rng(22)
    y_true = rng.integers(0, 3, 250)
    y_pred = np.where(rng.random(250) < 0.7, y_true, rng.integers(0, 3, 250))
    ours = classification_interval(y_true, y_pred, metric="accuracy", n_classes=3, n_resamples=20000,
                                   confidence=0.8)
    correct = (y_pred == y_true).astype(float)
    reference = bootstrap((correct,), np.mean, n_resamples=20000, confidence_level=0.8, method="percentile",
                          random_state=3).confidence_interval
    tolerance = 0.1 * correct.std(ddof=1) / math.sqrt(correct.size)
    assert ours.estimate == correct.mean()
    assert (ours.low, ours.high) == (pytest.approx(reference.low, abs=tolerance),
                                     pytest.approx(reference.high, abs=tolerance))


def test_two_level_interval_reduces_to_t_intervals_at_its_limits() -> None:
    """Only seeds vary (every query of a seed scores the same): Student's t on the S seed means, S - 1 df. Only
    queries vary (identical seeds): Student's t on the Q per-query scores, Q - 1 df. Both from scipy, at 90%."""
    seed_means = np.array([0.61, 0.55, 0.66])
    only_seeds = bootstrap_interval(np.repeat(seed_means[:, None], 40, axis=1), confidence=0.9)
    expected = student_t.interval(0.9, 2, loc=seed_means.mean(), scale=sem(seed_means))
    assert (only_seeds.low, only_seeds.high) == pytest.approx(expected, rel=1e-3)
    row = np.random.default_rng(23).beta(2.0, 3.0, 60)
    only_queries = bootstrap_interval(np.stack([row, row]), confidence=0.9)
    expected = student_t.interval(0.9, 59, loc=row.mean(), scale=sem(row))
    assert (only_queries.low, only_queries.high) == pytest.approx(expected, rel=1e-3)


def test_two_level_variance_components_hand_case() -> None:
    """x = [[1, 2], [3, 6]]: seed means 1.5 and 4.5, query means 2 and 4, residuals +-0.5. By hand: MS_seed =
    2 * 4.5 = 9, MS_query = 2 * 2 = 4, MS_residual = 1, so Var(mean) = (9 + 4 - 1) / 4 = 3, of which the seed part
    is var(1.5, 4.5) / 2 = 2.25 on 1 df and the query part var(2, 4) / 2 = 1 less the interaction 1 / 4."""
    seed_part, query_part = mean_components([np.array([[1.0, 2.0], [3.0, 6.0]])], [1.0])
    assert (seed_part.variance, seed_part.df, seed_part.overlap) == (2.25, 1.0, ())
    assert (query_part.variance, query_part.df, query_part.overlap) == (1.0, 1.0, ((0.25, 1.0),))
    assert seed_part.value + query_part.value == pytest.approx(3.0)


def test_fiducial_p_value_of_one_component_is_the_t_test() -> None:
    """With one component the pivot is Student's t: the p-value of 2.0 over a standard error 1 on 4 df is
    scipy's two-sided t tail."""
    p_value = fiducial_p_value(2.0, [Component(1.0, 4.0)], np.random.default_rng(0))
    assert p_value == pytest.approx(2 * student_t.sf(2.0, 4), rel=1e-3)


def test_every_interval_honours_its_confidence() -> None:
    """A run passes 1 - alpha: each interval at 80% must lie strictly inside the one at 99%."""
    rng = np.random.default_rng(24)
    scores = rng.random((3, 80))
    y_true = rng.integers(0, 4, 80)
    y_pred = np.where(rng.random((3, 80)) < 0.6, y_true, rng.integers(0, 4, (3, 80)))
    cases = [lambda c: bootstrap_interval(scores[0], confidence=c), lambda c: bootstrap_interval(scores, confidence=c),
             lambda c: classification_interval(y_true, y_pred[0], metric="macro_f1", n_classes=4, confidence=c),
             lambda c: classification_interval(y_true, y_pred, metric="macro_recall", n_classes=4, confidence=c),
             lambda c: paired_comparison(scores[0], scores[1], n_permutations=10, confidence=c),
             lambda c: paired_comparison(scores, scores[1], n_permutations=10, confidence=c),
             lambda c: paired_classification(y_true, y_pred[0], y_pred[1], metric="macro_f1", n_classes=4,
                                             n_permutations=10, confidence=c),
             lambda c: paired_classification(y_true, y_pred, y_pred[1], metric="macro_precision", n_classes=4,
                                             confidence=c)]
    for make in cases:
        narrow, wide = make(0.8), make(0.99)
        assert wide.low < narrow.low < narrow.high < wide.high


# --- classification_interval -------------------------------------------------------------------------------------


def test_macro_scores_on_a_tiny_confusion_match_hand_values_and_sklearn() -> None:
    """Class 3 is never seen nor predicted: it scores 0 in every macro average (zero_division=0)."""
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 2])
    hand = {"macro_precision": (0.5 + 2 / 3 + 1.0) / 4, "macro_recall": (0.5 + 1.0 + 0.5) / 4,
            "macro_f1": (0.5 + 0.8 + 2 / 3) / 4}
    for metric, index in MACRO.items():
        reference = precision_recall_fscore_support(y_true, y_pred, average="macro", labels=range(4),
                                                    zero_division=0)[index]
        estimate = classification_interval(y_true, y_pred, metric=metric, n_classes=4).estimate  # type: ignore[arg-type]
        assert estimate == reference
        assert estimate == pytest.approx(hand[metric])


def test_macro_scores_match_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(6)
    for _ in range(30):
        n_classes, n_queries, n_seeds = int(rng.integers(2, 8)), int(rng.integers(2, 60)), int(rng.integers(1, 4))
        y_true, y_pred = rng.integers(0, n_classes, n_queries), rng.integers(0, n_classes, (n_seeds, n_queries))
        for metric, index in MACRO.items():
            reference = np.mean([precision_recall_fscore_support(y_true, seed_pred, average="macro",
                                                                 labels=range(n_classes), zero_division=0)[index]
                                 for seed_pred in y_pred])
            interval = classification_interval(y_true, y_pred, metric=metric, n_classes=n_classes,  # type: ignore[arg-type]
                                               n_resamples=50)
            if n_seeds == 1:
                assert interval.estimate == reference
            assert interval.estimate == pytest.approx(reference, rel=1e-12)
            assert interval.n_seeds == n_seeds


def test_perfect_classifier_macro_interval_contains_one() -> None:
    """40 classes with 2 test photos each, all predicted right: every macro score is exactly 1, and so is every
    stratified resample (the old bootstrap dropped classes and gave macro-F1 the interval [0.80, 0.95])."""
    y_true = np.repeat(np.arange(40), 2)
    for metric in MACRO:
        interval = classification_interval(y_true, y_true, metric=metric, n_classes=40)  # type: ignore[arg-type]
        assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)
        seeded = classification_interval(y_true, np.stack([y_true] * 3), metric=metric,  # type: ignore[arg-type]
                                         n_classes=40)
        assert (seeded.estimate, seeded.low, seeded.high) == (1.0, 1.0, 1.0)
        same = paired_classification(y_true, y_true, y_true, metric=metric, n_classes=40,  # type: ignore[arg-type]
                                     n_permutations=50)
        assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)


def test_stratified_resamples_keep_every_class_and_score_as_sklearn_with_weights() -> None:
    """Each slot draws a query of its own class (class supports never change), and a resample's macro score is
    scikit-learn's on the drawn queries with ``sample_weight = n / (n - 1)`` for a class of ``n``."""
    rng = np.random.default_rng(25)
    y_true = np.repeat(np.arange(6), [1, 2, 3, 5, 8, 13])
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, 7, y_true.size))
    strata = ClassStrata.of(y_true)
    idx = strata.draw(rng, 40)
    assert (y_true[idx] == strata.slot_class).all()
    np.testing.assert_array_equal(np.bincount(strata.slot_class), [1, 1, 2, 4, 7, 12])
    weight = strata.slot_size / np.repeat(strata.draws, strata.draws)
    for metric, index in MACRO.items():
        ours = strata.scores(y_pred[idx], metric, 7)
        reference = [precision_recall_fscore_support(strata.slot_class, row, average="macro", labels=range(7),
                                                     sample_weight=weight, zero_division=0)[index]
                     for row in y_pred[idx]]
        np.testing.assert_allclose(ours, reference, rtol=1e-12)


def test_jackknife_macro_matches_leave_one_out_sklearn() -> None:
    rng = np.random.default_rng(26)
    y_true = rng.integers(0, 5, 30)
    y_pred = np.where(rng.random(30) < 0.5, y_true, rng.integers(0, 5, 30))
    for metric, index in MACRO.items():
        reference = [precision_recall_fscore_support(np.delete(y_true, i), np.delete(y_pred, i), average="macro",
                                                     labels=range(5), zero_division=0)[index] for i in range(30)]
        np.testing.assert_allclose(jackknife_macro(y_true, y_pred, metric, 5), reference, rtol=1e-12)


def test_macro_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(8)
    y_true = rng.integers(0, 5, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 5, 400))
    interval = classification_interval(y_true, y_pred, metric="macro_f1", n_classes=5)
    assert interval.low < interval.estimate < interval.high
    assert 0.02 < interval.high - interval.low < 0.2


# --- paired comparisons ------------------------------------------------------------------------------------------


def test_paired_comparison_hand_case() -> None:
    """Differences (0.5, 0, 0.6): the sign-flip test's exact p-value is 4/8 (|sum| >= 1.1 when the signs of
    0.5 and 0.6 agree); the Monte Carlo estimate with 10,000 permutations must be close."""
    comparison = paired_comparison([1.0, 0.5, 0.8], [0.5, 0.5, 0.2])
    assert isinstance(comparison, Comparison)
    assert comparison.difference == pytest.approx(1.1 / 3)
    assert comparison.p_value == pytest.approx(0.5, abs=0.02)
    assert -1e-12 <= comparison.low <= comparison.difference <= comparison.high <= 0.6 + 1e-12
    assert (comparison.n_queries, comparison.seeds_a, comparison.seeds_b) == (3, 1, 1)
    assert comparison.method.startswith("paired bootstrap over queries; sign-flip")


def test_identical_systems_give_zero_difference_and_p_one() -> None:
    scores = np.random.default_rng(9).random((2, 100))
    comparison = paired_comparison(scores, scores, n_permutations=500)
    assert (comparison.difference, comparison.p_value) == (0.0, 1.0)
    assert comparison.method.startswith("paired two-level fiducial interval over seeds and queries")


def test_paired_two_level_with_identical_seeds_is_the_paired_t_interval() -> None:
    """Seeds that all score alike carry no seed variance: the two-level difference interval is then the paired t
    interval on the per-query differences (scipy's ``ttest_rel``), here at 90%."""
    rng = np.random.default_rng(27)
    a, b = rng.beta(3.0, 2.0, 120), rng.beta(2.0, 2.0, 120)
    comparison = paired_comparison(np.stack([a, a]), np.stack([b, b, b]), n_permutations=10, confidence=0.9)
    expected = ttest_rel(a, b).confidence_interval(0.9)
    assert (comparison.low, comparison.high) == pytest.approx((expected.low, expected.high), rel=1e-3)


def test_paired_comparison_skips_nan_queries() -> None:
    a, b = np.array([[0.9, math.nan, 0.7, 0.8]]), np.array([0.1, math.nan, 0.2, 0.3])
    comparison = paired_comparison(a, b, n_permutations=200)
    assert comparison.n_queries == 3
    assert comparison.difference == pytest.approx(0.6)


def test_paired_comparison_validates_inputs() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_comparison(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="NaN on the same queries"):
        paired_comparison([0.1, math.nan, 0.3], [0.1, 0.2, math.nan])
    with pytest.raises(ValueError, match="every seed"):
        paired_comparison([[0.1, math.nan], [0.2, 0.3]], [0.1, math.nan])
    with pytest.raises(ValueError, match="shape"):
        paired_comparison(np.zeros((2, 2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([0.1, 0.2], [0.2, 0.1], confidence=95)


def test_false_positive_rate_of_the_sign_flip_test() -> None:
    """Identical systems: per-query difficulty p ~ Beta(1.5, 1.5) shared by a and b (so their scores correlate),
    each system's P@5 drawn independently given p, Q=1000. 1000 permutations, 100 resamples per comparison.
    The rate of p < 0.05 must stay near 5% (<= 7%). (3000 draws while writing this: 4.7%.)"""
    rng = np.random.default_rng(11)
    rejections = 0
    for i in range(N_SIMULATIONS):
        difficulty = rng.beta(1.5, 1.5, 1000)
        a, b = precision_at_5(rng, difficulty), precision_at_5(rng, difficulty)
        rejections += paired_comparison(a, b, n_resamples=100, n_permutations=1000, seed=i).p_value < 0.05
    rate = rejections / N_SIMULATIONS
    print(f"false-positive rate at p < 0.05: {rate:.3f}")
    assert rate <= 0.07


def test_power_against_a_small_advantage() -> None:
    """a is better by exactly +0.03 on the mean over Q=2000 queries: p_b ~ 0.97 * Beta(1.5, 1.5) per query,
    p_a = p_b + 0.03, each system's P@5 drawn given its p. Per-query scores have sd ~0.32 and the two systems
    correlate at ~0.6 (both find the same queries hard), per-query differences sd ~0.28. 1000 permutations,
    100 resamples per comparison. p < 0.05 must happen in >= 80% of draws."""
    rng = np.random.default_rng(12)
    detected = 0
    for i in range(N_SIMULATIONS):
        difficulty = 0.97 * rng.beta(1.5, 1.5, 2000)
        a, b = precision_at_5(rng, difficulty + 0.03), precision_at_5(rng, difficulty)
        comparison = paired_comparison(a, b, n_resamples=100, n_permutations=1000, seed=i)
        detected += comparison.p_value < 0.05 and comparison.difference > 0
    rate = detected / N_SIMULATIONS
    print(f"power at p < 0.05: {rate:.3f}")
    assert rate >= 0.80


# --- paired_classification ---------------------------------------------------------------------------------------


def mcnemar_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """18 queries: 8 only a gets right, 2 only b, 5 both, 3 neither."""
    y_true = np.zeros(18, dtype=int)
    pred_a = np.array([0] * 8 + [1] * 2 + [0] * 5 + [1] * 3)
    pred_b = np.array([1] * 8 + [0] * 2 + [0] * 5 + [1] * 3)
    return y_true, pred_a, pred_b


def test_mcnemar_against_the_hand_computed_binomial() -> None:
    """Two-sided exact McNemar: 2 * P(Binomial(10, 1/2) <= 2) = 2 * (1 + 10 + 45) / 1024."""
    y_true, pred_a, pred_b = mcnemar_case()
    comparison = paired_classification(y_true, pred_a, pred_b, metric="accuracy", n_classes=2)
    assert comparison.p_value == pytest.approx(112 / 1024, rel=1e-12)
    assert comparison.p_value == pytest.approx(2 * binom.cdf(2, 10, 0.5), rel=1e-12)
    assert comparison.difference == pytest.approx(6 / 18)
    assert comparison.method == "paired bootstrap over queries; McNemar exact"


def test_accuracy_with_seeds_uses_the_sign_flip_test() -> None:
    y_true, pred_a, pred_b = mcnemar_case()
    comparison = paired_classification(y_true, np.stack([pred_a, pred_a]), pred_b, metric="accuracy",
                                       n_classes=2, n_permutations=20000)
    assert "sign-flip" in comparison.method and comparison.seeds_a == 2
    assert comparison.difference == pytest.approx(6 / 18)
    assert comparison.p_value == pytest.approx(112 / 1024, abs=0.01)  # the same test, by Monte Carlo


def test_macro_comparisons() -> None:
    rng = np.random.default_rng(13)
    y_true = rng.integers(0, 4, 200)
    good = np.where(rng.random((2, 200)) < 0.9, y_true, rng.integers(0, 4, (2, 200)))
    poor = rng.integers(0, 4, (2, 200))
    swap = paired_classification(y_true, good, poor, metric="macro_f1", n_classes=4, n_permutations=500)
    assert "swapping" in swap.method
    assert swap.p_value == pytest.approx(1 / 501)
    reference = np.mean([precision_recall_fscore_support(y_true, p, average="macro", labels=range(4),
                                                         zero_division=0)[2] for p in good])
    reference -= np.mean([precision_recall_fscore_support(y_true, p, average="macro", labels=range(4),
                                                          zero_division=0)[2] for p in poor])
    assert swap.difference == pytest.approx(reference, rel=1e-12)
    assert swap.low < swap.difference < swap.high
    dual = paired_classification(y_true, good, poor[0], metric="macro_recall", n_classes=4, n_resamples=400)
    assert "dual to the two-level interval" in dual.method and dual.p_value < 0.05 and dual.low > 0
    at_p = paired_classification(y_true, good, poor[0], metric="macro_recall", n_classes=4, n_resamples=400,
                                 confidence=1 - dual.p_value)
    assert at_p.low == pytest.approx(0.0, abs=1e-9)  # the interval at 1 - p just reaches 0: test and interval agree
    same = paired_classification(y_true, good, good, metric="macro_precision", n_classes=4, n_permutations=200)
    assert (same.difference, same.p_value) == (0.0, 1.0)


def test_classification_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="range"):
        classification_interval([0, 1], [0, 2], metric="macro_f1", n_classes=2)
    with pytest.raises(ValueError, match="metric"):
        classification_interval([0, 1], [0, 1], metric="f1", n_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same Q"):
        paired_classification([0, 1, 1], [0, 1, 1], [0, 1], metric="accuracy", n_classes=2)


# --- holm --------------------------------------------------------------------------------------------------------


def test_holm_hand_case_and_nan() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    adjusted = holm([0.01, math.nan, 0.04])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_holm_matches_statsmodels() -> None:
    rng = np.random.default_rng(14)
    for size in (1, 2, 5, 10, 30, 100):
        for p_values in (rng.random(size), rng.random(size) ** 4, np.round(rng.random(size), 1)):
            expected = multipletests(p_values, method="holm")[1]
            np.testing.assert_allclose(holm(p_values), expected, rtol=1e-15, atol=0)
            with_nan = np.append(p_values, math.nan)
            np.testing.assert_allclose(holm(with_nan)[:-1], expected, rtol=1e-15, atol=0)


def test_a_classification_interval_never_leaves_zero_to_one() -> None:
    """Three seeds of a near-useless classifier (two predict one class for all): the t-based seed part would reach
    below 0; the bound is cut at 0, the estimate untouched, and an empty test set stays NaN."""
    y_true = np.repeat([3, 5, 1, 0, 4, 2], 10)
    rng = np.random.default_rng(0)
    y_pred = np.stack([rng.integers(0, 2, 60), np.zeros(60, dtype=int), np.full(60, 5)])
    for metric in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        interval = classification_interval(y_true, y_pred, metric=metric, n_classes=6, n_resamples=200)
        assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0, metric
    assert interval.estimate == pytest.approx(np.mean([recall_score(y_true, p, average="macro", labels=range(6),
                                                                    zero_division=0) for p in y_pred]))
    empty = classification_interval(np.zeros(0, dtype=int), np.zeros(0, dtype=int), metric="macro_f1", n_classes=2)
    assert math.isnan(empty.low) and math.isnan(empty.high)
