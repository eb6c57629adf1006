"""Nearest-neighbour search behind one protocol, :class:`VectorIndex`, returning a plain :class:`SearchResult`.

Backends: :class:`ExactIndex` (blocked torch matrix products, the reference), :class:`FaissFlatIndex`
(exact, FAISS) and :class:`MilvusIndex` (Milvus Lite on a ``.db`` path, or any Milvus server; FLAT,
IVF_FLAT or HNSW, DISKANN on servers; its settings a :class:`MilvusIndexConfig`). :func:`open_index`
picks one by name; :func:`recall_against_exact` measures an approximate index against the exact answer.
pymilvus and FAISS are imported only when used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shelfsight.search.base import SearchResult, VectorIndex
from shelfsight.search.exact import ExactIndex
from shelfsight.search.faiss_index import FaissFlatIndex
from shelfsight.search.milvus import (
    MilvusIndex,
    MilvusIndexConfig,
    MilvusIndexError,
    MilvusRequestConfig,
    UnsupportedIndexError,
)

BACKENDS = ("exact", "faiss", "milvus-lite", "milvus")

__all__ = [
    "BACKENDS", "ExactIndex", "FaissFlatIndex", "MilvusIndex", "MilvusIndexConfig", "MilvusIndexError",
    "MilvusRequestConfig", "SearchResult", "UnsupportedIndexError", "VectorIndex", "open_index", "recall_against_exact",
]


def open_index(backend: str, **options: Any) -> VectorIndex:
    """An index by backend name.

    ``exact``: ExactIndex(block_size=, device=); ``faiss``: FaissFlatIndex(dim=); ``milvus-lite``:
    MilvusIndex.lite(path=, collection=, dim=, ...); ``milvus``: MilvusIndex.server(uri=, token=,
    collection=, dim=, ...). Options are passed through unchanged (Milvus: the fields of MilvusIndexConfig
    and MilvusRequestConfig, reuse, overwrite, attributes; an unknown one is a TypeError naming it).
    """
    if backend == "exact":
        return ExactIndex(**options)
    if backend == "faiss":
        return FaissFlatIndex(**options)
    if backend == "milvus-lite":
        return MilvusIndex.lite(**options)
    if backend == "milvus":
        options.setdefault("token", "")
        return MilvusIndex.server(**options)
    raise ValueError(f"unknown search backend {backend!r}; choose one of {list(BACKENDS)}")


def recall_against_exact(approx: SearchResult, exact: SearchResult) -> float:
    """Mean over queries of |approx top-k ids & exact top-k ids| / |exact top-k ids|, padding ignored.

    k is the exact result's width. A query whose exact answer is empty (everything filtered out)
    does not count; with no such query at all the recall is undefined and NaN is returned.
    """
    if len(approx.ids) != len(exact.ids):
        raise ValueError(f"{len(approx.ids)} approximate vs {len(exact.ids)} exact queries: not the same queries")
    k = exact.indices.shape[1] if exact.indices.ndim == 2 else 0
    per_query = []
    for found, truth in zip(approx.ids, exact.ids, strict=True):
        wanted = {i for i in truth[:k] if i}
        if wanted:
            per_query.append(len(wanted & {i for i in found[:k] if i}) / len(wanted))
    return float(np.mean(per_query)) if per_query else float("nan")
