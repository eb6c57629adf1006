"""Exact nearest neighbours by blocked matrix products: the reference every index is checked against.

Queries are processed in blocks, so memory stays at ``block_size x gallery`` scores and never
reaches the full ``Q x N`` matrix; that is what lets metrics run on catalogue-sized sets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch

from shelfsight.search.base import ItemTable, SearchResult, check_finite


class ExactIndex:
    """In-memory exact search (inner product on L2-normalised vectors = cosine = L2 order)."""

    def __init__(self, *, block_size: int = 1024, device: str = "cpu") -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        self._items = ItemTable()
        self._chunks: list[np.ndarray] = []
        self._matrix: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)} vectors as a 2-d array, got shape {vectors.shape}")
        check_finite(vectors, ids)
        self._items.add(ids, labels, splits)
        self._chunks.append(vectors)
        self._matrix = None

    def delete(self, ids: Sequence[str]) -> None:
        self._items.delete(ids)

    def close(self) -> None:
        self._matrix = None

    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | Collection[str] | None] | None = None,
               on_block: Callable[[int, np.ndarray], None] | None = None) -> SearchResult:
        """The protocol's search; ``exclude_ids[q]`` may also be a set of ids never returned for query q (its
        own group's photos, itself included), so the top k are k items that may be returned.

        ``on_block(start, scores)`` sees each block of scores (queries ``start..``, every gallery item, the
        excluded and filtered ones at ``-inf``) before its top k is taken: a caller that needs more of the
        ranking than the top k (full-ranking AP) reads the same product instead of computing it again."""
        array = np.asarray(vectors, dtype=np.float32)
        check_finite(array)
        queries = torch.as_tensor(array, device=self.device)
        gallery = self._gallery()
        allowed = torch.as_tensor(self._items.allowed(label, split), device=self.device)
        k_eff = max(0, min(k, int(allowed.sum())))
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows, positions = self._excluded_pairs(exclude_ids, len(queries))
        for start in range(0, len(queries) if k_eff else 0, self.block_size):  # nothing to rank: all padding
            block = queries[start:start + self.block_size] @ gallery.T
            block[:, ~allowed] = -torch.inf
            first, last = np.searchsorted(rows, [start, start + len(block)])
            block[torch.as_tensor(rows[first:last] - start), torch.as_tensor(positions[first:last])] = -torch.inf
            if on_block is not None:
                on_block(start, block.cpu().numpy())
            top_scores, top_indices = _top_k_stable(block, k_eff)
            indices[start:start + len(block), :k_eff] = top_indices
            scores[start:start + len(block), :k_eff] = top_scores
        indices[~np.isfinite(scores)] = -1
        return SearchResult(indices=indices, scores=scores, ids=self._items.result_ids(indices))

    def _excluded_pairs(self, exclude_ids: Sequence[str | Collection[str] | None] | None,
                        n_queries: int) -> tuple[np.ndarray, np.ndarray]:
        """(query row, gallery position) of every item never to return, by row; unknown ids are ignored."""
        wanted = list(exclude_ids) if exclude_ids is not None else [None] * n_queries
        if len(wanted) != n_queries:
            raise ValueError(f"need one exclude entry per query; got {len(wanted)} for {n_queries} queries")
        pairs = [(row, position) for row, entry in enumerate(wanted)
                 for item_id in ((entry,) if isinstance(entry, str) else entry or ())
                 if (position := self._items.position.get(item_id)) is not None]
        array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        return array[:, 0], array[:, 1]

    def _gallery(self) -> torch.Tensor:
        if self._matrix is None:
            # one chunk (a protocol's gallery) is used as it is: no second copy of the vectors
            stacked = (self._chunks[0] if len(self._chunks) == 1 else np.concatenate(self._chunks)) \
                if self._chunks else np.zeros((0, 0), dtype=np.float32)
            self._matrix = torch.as_tensor(stacked, device=self.device)
        return self._matrix


def _top_k_stable(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row, ties broken by the lower column (torch.topk alone gives no such guarantee).

    A margin of extra candidates is re-sorted stably; rows whose tie at the k-th score runs past
    the margin (many identical vectors: duplicate product photos) are sorted in full.
    """
    if k == 0:
        return np.zeros((len(scores), 0), np.float32), np.zeros((len(scores), 0), np.int64)
    margin = min(scores.shape[1], k + 8)
    values, columns = torch.topk(scores, margin, dim=1)
    values_np, columns_np = values.cpu().numpy(), columns.cpu().numpy()
    order = np.lexsort((columns_np, -values_np), axis=1)
    values_np, columns_np = np.take_along_axis(values_np, order, 1), np.take_along_axis(columns_np, order, 1)
    if margin < scores.shape[1]:
        for row in np.flatnonzero(values_np[:, -1] == values_np[:, k - 1]):
            full = torch.sort(-scores[row], stable=True)
            values_np[row], columns_np[row] = -full.values[:margin].cpu().numpy(), full.indices[:margin].cpu().numpy()
    return values_np[:, :k], columns_np[:, :k]
