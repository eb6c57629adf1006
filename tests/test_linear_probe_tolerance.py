"""The linear probe's stopping rule is relative to where lbfgs starts (``adapt.baselines.probe_tolerance``).

scikit-learn's fixed ``tol=1e-4`` is absolute; with many classes of unit vectors the gradient at zero weights is
already below it, lbfgs stops before its first step, and the probe predicts one class for every photo (issue 32's
100k bench, 1,000 classes of 1,280-d vectors: accuracy 0.001). The same regime is built here at a small size."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shelfsight.adapt import linear_probe
from shelfsight.adapt.baselines import DEFAULT_TOL, RELATIVE_TOL, probe_tolerance


def _loss(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """scikit-learn's multinomial log loss, averaged over samples (no penalty: its gradient is 0 at 0)."""
    logits = x @ weights[:, :-1].T + weights[:, -1]
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def test_the_tolerance_is_a_hundredth_of_the_starting_gradient_at_most_1e_4() -> None:
    # hand-worked: x = I (2 x 2), y = (0, 1): the gradient at zero is (1/2)(1/2 - onehot)^T x = +-0.25
    assert probe_tolerance(np.eye(2, dtype=np.float32), np.array([0, 1])) == DEFAULT_TOL  # 0.01 x 0.25 > 1e-4
    assert probe_tolerance(1e-3 * np.eye(2, dtype=np.float32), np.array([0, 1])) == pytest.approx(2.5e-6)
    # uneven classes, features near 0: the intercepts' gradient |1/K - n_k/n| = |1/2 - 501/1000| decides
    uneven = np.array([0] * 501 + [1] * 499)
    assert probe_tolerance(np.full((1000, 2), 1e-9, np.float32), uneven) == pytest.approx(RELATIVE_TOL * 1e-3)
    # against a central difference of the loss itself, entry by entry (balanced classes: the weights decide)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)).astype(np.float32) * 1e-3, np.arange(30) % 3
    step, numeric = 1e-4, []
    for entry in np.ndindex(3, 5):
        plus, minus = np.zeros((3, 5)), np.zeros((3, 5))
        plus[entry], minus[entry] = step, -step
        numeric.append((_loss(x.astype(np.float64), y, plus) - _loss(x.astype(np.float64), y, minus)) / (2 * step))
    assert probe_tolerance(x, y) == pytest.approx(RELATIVE_TOL * np.abs(numeric).max(), rel=1e-5)


def test_a_starting_gradient_below_1e_4_is_fitted_not_left_at_zero() -> None:
    """The 100k bench's regime at a small size: its starting gradient (~4e-5: 1,000 classes of unit vectors) came
    from many classes; here 50 classes of vectors of norm 0.005 give the same (~4e-5), under scikit-learn's 1e-4."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 64))
    x = np.repeat(centres, 4, axis=0) + 0.5 * rng.normal(size=(200, 64))
    x = (0.005 * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.repeat(np.arange(50), 4)
    test = np.arange(200) % 4 == 3
    stuck = LogisticRegression(max_iter=1000).fit(x[~test], y[~test])  # the fixed rule: no step taken
    assert stuck.n_iter_[0] == 0 and not stuck.coef_.any()
    assert probe_tolerance(x[~test], y[~test]) < 1e-6
    probe = linear_probe(x[~test], y[~test], c=10.0)
    assert probe.n_iter_[0] > 0 and (probe.predict(x[test]) == y[test]).mean() > 0.9  # chance: 0.02
