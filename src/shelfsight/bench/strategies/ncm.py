"""``ncm``: the nearest class mean. Each class is the normalised mean of its training embeddings, a photo
takes the class whose mean is closest in cosine: auto-tagging with nothing to train, one vector per class
to store (where kNN keeps every training photo), and new classes added by averaging their photos. It averages the
training part only, so a label-budget cell ``ncm/N`` learns from its N drawn photos per class, as ``knn/N`` and
``linear/N`` do (their details say how many: ``train``). The means are saved as a cosine head in the cell's work
folder (``RUN/work/CELL_ID/head``), which ``shelfsight index --head`` serves."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from shelfsight.adapt.heads import ncm_head, save_linear_head
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    NO_TRAINING,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.scoring import classification_data, classification_scores, training_counts

NAME = "ncm"
HEAD_FOLDER = "head"


def class_means(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, d)`` unit vectors: the normalised mean embedding of each class (zero for an empty one)."""
    sums = np.zeros((n_classes, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def predict(means: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The class of the most similar mean; ties go to the lower class index."""
    return np.argmax(vectors @ means.T, axis=1) if len(vectors) else np.zeros(0, dtype=np.int64)


LEARNS_FROM = "the training part only (validation unused: nothing to select)"
"""What the means average, in the settings so that a change recomputes the cells. Validation is the run's model
selection set; NCM selects nothing, and averaging it in would give NCM more labels than kNN and the linear
probe, and a label-budget cell ``ncm/N`` far more than N photos per class."""


def run(inputs: StrategyInputs) -> StrategyOutput:
    data = classification_data(inputs)
    started = time.perf_counter()
    means = class_means(data.x_train, data.y_train, len(data.classes))
    fit_seconds = time.perf_counter() - started
    head = save_linear_head(inputs.workdir / HEAD_FOLDER, ncm_head(means, data.classes, data.x_train, data.y_train))
    details: dict[str, Any] = {**training_counts(data, inputs.label_budget), "test": len(data.y_test),
                               "classes": len(data.classes), "dropped_test_unseen_class": data.dropped_test,
                               "head": str(head)}
    scores, per_item = classification_scores(data, predict(means, data.x_test), details)
    return StrategyOutput({CLASSIFICATION: scores}, {"tune_seconds": fit_seconds}, details, per_item)


def settings(sections: Sections) -> dict[str, Any]:
    return {"learns_from": LEARNS_FROM}


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, settings=settings, classifies=True,
                    budgeted=True, description="nearest class mean of the frozen training embeddings (cosine)")
