"""Baselines the top-tuned head must beat: a linear probe and cosine k-nearest neighbours on frozen embeddings."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0, max_iter: int = 1000,
                 c: float = 1.0) -> LogisticRegression:
    """Multinomial logistic regression (lbfgs): the usual linear-probe protocol.

    ``c`` is scikit-learn's inverse L2 strength. The default 1.0 is strong for unit-norm vectors (on Grocery
    Store lite0 embeddings C=100 scores ~7 points higher), so choose it on validation data for a fair baseline.
    """
    x = np.asarray(x_train, dtype=np.float32)
    model = LogisticRegression(solver="lbfgs", C=c, max_iter=max_iter, random_state=seed,
                               tol=probe_tolerance(x, np.asarray(y_train)))
    with _fitting():
        return model.fit(x, np.asarray(y_train))


DEFAULT_TOL = 1e-4
"""scikit-learn's ``tol``: lbfgs stops once no gradient entry exceeds it."""
RELATIVE_TOL = 1e-2
"""The most the gradient may still be, relative to its value at the start (zero weights), when lbfgs stops.
scikit-learn's 1e-4 is absolute, and the starting gradient shrinks with the number of classes and the scale of
the features: for 1,000 classes of unit 1,280-d vectors it is ~3e-5, below 1e-4, so lbfgs stopped before its
first step with every weight zero and predicted one class for every photo (issue 32's 100k bench: accuracy 0.001,
no warning). On 81 classes (~5e-4 at the start) the fixed 1e-4 stopped after a 5-fold reduction."""


def probe_tolerance(x: np.ndarray, y: np.ndarray) -> float:
    """``min(DEFAULT_TOL, RELATIVE_TOL x the largest gradient entry at zero weights)`` of the multinomial loss
    scikit-learn minimises (averaged over samples): ``(1/n) (1/K - onehot)^T x`` and, for the intercepts,
    ``1/K - n_k/n``."""
    from scipy.sparse import csr_matrix

    classes, rows = np.unique(y, return_inverse=True)
    if len(classes) < 2 or len(x) == 0:
        return DEFAULT_TOL
    onehot = csr_matrix((np.ones(len(rows), np.float64), (rows, np.arange(len(rows)))), shape=(len(classes), len(x)))
    per_class = np.asarray(onehot @ x.astype(np.float64)) / len(x)  # (K, d): each class's summed rows over n
    counts = np.bincount(rows, minlength=len(classes)) / len(x)
    start = max(float(np.abs(x.mean(axis=0, dtype=np.float64)[None, :] / len(classes) - per_class).max()),
                float(np.abs(1.0 / len(classes) - counts).max()))
    return min(DEFAULT_TOL, RELATIVE_TOL * start) if start > 0 else DEFAULT_TOL


def knn_classifier(x_train: np.ndarray, y_train: np.ndarray, *, k: int = 5) -> KNeighborsClassifier:
    """Majority vote of the ``k`` nearest training vectors by cosine similarity (exact, brute force).

    The cosine metric makes the result independent of whether the inputs were L2-normalised.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model = KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine", algorithm="brute")
    with _fitting():
        return model.fit(np.asarray(x_train, dtype=np.float32), np.asarray(y_train))


BASELINE_THREADS = 1
"""BLAS threads of a baseline's fit. These problems are small (hundreds to thousands of rows): on a 2-core CPU
shared with other work, two BLAS threads waiting on each other made a linear probe on 81 photos 5-10x slower
(1.3 s against 0.3 s for C=100), as for top-tuning heads (``toptune_training.HEAD_THREADS``)."""


@contextlib.contextmanager
def _fitting() -> Iterator[None]:
    """One BLAS thread; and one or two photos per class (a label budget) make scikit-learn suspect a regression
    target: they are not, so that warning is silenced."""
    with threadpool_limits(limits=BASELINE_THREADS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        yield
