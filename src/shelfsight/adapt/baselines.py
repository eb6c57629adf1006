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
    model = LogisticRegression(solver="lbfgs", C=c, max_iter=max_iter, random_state=seed)
    with _fitting():
        return model.fit(np.asarray(x_train, dtype=np.float32), np.asarray(y_train))


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
