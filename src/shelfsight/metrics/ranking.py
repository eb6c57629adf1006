"""Full-ranking metrics from the rank of each relevant item: AP, MAP@R and R-precision with no sort of a row.

AP needs only where each relevant item lands in the ranking, and that rank is one plus the number of gallery
items scored above it: a count, not a sort of the N scores. ``RelevantRanks`` takes the similarity matrix
block by block (the same blocks that give the exact top-K, so one ``Q x N`` product serves both) and keeps
three sums per query, so memory stays at one block and never reaches ``Q x N``.

Conventions, those of :mod:`shelfsight.metrics.retrieval`: higher scores rank first and ties rank the lower
gallery index first (as ``ExactIndex``); with ``exclude_self`` query i is gallery item i and is dropped from
its own ranking; with groups the gallery items of the query's own group are dropped too; a dropped item is
neither ranked nor relevant; a query with no relevant item scores NaN.

Per row, only the items scoring at least the row's lowest relevant score can rank above a relevant item (the
candidates). Rows with at most ``COUNT_LIMIT`` relevant items count the candidates above each of them; rows
with more sort their candidates (a dense class such as Fashion-MNIST's 6,000 items, where counting would cost
R x N): both give the exact rank under the tie rule above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shelfsight.metrics.retrieval import _count_from_codes, _per_query, encode_groups, encode_labels

__all__ = ["COUNT_LIMIT", "RelevantRanks", "full_ranking_average_precision"]

COUNT_LIMIT = 64
"""Rows with more relevant items than this are ranked by sorting their candidates instead of counting: counting
costs ``R x C`` comparisons, a sort about ``C log C`` (C: the row's candidates)."""


def _members(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gallery positions sorted by code (ascending positions within a code), and where each code ``0..size-1``
    starts and ends: code c holds ``order[offsets[c]:offsets[c + 1]]`` (``-1``, no code, holds nothing)."""
    order = np.argsort(codes, kind="stable")
    return order, np.searchsorted(codes[order], np.arange(size + 1))


class RelevantRanks:
    """Accumulates, block by block of similarities, each query's AP, MAP@R and R-precision over the full ranking.

    Feed every query row exactly once with :meth:`add` (blocks in any order, each ``(B, N)`` scores of queries
    ``start..start+B`` against the whole gallery: raw, or with the dropped items already at ``-inf`` as
    ``ExactIndex.search`` hands its blocks to ``on_block``; the drop rules are applied here either way); then
    read :meth:`average_precision`, :meth:`map_at_r` and :meth:`r_precision`.
    """

    def __init__(self, query_labels: np.ndarray | Sequence[object], gallery_labels: np.ndarray | Sequence[object], *,
                 exclude_self: bool, query_groups: np.ndarray | Sequence[object] | None = None,
                 gallery_groups: np.ndarray | Sequence[object] | None = None) -> None:
        self.query_codes, self.gallery_codes = encode_labels(query_labels, gallery_labels)
        self.groups = encode_groups(query_groups, gallery_groups, len(self.query_codes), len(self.gallery_codes))
        self.exclude_self = exclude_self
        self.n_relevant = _count_from_codes(self.query_codes, self.gallery_codes, same_set=exclude_self,
                                            groups=self.groups)
        labels = int(max(self.query_codes.max(initial=-1), self.gallery_codes.max(initial=-1))) + 1
        self._by_label = _members(self.gallery_codes, labels)
        self._by_group = None if self.groups is None else _members(
            self.groups[1], int(max(self.groups[0].max(initial=-1), self.groups[1].max(initial=-1))) + 1)
        n = len(self.query_codes)
        self._ap, self._map_r, self._within_r = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        self._seen = np.zeros(n, dtype=bool)

    def dropped(self, query: int) -> np.ndarray:
        """Gallery positions left out of query ``query``'s ranking (itself, its own group), ascending."""
        own = np.zeros(0, dtype=np.int64)
        if self._by_group is not None and self.groups is not None and (group := self.groups[0][query]) >= 0:
            order, offsets = self._by_group
            own = order[offsets[group]:offsets[group + 1]]
        if self.exclude_self:
            own = np.union1d(own, [query])
        return own.astype(np.int64)

    def relevant(self, query: int, dropped: np.ndarray) -> np.ndarray:
        """Gallery positions relevant to ``query`` (its label, not dropped), ascending."""
        code = self.query_codes[query]
        order, offsets = self._by_label
        same = order[offsets[code]:offsets[code + 1]]
        return np.setdiff1d(same, dropped, assume_unique=True) if len(dropped) else same

    def add(self, start: int, scores: np.ndarray) -> None:
        """Rank the relevant items of queries ``start..start+len(scores)`` in this block of raw scores."""
        block = np.asarray(scores)
        if block.ndim != 2 or block.shape[1] != len(self.gallery_codes) or start + len(block) > len(self._seen):
            raise ValueError(f"expected a (B, {len(self.gallery_codes)}) block of query rows within "
                             f"{len(self._seen)} queries, got shape {block.shape} at row {start}")
        if self._seen[start:start + len(block)].any():
            raise ValueError(f"query rows {start}..{start + len(block) - 1} were already ranked")
        rows: list[np.ndarray] = []
        ranks: list[np.ndarray] = []
        hits: list[np.ndarray] = []
        for offset, row in enumerate(block):
            query = start + offset
            dropped = self.dropped(query)
            relevant = self.relevant(query, dropped)
            if len(relevant) != self.n_relevant[query]:
                raise AssertionError(f"query {query}: {len(relevant)} relevant items, counted {self.n_relevant[query]}")
            if len(relevant):
                ranks.append(relevant_ranks(row, relevant, dropped))
                rows.append(np.full(len(relevant), offset))
                hits.append(np.arange(1, len(relevant) + 1))
        self._seen[start:start + len(block)] = True
        if ranks:
            self._accumulate(start, len(block), np.concatenate(rows), np.concatenate(ranks), np.concatenate(hits))

    def _accumulate(self, start: int, size: int, rows: np.ndarray, ranks: np.ndarray, hits: np.ndarray) -> None:
        """Per row, P@rank summed over its relevant ranks in rank order (``hits``: 1, 2, ... within the row), as
        a sorted ranking's float sums are."""
        precision = hits / ranks
        within = ranks <= self.n_relevant[start + rows]
        stop = start + size
        self._ap[start:stop] = np.bincount(rows, weights=precision, minlength=size)
        self._map_r[start:stop] = np.bincount(rows, weights=np.where(within, precision, 0.0), minlength=size)
        self._within_r[start:stop] = np.bincount(rows, weights=within, minlength=size).astype(np.int64)

    def _complete(self) -> None:
        if not self._seen.all():
            raise ValueError(f"{int((~self._seen).sum())} query rows were never ranked: feed every block")

    def average_precision(self) -> np.ndarray:
        """``(Q,)`` AP over the full ranking, NaN where nothing is relevant."""
        self._complete()
        return _per_query(self._ap, self.n_relevant, self.n_relevant)

    def map_at_r(self) -> np.ndarray:
        """``(Q,)`` MAP@R: P@rank summed over the relevant items within the first R ranks, over R."""
        self._complete()
        return _per_query(self._map_r, self.n_relevant, self.n_relevant)

    def r_precision(self) -> np.ndarray:
        """``(Q,)`` R-precision: the relevant share of the first R ranks."""
        self._complete()
        return _per_query(self._within_r, self.n_relevant, self.n_relevant)


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Ascending 1-based ranks of the ``relevant`` positions in one row of raw ``scores``, the ``dropped``
    positions left out; ties rank the lower position first."""
    targets = scores[relevant]
    floor = targets.min()
    if len(relevant) > COUNT_LIMIT:
        return _ranks_by_sort(scores, relevant, dropped, floor)
    candidates = scores[scores >= floor]  # nothing below the lowest relevant score can rank above one
    above = np.count_nonzero(candidates > targets[:, None], axis=1)
    tied = np.count_nonzero(candidates == targets[:, None], axis=1) > 1  # another item has exactly this score
    for j in np.flatnonzero(tied):
        above[j] += np.count_nonzero(scores[:relevant[j]] == targets[j])
    if len(dropped):
        left_out = scores[dropped]
        above -= np.count_nonzero((left_out > targets[:, None]) | ((left_out == targets[:, None])
                                                                     & (dropped < relevant[:, None])), axis=1)
    return np.sort(above + 1)


def _ranks_by_sort(scores: np.ndarray, relevant: np.ndarray, dropped: np.ndarray, floor: float) -> np.ndarray:
    """The same ranks from a stable sort of the row's candidates (ascending positions: ties keep the lower)."""
    keep = scores >= floor
    keep[dropped] = False
    candidates = np.flatnonzero(keep)
    order = np.argsort(-scores[candidates], kind="stable")
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    return np.sort(position[np.searchsorted(candidates, relevant)] + 1)


def full_ranking_average_precision(query_vectors: np.ndarray, gallery_vectors: np.ndarray,
                                   query_labels: np.ndarray | Sequence[object],
                                   gallery_labels: np.ndarray | Sequence[object], *, exclude_self: bool,
                                   block_size: int = 512, query_groups: np.ndarray | Sequence[object] | None = None,
                                   gallery_groups: np.ndarray | Sequence[object] | None = None) -> np.ndarray:
    """``(Q,)`` exact AP over the full gallery ranking (inner product, higher first), NaN where nothing is relevant.

    Queries are scored in blocks, so memory stays at about ``block_size x N`` and never reaches ``Q x N``;
    each relevant item's rank is counted (see the module). Ties rank the lower gallery index first, as
    ``ExactIndex`` does. ``exclude_self`` is the same-set protocol: query i is gallery item i and is dropped
    from its own ranking; with groups, so are the gallery items of the query's own group. Where an exact
    top-K search runs anyway, feed its blocks to :class:`RelevantRanks` instead of computing them twice.
    """
    queries = np.asarray(query_vectors, dtype=np.float32)
    gallery = np.asarray(gallery_vectors, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected (Q, d) and (N, d) vectors, got {queries.shape} and {gallery.shape}")
    ranking = RelevantRanks(query_labels, gallery_labels, exclude_self=exclude_self, query_groups=query_groups,
                            gallery_groups=gallery_groups)
    if len(queries) != len(ranking.query_codes) or len(gallery) != len(ranking.gallery_codes):
        raise ValueError("need one label per vector")
    for start in range(0, len(queries), block_size):
        ranking.add(start, queries[start:start + block_size] @ gallery.T)
    return ranking.average_precision()
