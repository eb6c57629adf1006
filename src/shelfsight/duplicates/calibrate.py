"""Calibrate duplicate detection on real photos: precision, recall and average precision per transformation,
for the embedding and for perceptual hashes, and the similarity threshold that reaches a target precision.

Every copy is compared with every photo of the pool; the pair (copy, its source) is a duplicate, every
other pair is not: a different shot of the same product, a different product of the same class, or
anything else. Where the catalogue has groups (a seller, a shoot), a source's other photos of its group are the
hard negatives: same background, a different item; they are counted apart, with how many the threshold flags.
The threshold for a target precision is chosen on all pairs at once (the operating point a catalogue would
use), and each transformation's recall is read at it; the best recall each transformation
could reach on its own at that precision is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from shelfsight.duplicates.calibration_set import CalibrationSet

CURVE_POINTS = 2000
"""Points of the pooled precision-recall curve kept in the result, for thresholds at other precisions."""


@dataclass(frozen=True)
class PairScores:
    """One method's similarity for every (copy, pool photo) pair, and which pairs are duplicates."""

    method: str
    scores: np.ndarray
    """(copies, pool) similarities."""
    positive: np.ndarray
    """(copies, pool) bool: the pool photo is the copy's source."""
    transforms: np.ndarray
    """(copies,) the transformation of each copy."""
    hard: np.ndarray | None = None
    """(copies, pool) bool: the pool photo shares the copy's source's group but is another item."""


def truth(calibration: CalibrationSet) -> tuple[np.ndarray, np.ndarray]:
    """The positive mask and each copy's transformation, aligned with ``calibration``'s copies and pool."""
    pool_ids = np.array(calibration.pool.ids)
    sources = np.array([calibration.source_of(c) for c in calibration.copies])
    return sources[:, None] == pool_ids[None, :], np.array([calibration.transform_of(c) for c in calibration.copies])


def hard_negatives(calibration: CalibrationSet, positive: np.ndarray) -> np.ndarray:
    """(copies, pool) bool: the pool photo is another item of the copy's source's group (no group: never)."""
    group = {item.item_id: item.group for item in calibration.pool}
    pool = np.array([group[i] or "" for i in calibration.pool.ids], dtype=object)
    sources = np.array([group.get(calibration.source_of(c)) or "" for c in calibration.copies], dtype=object)
    same = (sources[:, None] == pool[None, :]) & (sources[:, None] != "")
    return np.asarray(same & ~positive, dtype=bool)


def threshold_at(scores: np.ndarray, positive: np.ndarray, precision: float) -> dict[str, float]:
    """The lowest threshold whose pairs at or above it have at least ``precision`` precision (the most recall
    at that precision); NaN threshold and zero recall when no threshold reaches it."""
    curve_p, curve_r, thresholds = precision_recall_curve(positive.ravel(), scores.ravel())
    ok = np.flatnonzero(curve_p[:-1] >= precision)
    if not len(ok):
        return {"threshold": float("nan"), "precision": float("nan"), "recall": 0.0}
    best = ok[np.argmax(curve_r[ok])]
    return {"threshold": float(thresholds[best]), "precision": float(curve_p[best]), "recall": float(curve_r[best])}


def at_threshold(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision and recall of the pairs with similarity >= ``threshold``."""
    if np.isnan(threshold):
        return {"precision": float("nan"), "recall": 0.0, "flagged": 0}
    flagged = scores >= threshold
    hits = int((flagged & positive).sum())
    return {"precision": hits / int(flagged.sum()) if flagged.any() else float("nan"),
            "recall": hits / int(positive.sum()), "flagged": int(flagged.sum())}


def evaluate_method(pairs: PairScores, precisions: tuple[float, ...]) -> dict[str, object]:
    """Pooled thresholds per target precision, then per transformation: AP, recall and precision at each pooled
    threshold, and the best recall the transformation alone reaches at that precision."""
    pooled = {f"{p:g}": threshold_at(pairs.scores, pairs.positive, p) for p in precisions}
    per_transform: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(pairs.transforms.tolist()):
        rows = pairs.transforms == name
        scores, positive = pairs.scores[rows], pairs.positive[rows]
        entry = {"copies": float(rows.sum()),
                 "average_precision": float(average_precision_score(positive.ravel(), scores.ravel()))}
        for key, chosen in pooled.items():
            measured = at_threshold(scores, positive, chosen["threshold"])
            entry[f"recall@p{key}"] = measured["recall"]
            entry[f"precision@p{key}"] = measured["precision"]
            entry[f"own_recall@p{key}"] = threshold_at(scores, positive, float(key))["recall"]
        per_transform[name] = entry
    return {"average_precision": float(average_precision_score(pairs.positive.ravel(), pairs.scores.ravel())),
            "thresholds": pooled, "transforms": per_transform, "curve": _curve(pairs),
            "hard_negatives": hard_negative_counts(pairs, pooled)}


def hard_negative_counts(pairs: PairScores, pooled: dict[str, dict[str, float]]) -> dict[str, float]:
    """How many same-group, different-item pairs there are, the most similar one, and how many each pooled
    threshold flags (each a false duplicate)."""
    hard = pairs.hard if pairs.hard is not None else np.zeros_like(pairs.positive)
    scores = pairs.scores[hard]
    counts: dict[str, float] = {"pairs": int(hard.sum()),
                                "max_similarity": float(scores.max()) if len(scores) else float("nan")}
    for key, chosen in pooled.items():
        counts[f"flagged@p{key}"] = int((scores >= chosen["threshold"]).sum()) if len(scores) else 0
    return counts


def _curve(pairs: PairScores) -> dict[str, list[float]]:
    """The pooled curve where precision >= 0.5, thinned to CURVE_POINTS (threshold, precision, recall)."""
    precision, recall, thresholds = precision_recall_curve(pairs.positive.ravel(), pairs.scores.ravel())
    keep = np.flatnonzero(precision[:-1] >= 0.5)
    if len(keep) > CURVE_POINTS:
        keep = keep[np.linspace(0, len(keep) - 1, CURVE_POINTS).round().astype(int)]
    return {"threshold": thresholds[keep].round(6).tolist(), "precision": precision[keep].round(6).tolist(),
            "recall": recall[keep].round(6).tolist()}


def thin_curve(curve: dict[str, list[float]], points: int) -> dict[str, list[float]]:
    """At most ``points`` evenly spaced points of a stored curve (its ends kept)."""
    size = len(curve["threshold"])
    if size <= points:
        return curve
    keep = np.linspace(0, size - 1, points).round().astype(int)
    return {name: [values[k] for k in keep] for name, values in curve.items()}


def threshold_from_curve(curve: dict[str, list[float]], precision: float) -> float:
    """The stored curve's lowest threshold with at least ``precision``; a ValueError when none reaches it."""
    thresholds = np.asarray(curve["threshold"])
    reached = np.asarray(curve["precision"]) >= precision
    if not reached.any():
        best = max(curve["precision"], default=float("nan"))
        raise ValueError(f"the calibration never reaches precision {precision} (at most {best:.4f}); "
                         "choose a lower --target-precision or give --threshold")
    recalls = np.asarray(curve["recall"])
    return float(thresholds[reached][np.argmax(recalls[reached])])
