"""Classification scores for a probe on frozen embeddings, all from scikit-learn so they match the literature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

__all__ = ["ClassificationReport", "classification_report"]


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy and macro scores, the per-class table and the confusion matrix (rows true, columns predicted,
    both in ``labels`` order). Macro scores weigh every class equally, so rare products count as much as
    best sellers; classes never predicted score 0, not NaN (``zero_division=0``)."""

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    labels: tuple[Any, ...]


def classification_report(y_true: np.ndarray | Sequence[Any], y_pred: np.ndarray | Sequence[Any],
                          labels: np.ndarray | Sequence[Any] | None = None) -> ClassificationReport:
    """Score predictions; ``labels`` fixes the class order (default: every label seen in either array, sorted)."""
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d and the same length, got {true.shape} and {pred.shape}")
    order = np.unique(np.concatenate([true, pred])) if labels is None else np.asarray(labels)
    names = [str(label) for label in order]
    precision, recall, f1, _ = skm.precision_recall_fscore_support(true, pred, labels=order, average="macro",
                                                                   zero_division=0)
    table = skm.classification_report(true, pred, labels=order, target_names=names, output_dict=True,
                                      zero_division=0)
    return ClassificationReport(
        accuracy=float(skm.accuracy_score(true, pred)), macro_precision=float(precision),
        macro_recall=float(recall), macro_f1=float(f1),
        per_class={name: {key: float(value) for key, value in table[name].items()} for name in names},
        confusion=skm.confusion_matrix(true, pred, labels=order), labels=tuple(order.tolist()))
