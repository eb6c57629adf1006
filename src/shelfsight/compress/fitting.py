"""What a compression learns from: items disjoint from the queries it is scored on.

PCA, the int8 ranges and the PQ codebooks are fitted on data. Fitted on the gallery, they learn the catalogue a
deployment knows and never tomorrow's query photos; but on a leave-one-out protocol (SOP, Cars196, a user
catalogue without splits) the gallery *is* the query set, and a fit on it has seen every evaluated query (a PCA
fitted on 100 items to 64 dimensions nearly spans them). So the fit set is, in order of preference:

- ``gallery``: when the gallery holds none of the queries (photo -> catalogue, query -> gallery protocols);
- ``train split``: the protocol's training items (a class-disjoint protocol declares them: SOP's train split,
  Cars196's classes 1..98), never evaluated;
- ``2-fold cross-fit``: otherwise the queries are split in two by a fixed seeded draw; each half is scored with a
  fit on the gallery less that half (the other half, for a leave-one-out protocol), the whole gallery encoded
  with that fit. Every query is scored once, by a compression that never saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GALLERY = "gallery"
TRAIN_SPLIT = "train split"
CROSS_FIT_FOLDS = 2
CROSS_FIT = f"{CROSS_FIT_FOLDS}-fold cross-fit"
CROSS_FIT_SEED = 0
"""The fold draw is fixed (a compress cell is deterministic) and depends only on the sorted query ids."""


@dataclass(frozen=True)
class Fold:
    """Queries scored with one fit: their rows among the protocol's queries, and the ids fitted on."""

    query_rows: np.ndarray
    fit_ids: tuple[str, ...]


@dataclass(frozen=True)
class FitPlan:
    """How a protocol's compression is fitted (``on``: gallery, train split or cross-fit) and its folds."""

    on: str
    folds: tuple[Fold, ...]

    def describe(self) -> dict[str, object]:
        """For the cell's details: what was fitted on, and per fold how many items fitted and queries scored."""
        return {"on": self.on, "folds": [{"fit_items": len(f.fit_ids), "queries": len(f.query_rows)}
                                         for f in self.folds]}


def fit_plan(query_ids: Sequence[str], gallery_ids: Sequence[str],
             training_ids: Sequence[str] | None = None) -> FitPlan:
    """The fit set of each query: the gallery when it holds no query, else the training items (when given and
    any lies outside the queries), else a cross-fit over the queries."""
    queries = set(query_ids)
    every_row = np.arange(len(query_ids))
    if not queries.intersection(gallery_ids):
        return FitPlan(GALLERY, (Fold(every_row, tuple(gallery_ids)),))
    training = tuple(i for i in training_ids or () if i not in queries)
    if training:
        return FitPlan(TRAIN_SPLIT, (Fold(every_row, training),))
    return FitPlan(CROSS_FIT, cross_fit_folds(query_ids, gallery_ids))


def cross_fit_folds(query_ids: Sequence[str], gallery_ids: Sequence[str],
                    folds: int = CROSS_FIT_FOLDS, seed: int = CROSS_FIT_SEED) -> tuple[Fold, ...]:
    """Queries dealt into ``folds`` balanced folds by a seeded permutation of the sorted ids; each fold fitted on
    the gallery items that are not its own queries."""
    if len(query_ids) < folds:
        raise ValueError(f"a {folds}-fold cross-fit needs at least {folds} queries, got {len(query_ids)}")
    ordered = sorted(query_ids)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    fold_of = {ordered[position]: rank % folds for rank, position in enumerate(permutation)}
    assigned = np.array([fold_of[i] for i in query_ids])
    result = []
    for fold in range(folds):
        rows = np.flatnonzero(assigned == fold)
        own = {query_ids[int(row)] for row in rows}
        result.append(Fold(rows, tuple(i for i in gallery_ids if i not in own)))
    return tuple(result)
