"""Exact nearest neighbours by blocked matrix products: the reference every index is checked against.

Queries are processed in blocks, so memory stays at ``block_size x gallery`` scores and never
reaches the full ``Q x N`` matrix; that is what lets metrics run on catalogue-sized sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shelfsight.search.base import SearchResult


class ExactIndex:
    """In-memory exact search (inner product on L2-normalised vectors = cosine = L2 order)."""

    def __init__(self, *, block_size: int = 1024, device: str = "cpu") -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        self._ids: list[str] = []
        self._labels: list[str] = []
        self._splits: list[str] = []
        self._chunks: list[np.ndarray] = []
        self._alive: list[bool] = []
        self._position: dict[str, int] = {}
        self._matrix: torch.Tensor | None = None

    def __len__(self) -> int:
        return sum(self._alive)

    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)} vectors as a 2-d array, got shape {vectors.shape}")
        duplicates = [i for i in ids if i in self._position]
        if duplicates or len(set(ids)) != len(ids):
            raise ValueError(f"duplicate id {(duplicates or list(ids))[0]!r}: ids must be unique in an index")
        for item_id in ids:
            self._position[item_id] = len(self._ids)
            self._ids.append(item_id)
            self._alive.append(True)
        self._labels.extend(labels if labels is not None else [""] * len(ids))
        self._splits.extend(splits if splits is not None else [""] * len(ids))
        self._chunks.append(vectors)
        self._matrix = None

    def delete(self, ids: Sequence[str]) -> None:
        for item_id in ids:
            position = self._position.pop(item_id, None)
            if position is not None:
                self._alive[position] = False

    def close(self) -> None:
        self._matrix = None

    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        queries = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=self.device)
        gallery = self._gallery()
        allowed = torch.as_tensor(self._allowed(label, split), device=self.device)
        k_eff = max(0, min(k, int(allowed.sum())))
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        excluded = [self._position.get(i, -1) if i is not None else -1 for i in exclude_ids or []]
        for start in range(0, len(queries) if k_eff else 0, self.block_size):  # nothing to rank: all padding
            block = queries[start:start + self.block_size] @ gallery.T
            block[:, ~allowed] = -torch.inf
            positions = torch.as_tensor(excluded[start:start + self.block_size], dtype=torch.long)
            rows = torch.nonzero(positions >= 0).flatten()
            block[rows, positions[rows]] = -torch.inf
            top_scores, top_indices = _top_k_stable(block, k_eff)
            indices[start:start + len(block), :k_eff] = top_indices
            scores[start:start + len(block), :k_eff] = top_scores
        indices[~np.isfinite(scores)] = -1
        ids = [[self._ids[i] if i >= 0 else "" for i in row] for row in indices.tolist()]
        return SearchResult(indices=indices, scores=scores, ids=ids)

    def _gallery(self) -> torch.Tensor:
        if self._matrix is None:
            stacked = np.concatenate(self._chunks) if self._chunks else np.zeros((0, 0), dtype=np.float32)
            self._matrix = torch.as_tensor(stacked, device=self.device)
        return self._matrix

    def _allowed(self, label: str | None, split: str | None) -> np.ndarray:
        allowed = np.array(self._alive, dtype=bool)
        if label is not None:
            allowed &= np.array(self._labels, dtype=object) == label
        if split is not None:
            allowed &= np.array(self._splits, dtype=object) == split
        return allowed


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
