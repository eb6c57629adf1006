"""Exact search with FAISS (``IndexFlatIP``): a second, independent exact reference and a fast CPU backend.

Rows are never moved: a delete or a label/split filter becomes a bitmap selector
(``IDSelectorBitmap`` in ``SearchParameters``), so FAISS row numbers stay the insertion positions
that ``SearchResult.indices`` promises. A few extra neighbours (``tie_margin``) are fetched and
re-ranked by (score, position) so ties are broken by the lower position, as in ExactIndex.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shelfsight.search.base import ItemTable, SearchResult, check_finite
from shelfsight.search.faiss_compat import uses_numpy_faiss


class FaissFlatIndex:
    """In-memory exact inner-product search; on L2-normalised vectors the scores are cosine similarities."""

    def __init__(self, dim: int | None = None, *, tie_margin: int = 8) -> None:
        import faiss

        self._faiss: Any = faiss
        self.dim = dim
        self.tie_margin = tie_margin
        self._index: Any = faiss.IndexFlatIP(dim) if dim else None
        self._items = ItemTable()

    def __len__(self) -> int:
        return len(self._items)

    @uses_numpy_faiss
    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids) or (self.dim and vectors.shape[1] != self.dim):
            expected = f"({len(ids)}, {self.dim or 'D'})"
            raise ValueError(f"expected vectors of shape {expected}, got {vectors.shape}")
        check_finite(vectors, ids)
        self._items.add(ids, labels, splits)
        if self._index is None:
            self.dim = int(vectors.shape[1])
            self._index = self._faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)

    @uses_numpy_faiss
    def delete(self, ids: Sequence[str]) -> None:
        self._items.delete(ids)

    def close(self) -> None:
        self._index = None
        self._items = ItemTable()

    @property
    def code_bytes(self) -> int:
        """Bytes of one stored vector (float32)."""
        return 4 * (self.dim or 0)

    @uses_numpy_faiss
    def index_bytes(self) -> int:
        """The serialized index (the float matrix and a header): its memory too."""
        return 0 if self._index is None else int(self._faiss.serialize_index(self._index).nbytes)

    @uses_numpy_faiss
    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"expected queries as a 2-d array, got shape {queries.shape}")
        check_finite(queries)
        excluded = self._items.excluded_positions(exclude_ids, len(queries))
        if k < 0:
            raise ValueError(f"need k >= 0, got {k}")
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        allowed = self._items.allowed(label, split)
        fetch = min(k + int(any(e >= 0 for e in excluded)) + self.tie_margin, int(allowed.sum()))
        if k > 0 and fetch > 0 and len(queries) > 0:
            found_scores, found = self._search(queries, fetch, allowed)
            for row, position in enumerate(excluded):
                if position >= 0:
                    found[row][found[row] == position] = -1
            found_scores[found < 0] = -np.inf  # FAISS pads with -FLT_MAX; padding sorts last
            order = np.lexsort((found, -found_scores), axis=1)[:, :k]  # score first, then lower position
            width = order.shape[1]
            indices[:, :width] = np.take_along_axis(found, order, 1)
            scores[:, :width] = np.take_along_axis(found_scores, order, 1)
            scores[indices < 0] = -np.inf
        return SearchResult(indices=indices, scores=scores, ids=self._items.result_ids(indices))

    def _search(self, queries: np.ndarray, fetch: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]}, the index holds dim {self.dim}")
        if allowed.all():
            found_scores, found = self._index.search(queries, fetch)
            return found_scores, found
        bitmap = np.packbits(allowed, bitorder="little")  # kept alive for the call: FAISS reads it by pointer
        selector = self._faiss.IDSelectorBitmap(len(allowed), self._faiss.swig_ptr(bitmap))
        params = self._faiss.SearchParameters(sel=selector)
        found_scores, found = self._index.search(queries, fetch, params=params)
        return found_scores, found
