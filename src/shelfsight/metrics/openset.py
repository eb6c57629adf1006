"""Open-set scores: how well a confidence score separates queries the catalogue knows from those it does not.

Conventions: ``known`` is the positive class and a score is a confidence (higher = more likely known): the top-1
cosine of a search, a maximum softmax probability, a logit energy (``logsumexp``), the cosine to the nearest class
mean. A query is *accepted* (answered with a match) when its score is ``>= threshold``.

- ``auroc``: the probability that a random known query outscores a random unknown one, ties counted half (the
  Mann-Whitney statistic; equal to scikit-learn's ``roc_auc_score`` with known as the positive label).
- ``fpr_at_tpr``: the share of unknown queries accepted at the strictest threshold that still accepts
  ``tpr`` of the known ones (FPR at 95% TPR, the usual out-of-distribution figure).
- ``precision_threshold``: the most permissive threshold whose accepted answers are right at least ``target`` of
  the time, on a calibration set (validation photos); a *right* answer is a known query whose answer (top-1 match or
  predicted class) is correct, so "match" answers mean what they say.
- ``openset_correct``: per query, right when a known query is accepted and answered correctly, or an unknown one
  is rejected; its mean is the open-set accuracy.
- ``cluster_bootstrap_auroc``: AUROC recomputed on resamples of whole classes (known and unknown classes drawn
  separately, with replacement): photos of one class are not independent, so classes are the sampled unit.

Pure numpy, so the maths can be read and tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Threshold", "auroc", "cluster_bootstrap_auroc", "energy", "fpr_at_tpr", "max_softmax", "openset_correct",
    "precision_threshold",
]


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: scores must be finite")
    return array


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy's ``rankdata``)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)]
    average = (first + last + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def auroc(known: ArrayLike, unknown: ArrayLike) -> float:
    """P(known score > unknown score) + half P(tie); NaN when either side is empty."""
    pos, neg = _scores(known, "known"), _scores(unknown, "unknown")
    if not len(pos) or not len(neg):
        return math.nan
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def fpr_at_tpr(known: ArrayLike, unknown: ArrayLike, tpr: float = 0.95) -> float:
    """Share of unknown scores ``>=`` the threshold that accepts at least ``tpr`` of the known ones (the highest
    such threshold: the first ROC point reaching ``tpr``); NaN when either side is empty."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos, neg = _scores(known, "known"), _scores(unknown, "unknown")
    if not len(pos) or not len(neg):
        return math.nan
    needed = math.ceil(tpr * len(pos) - 1e-9)
    threshold = np.sort(pos)[::-1][needed - 1]
    return float((neg >= threshold).mean())


@dataclass(frozen=True)
class Threshold:
    """A threshold chosen on calibration queries: its value, whether the target precision was reached there, and
    the precision and acceptance it had there."""

    value: float
    reached: bool
    precision: float
    accepted: float


def precision_threshold(scores: ArrayLike, right: ArrayLike, target: float) -> Threshold:
    """The lowest threshold whose accepted answers (``score >= threshold``) are ``right`` at least ``target`` of the
    time. When no threshold reaches it, ``+inf``: answer nothing rather than promise a precision not seen."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    values = _scores(scores, "scores")
    ok = np.asarray(right, dtype=bool).ravel()
    if len(ok) != len(values):
        raise ValueError(f"scores and right differ in length: {len(values)} and {len(ok)}")
    order = np.argsort(-values, kind="mergesort")
    ordered, hits = values[order], np.cumsum(ok[order])
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold accepts every tied score at once
    counts = np.arange(1, len(values) + 1)[last_of_tie]
    precision = hits[last_of_tie] / counts
    meets = np.flatnonzero(precision >= target - 1e-12)
    if not len(meets):
        return Threshold(math.inf, False, float(precision.max()) if len(precision) else math.nan, 0.0)
    best = meets[-1]
    return Threshold(float(ordered[last_of_tie][best]), True, float(precision[best]),
                     float(counts[best] / len(values)))


def openset_correct(scores: ArrayLike, known: ArrayLike, answer_right: ArrayLike, threshold: float) -> np.ndarray:
    """Per query, 1.0 when a known query is accepted with a right answer or an unknown query is rejected."""
    values = _scores(scores, "scores")
    is_known = np.asarray(known, dtype=bool).ravel()
    right = np.asarray(answer_right, dtype=bool).ravel()
    accepted = values >= threshold
    return np.where(is_known, accepted & right, ~accepted).astype(np.float64)


def max_softmax(logits: ArrayLike) -> np.ndarray:
    """The largest class probability of each row of logits (MSP, Hendrycks and Gimpel 2017)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(shifted.max(axis=1) / shifted.sum(axis=1))


def energy(logits: ArrayLike) -> np.ndarray:
    """``logsumexp`` of each row of logits: the negative free energy (Liu et al. 2020), higher = more known."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1)
    return np.asarray(top + np.log(np.exp(x - top[:, None]).sum(axis=1)))


def cluster_bootstrap_auroc(known: ArrayLike, known_classes: ArrayLike, unknown: ArrayLike,
                            unknown_classes: ArrayLike, *, n_resamples: int, rng: np.random.Generator,
                            others: tuple[tuple[ArrayLike, ArrayLike], ...] = ()) -> np.ndarray:
    """``(1 + len(others), n_resamples)`` AUROCs on resamples of whole classes: each draws the known classes and the
    unknown classes with replacement (each side keeps its number of classes). ``others`` are further (known,
    unknown) score pairs of the same queries, resampled with the same draws, for paired differences."""
    sides = [(_scores(known, "known"), _scores(unknown, "unknown"))]
    sides += [(_scores(k, "known"), _scores(u, "unknown")) for k, u in others]
    known_rows, unknown_rows = _class_rows(known_classes), _class_rows(unknown_classes)
    out = np.full((len(sides), n_resamples), np.nan)
    for b in range(n_resamples):
        pick_k = np.concatenate([known_rows[i] for i in rng.integers(0, len(known_rows), len(known_rows))])
        pick_u = np.concatenate([unknown_rows[i] for i in rng.integers(0, len(unknown_rows), len(unknown_rows))])
        for s, (pos, neg) in enumerate(sides):
            out[s, b] = auroc(pos[pick_k], neg[pick_u])
    return out


def _class_rows(classes: ArrayLike) -> list[np.ndarray]:
    labels = np.asarray(classes).ravel()
    if not len(labels):
        raise ValueError("a class bootstrap needs at least one query on each side")
    return [np.flatnonzero(labels == value) for value in np.unique(labels)]


def draw_unknown(class_sizes: dict[str, int], share: float, seed: int) -> tuple[str, ...]:
    """``round(share * C)`` classes (at least 1, leaving at least 2 known): the classes sorted by size are cut into
    that many consecutive bins and one class is drawn from each, so small and large classes are held out alike.
    One draw for the bench's open-set cells and the service's calibration."""
    classes = sorted(class_sizes, key=lambda c: (class_sizes[c], c))
    if len(classes) < 3:
        raise ValueError(f"an open-set split needs at least 3 classes, got {len(classes)}")
    count = min(len(classes) - 2, max(1, round(share * len(classes))))
    rng = np.random.default_rng(seed)
    bins = np.array_split(np.arange(len(classes)), count)
    return tuple(sorted(classes[int(rng.choice(b))] for b in bins))
