"""Near-duplicates: pairs of L2-normalised embeddings whose cosine similarity reaches a threshold.

Within one set (a catalogue's own duplicates) or across two (queries against a gallery, for leakage). Two
ways, one answer: exact blocked matrix products for small sets, and a vector index (Milvus Lite by default)
for large ones, searched top-k and widened for the queries whose k-th neighbour still reaches the threshold,
so the result equals a range search whatever k is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shelfsight.search import VectorIndex, open_index

EXACT_LIMIT = 20_000
"""Up to this many gallery items an exact search is cheaper than building an index."""
FIRST_K = 16
MAX_K = 16_384
"""Milvus's largest top-k; a query with more near-duplicates than this is a sign of a wrong threshold."""
BLOCK = 1024


@dataclass(frozen=True)
class Pair:
    """Two items judged duplicates: ``kind`` is ``exact`` (same bytes) or ``near`` (similarity >= threshold)."""

    a: str
    b: str
    similarity: float
    kind: str


def cross_pairs(query_ids: Sequence[str], queries: np.ndarray, gallery_ids: Sequence[str], gallery: np.ndarray,
                threshold: float, *, backend: str = "auto", same_set: bool = False,
                db_path: str | os.PathLike[str] | None = None) -> list[Pair]:
    """Every (query, gallery item) with cosine >= ``threshold``; with ``same_set`` each unordered pair once and
    never an item with itself. ``backend``: ``exact``, ``milvus-lite`` or ``auto`` (exact up to EXACT_LIMIT)."""
    _check_threshold(threshold)
    chosen = backend if backend != "auto" else ("exact" if len(gallery_ids) <= EXACT_LIMIT else "milvus-lite")
    if chosen == "exact":
        found = _exact_pairs(queries, gallery, threshold)
    elif chosen == "milvus-lite":
        found = _index_pairs(query_ids, queries, gallery_ids, gallery, threshold, db_path)
    else:
        raise ValueError(f"unknown near-duplicate backend {backend!r}; choose exact, milvus-lite or auto")
    pairs = []
    for row, col, score in found:
        a, b = query_ids[row], gallery_ids[col]
        if same_set and a >= b:  # the same set searched against itself: each unordered pair once
            continue
        pairs.append(Pair(a, b, float(score), "near"))
    return sorted(pairs, key=lambda p: (-p.similarity, p.a, p.b))


def self_pairs(ids: Sequence[str], vectors: np.ndarray, threshold: float, *, backend: str = "auto",
               db_path: str | os.PathLike[str] | None = None) -> list[Pair]:
    """Near-duplicate pairs within one set, each unordered pair once (``a < b``)."""
    return cross_pairs(ids, vectors, ids, vectors, threshold, backend=backend, same_set=True, db_path=db_path)


def _check_threshold(threshold: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine similarity threshold lies in [-1, 1], got {threshold}")


def _exact_pairs(queries: np.ndarray, gallery: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Blocked products: memory stays at BLOCK x gallery scores."""
    found: list[tuple[int, int, float]] = []
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    for start in range(0, len(q), BLOCK):
        scores = q[start:start + BLOCK] @ g.T
        rows, cols = np.nonzero(scores >= threshold)
        found.extend((start + int(r), int(c), float(scores[r, c])) for r, c in zip(rows, cols, strict=True))
    return found


def _index_pairs(query_ids: Sequence[str], queries: np.ndarray, gallery_ids: Sequence[str], gallery: np.ndarray,
                 threshold: float, db_path: str | os.PathLike[str] | None) -> list[tuple[int, int, float]]:
    """Top-k on a Milvus Lite collection, doubling k for the queries whose k-th hit still reaches it."""
    with tempfile.TemporaryDirectory(prefix="shelfsight-dup-") as folder:
        path = db_path or os.path.join(folder, "duplicates.db")
        index = open_index("milvus-lite", path=path, collection="duplicates", dim=int(gallery.shape[1]),
                           overwrite=True)
        try:
            index.add(list(gallery_ids), np.asarray(gallery, dtype=np.float32))
            return _widening_search(index, np.asarray(queries, dtype=np.float32), len(gallery_ids), threshold)
        finally:
            drop = getattr(index, "drop", None)
            drop() if callable(drop) else index.close()


def _widening_search(index: VectorIndex, queries: np.ndarray, size: int,
                     threshold: float) -> list[tuple[int, int, float]]:
    found: list[tuple[int, int, float]] = []
    pending = np.arange(len(queries))
    k = min(FIRST_K, size)
    while len(pending):
        answer = index.search(queries[pending], k)
        more = []
        for row, query in enumerate(pending):
            hits = [(int(i), float(s)) for i, s in zip(answer.indices[row], answer.scores[row], strict=True)
                    if i >= 0 and s >= threshold]
            if len(hits) == k and k < min(size, MAX_K):
                more.append(query)
                continue
            found.extend((int(query), i, s) for i, s in hits)
        pending = np.array(more, dtype=np.int64)
        k = min(k * 4, size, MAX_K)
    return found
