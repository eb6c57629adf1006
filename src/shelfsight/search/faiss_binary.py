"""Sign codes searched by Hamming distance (FAISS ``IndexBinaryFlat``), with optional float re-ranking.

One bit per dimension (``vector > 0``): 1,280-d float32 (5,120 bytes) becomes 160 bytes, and the Hamming
distance between codes approximates the angle between the vectors. Milvus Lite 3.2.2 refuses
``BINARY_VECTOR`` fields (``BIN_FLAT`` is unknown to it), so binary search goes through FAISS here.

With ``rerank=r`` the ``r * k`` nearest codes are re-scored with the float vectors and the best k kept:
the codes find candidates cheaply, the floats order them. The floats are only read for candidates, so a
deployment keeps them on disk or in a key-value store (``rerank_bytes``), not in the index's memory.
Scores are ``1 - 2 h / d`` (the cosine of the angle a Hamming distance h suggests) without re-ranking,
the float cosine with it; ties are broken by position as in every shelfsight index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shelfsight.search.base import ItemTable, SearchResult, checked_queries, checked_vectors
from shelfsight.search.faiss_compat import uses_numpy_faiss
from shelfsight.search.faiss_topk import stable_top_k

_RERANK_BLOCK = 64


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """``(n, ceil(d / 8))`` uint8: bit j of an item is ``vector[j] > 0``, packed big-endian as FAISS expects."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


class FaissBinaryIndex:
    """Hamming search over sign codes; ``rerank`` > 0 re-scores ``rerank * k`` candidates with the floats."""

    def __init__(self, dim: int | None = None, *, rerank: int = 0) -> None:
        import faiss

        if rerank < 0:
            raise ValueError(f"rerank must be >= 0 (0: no re-ranking), got {rerank}")
        self._faiss: Any = faiss
        self.dim = dim
        self.rerank = rerank
        self._items = ItemTable()
        self._index: Any = None
        self._floats: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._items)

    @uses_numpy_faiss
    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None:
        array = checked_vectors(vectors, ids, self.dim)
        self._items.add(ids, labels, splits)
        if self._index is None:
            self.dim = int(array.shape[1])
            self._index = self._faiss.IndexBinaryFlat(8 * (-(-self.dim // 8)))
        self._index.add(sign_codes(array))
        if self.rerank:
            self._floats.append(array)
            self._matrix = None

    def delete(self, ids: Sequence[str]) -> None:
        self._items.delete(ids)

    def close(self) -> None:
        self._index, self._floats, self._matrix, self._items = None, [], None, ItemTable()

    @property
    def code_bytes(self) -> int:
        """Bytes of one item's code: ``ceil(d / 8)``."""
        return -(-(self.dim or 0) // 8)

    @property
    def rerank_bytes(self) -> int:
        """Float bytes per item read for re-ranking (0 without): kept outside the index in a deployment."""
        return 4 * (self.dim or 0) if self.rerank else 0

    @uses_numpy_faiss
    def index_bytes(self) -> int:
        """The serialized binary index (codes and header): its memory too."""
        return 0 if self._index is None else int(self._faiss.serialize_index_binary(self._index).nbytes)

    @uses_numpy_faiss
    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        queries = checked_queries(vectors, self.dim, k)
        excluded = self._items.excluded_positions(exclude_ids, len(queries))
        allowed = self._items.allowed(label, split)
        depth = k * self.rerank if self.rerank else k
        distances, indices = self.hamming_top_k(queries, depth, allowed, excluded)
        if self.rerank:
            scores, indices = self._rerank(queries, indices, k)
        else:
            scores = np.where(indices >= 0, 1.0 - 2.0 * distances / max(self._bits, 1), -np.inf).astype(np.float32)
        return SearchResult(indices=indices, scores=scores, ids=self._items.result_ids(indices))

    @property
    def _bits(self) -> int:
        return 8 * self.code_bytes

    def hamming_top_k(self, queries: np.ndarray, k: int, allowed: np.ndarray,
                      excluded: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Hamming distances and positions of the k nearest codes, ties by lower position (-1 pads)."""
        codes = sign_codes(queries)

        def search(rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            found_distances, found = self._index.search(codes[rows], depth)
            return -found_distances.astype(np.float32), found

        negative, indices = stable_top_k(search, len(queries), len(self._items.ids), k, allowed, excluded)
        return -negative, indices

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The candidates re-scored with the float vectors: best k by (float score, position)."""
        if self._matrix is None:
            self._matrix = np.concatenate(self._floats) if self._floats else np.zeros((0, self.dim or 0), np.float32)
        safe = np.where(candidates >= 0, candidates, 0)
        floats = np.empty(candidates.shape, dtype=np.float32)
        for start in range(0, len(queries), _RERANK_BLOCK):  # (block, candidates, d) floats at a time
            block = slice(start, start + _RERANK_BLOCK)
            floats[block] = np.einsum("qd,qcd->qc", queries[block], self._matrix[safe[block]])
        floats[candidates < 0] = -np.inf
        order = np.lexsort((np.where(candidates >= 0, candidates, np.iinfo(np.int64).max), -floats), axis=1)[:, :k]
        indices = np.take_along_axis(candidates, order, 1)
        scores = np.take_along_axis(floats, order, 1)
        width = indices.shape[1]
        if width < k:
            indices = np.pad(indices, ((0, 0), (0, k - width)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - width)), constant_values=-np.inf)
        return scores, indices
