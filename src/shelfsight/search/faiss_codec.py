"""Compressed vectors in FAISS: scalar quantisation (int8) and product quantisation behind the VectorIndex seam.

``FaissCodecIndex("SQ8")`` stores one byte per dimension (a per-dimension min/max learnt from the gallery),
``FaissCodecIndex("PQ32")`` 32 bytes per item (32 sub-vectors, each the nearest of 256 learnt centroids);
any FAISS factory string works. The codec is trained on the vectors added (the gallery side, never the
queries) when the first search or :meth:`build` comes, and searched by inner product on the decoded vectors,
so scores approximate cosine similarities. Training, codes and search are FAISS's; this class adds the
shelfsight contract: ids, deletes and filters, ties broken by position (:func:`stable_top_k`), and sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shelfsight.search.base import ItemTable, SearchResult, checked_queries, checked_vectors
from shelfsight.search.faiss_compat import uses_numpy_faiss
from shelfsight.search.faiss_topk import stable_top_k


class FaissCodecIndex:
    """A FAISS index built from a factory string (``SQ8``, ``PQ32``, ``PQ32x8``, ...) with the inner product."""

    def __init__(self, factory: str, dim: int | None = None) -> None:
        import faiss

        self._faiss: Any = faiss
        self.factory = factory
        self.dim = dim
        self._items = ItemTable()
        self._chunks: list[np.ndarray] = []
        self._index: Any = None
        self.fixed_bytes = 0
        """Serialized size of the trained, empty index: what does not grow with the items (codebooks, ranges)."""

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None:
        """Keep the vectors until the codec is trained (on everything added before the first search)."""
        array = checked_vectors(vectors, ids, self.dim)
        self._items.add(ids, labels, splits)
        self.dim = int(array.shape[1])
        if self._index is None:
            self._chunks.append(array)
        else:
            self._add_codes(array)

    @uses_numpy_faiss
    def build(self) -> None:
        """Train the codec on the items added so far and encode them (done once; later adds are encoded)."""
        if self._index is not None or self.dim is None:
            return
        index = self._faiss.index_factory(self.dim, self.factory, self._faiss.METRIC_INNER_PRODUCT)
        training = np.concatenate(self._chunks)
        index.train(training)
        self._index = index
        self.fixed_bytes = self.index_bytes()
        self._chunks = []
        self._add_codes(training)

    @uses_numpy_faiss
    def _add_codes(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def delete(self, ids: Sequence[str]) -> None:
        self._items.delete(ids)

    def close(self) -> None:
        self._index, self._chunks, self._items = None, [], ItemTable()

    @uses_numpy_faiss
    def index_bytes(self) -> int:
        """The serialized index (codes, codebooks, header): for these flat-code layouts, its memory too."""
        return 0 if self._index is None else int(self._faiss.serialize_index(self._index).nbytes)

    @property
    def code_bytes(self) -> int:
        """Bytes of one item's code (``sa_code_size``): the stored representation, without the id."""
        self.build()
        return int(self._index.sa_code_size())

    @uses_numpy_faiss
    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        queries = checked_queries(vectors, self.dim, k)
        excluded = self._items.excluded_positions(exclude_ids, len(queries))
        self.build()
        allowed = self._items.allowed(label, split)

        def search(rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            found_scores, found = self._index.search(queries[rows], depth)
            return found_scores, found

        scores, indices = stable_top_k(search, len(queries), len(self._items.ids), k, allowed, excluded)
        return SearchResult(indices=indices, scores=scores, ids=self._items.result_ids(indices))
