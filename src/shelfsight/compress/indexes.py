"""The index behind each compression method, made ready to search, and what it really occupies.

FAISS holds the codes of this package (float, int8, PQ, binary): their size is the serialized index, which
for these flat-code layouts is also their memory. Milvus holds its own index types: the index is built,
checked with ``describe_index`` (type, parameters, every row indexed) and sized by its files on disk.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.compress.methods import CompressConfig, CompressionMethod
from shelfsight.compress.project import NotApplicable
from shelfsight.search import FaissFlatIndex, MilvusIndex, MilvusIndexError, VectorIndex
from shelfsight.search.faiss_binary import FaissBinaryIndex
from shelfsight.search.faiss_codec import FaissCodecIndex
from shelfsight.search.faiss_compat import uses_numpy_faiss
from shelfsight.search.milvus_collection import index_info, unindexed_rows

CodeIndex = FaissFlatIndex | FaissCodecIndex | FaissBinaryIndex
PQ_CENTROIDS = 256
"""Centroids per sub-vector of an 8-bit product quantiser (FAISS's k-means needs at least that many points)."""


@dataclass(frozen=True)
class MilvusPlace:
    """Where the ``milvus:`` methods build: a Milvus Lite ``.db`` path, or a server URI shared with other cells and
    runs, on which ``scope`` (the cell's work folder) makes the collection names this cell's own."""

    path: Path | None = None
    uri: str | None = None
    scope: str = ""

    def collection_name(self, collection: str) -> str:
        """A valid Milvus name (letters, digits, underscores; at most 255 characters); on a server it ends with a
        digest of the scope and the full name, so cells and runs sharing the server never drop each other's
        collections, and a rerun of the same cell replaces what an interrupted run left."""
        name = re.sub(r"[^A-Za-z0-9_]", "_", collection)
        if not self.uri:
            return name[:200]
        digest = hashlib.sha256(f"{self.scope}\n{collection}".encode()).hexdigest()[:12]
        return f"{name[:200]}_{digest}"


def make_index(method: CompressionMethod, dim: int, n_items: int, config: CompressConfig, place: MilvusPlace,
               collection: str, fit: np.ndarray | None = None) -> VectorIndex:
    """An empty index for ``method`` over ``dim``-d vectors (``n_items`` sets the Milvus IVF list count). The
    FAISS codecs train on ``fit`` (projected like the gallery; None: on the gallery added before the build)."""
    if method.codec == "float":
        return FaissFlatIndex(dim)
    if method.codec == "int8":
        return _codec("SQ8", dim, fit)
    if method.codec == "pq":
        if dim % method.pq_m:
            raise NotApplicable(f"{method.name}: {method.pq_m} sub-vectors do not divide {dim} dimensions")
        if n_items < PQ_CENTROIDS:
            raise NotApplicable(f"{method.name}: 8-bit codes learn {PQ_CENTROIDS} centroids per sub-vector, which "
                                f"takes at least {PQ_CENTROIDS} items to fit on; this fit set has {n_items}")
        return _codec(f"PQ{method.pq_m}x8np", dim, fit)  # np: no polysemous training (slow, unused)
    if method.codec == "binary":
        return FaissBinaryIndex(dim, rerank=method.rerank)
    return _milvus(method, dim, n_items, config, place, collection)


class FitApartCodecIndex(FaissCodecIndex):
    """A FAISS codec trained on given vectors (items disjoint from the evaluated queries), then filled with the
    gallery: ``FaissCodecIndex`` trains on the items it holds, which on a leave-one-out protocol are the queries."""

    def __init__(self, factory: str, dim: int, fit: np.ndarray) -> None:
        super().__init__(factory, dim)
        self.fit = np.ascontiguousarray(fit, dtype=np.float32)

    @uses_numpy_faiss
    def build(self) -> None:
        """Train on the fit set, then encode the gallery added so far (later adds are encoded as they come)."""
        if self._index is not None or self.dim is None:
            return
        index = self._faiss.index_factory(self.dim, self.factory, self._faiss.METRIC_INNER_PRODUCT)
        index.train(self.fit)
        self._index = index
        self.fixed_bytes = self.index_bytes()
        gallery, self._chunks = np.concatenate(self._chunks), []
        self._add_codes(gallery)


def _codec(factory: str, dim: int, fit: np.ndarray | None) -> FaissCodecIndex:
    return FaissCodecIndex(factory, dim) if fit is None else FitApartCodecIndex(factory, dim, fit)


def milvus_options(index_type: str, dim: int, n_items: int, config: CompressConfig) -> dict[str, int]:
    """The build and search parameters the bench gives a Milvus index type (``nlist`` the square root of the
    gallery size unless set): public so that a served index (``shelfsight index --compress``) is built alike."""
    nlist = config.nlist or max(1, round(math.sqrt(n_items)))
    options = {"nlist": nlist, "nprobe": min(config.nprobe, nlist), "m": config.hnsw_m, "ef": config.ef}
    if index_type == "IVF_PQ":
        options["pq_m"] = next(m for m in (32, 16, 8, 4, 2, 1) if dim % m == 0)
    return options


def _milvus(method: CompressionMethod, dim: int, n_items: int, config: CompressConfig, place: MilvusPlace,
            collection: str) -> MilvusIndex:
    assert method.milvus is not None, "a milvus: method names its index type"
    # Session consistency: this cell is the collection's only writer; Strong would add the server's time-tick
    # wait (~285 ms on 2.3.5) to every batch-1 query and measure that instead of the index.
    options: dict[str, Any] = {"index_type": method.milvus, "overwrite": True, "consistency": "Session",
                               **milvus_options(method.milvus, dim, n_items, config)}
    name = place.collection_name(collection)
    if place.uri:
        return MilvusIndex.server(place.uri, "", name, dim, **options)
    assert place.path is not None, "a MilvusPlace needs a path or a uri"
    return MilvusIndex.lite(place.path, name, dim, **options)


def prepare(index: VectorIndex) -> None:
    """Train and build now, so build time is measured apart from search: FAISS codecs train on the gallery;
    Milvus flushes, builds, waits for and loads its index (``len`` makes it ready)."""
    if isinstance(index, FaissCodecIndex):
        index.build()
    elif isinstance(index, MilvusIndex):
        len(index)


def sizes(index: VectorIndex, n_items: int) -> dict[str, float]:
    """``bytes_per_item`` (one item's code), ``index_bytes`` and ``memory_bytes`` (NaN where unknown),
    ``disk_bytes`` (what a saved index or Milvus collection occupies) and ``fixed_bytes`` (codebooks)."""
    if isinstance(index, MilvusIndex):
        return _milvus_sizes(index, n_items)
    assert isinstance(index, CodeIndex), f"no sizes for {type(index).__name__}"
    measured = float(index.index_bytes())
    rerank = float(index.rerank_bytes) if isinstance(index, FaissBinaryIndex) else 0.0
    return {"bytes_per_item": float(index.code_bytes), "rerank_bytes_per_item": rerank, "index_bytes": measured,
            "memory_bytes": measured + rerank * n_items, "disk_bytes": measured,
            "fixed_bytes": float(index.fixed_bytes) if isinstance(index, FaissCodecIndex) else 0.0}


def _milvus_sizes(index: MilvusIndex, n_items: int) -> dict[str, float]:
    info = describe(index, n_items)
    nested = info.get("params")
    params: dict[str, Any] = nested if isinstance(nested, dict) else info
    code = {"IVF_PQ": int(params.get("m", 0)) * int(params.get("nbits", 8)) / 8}.get(index.config.index_type,
                                                                                    float(index.dim))
    disk = index.disk_bytes()
    return {"bytes_per_item": float(code), "rerank_bytes_per_item": 0.0,
            "index_bytes": float(disk.index) if disk else math.nan, "memory_bytes": math.nan,
            "disk_bytes": float(disk.total) if disk else math.nan, "fixed_bytes": math.nan}


def describe(index: MilvusIndex, n_items: int) -> dict[str, Any]:
    """``describe_index`` of a ready collection, refused unless it is the type asked for with every row indexed."""
    assert index.client is not None
    info = index_info(index.client, index.collection) or {}
    built, indexed = str(info.get("index_type", "")).upper(), int(info.get("indexed_rows", n_items) or 0)
    if built != index.config.index_type or indexed != n_items or str(info.get("state", "Finished")) != "Finished":
        raise MilvusIndexError(f"{index.where} reports a {built or 'missing'} index with {indexed} of {n_items} rows "
                               f"indexed for {index.collection!r}, not the {index.config.index_type} asked for")
    exact = 0 if index.is_lite else unindexed_rows(index.client, index.collection)
    if exact:
        raise NotApplicable(
            f"{index.where} ({index.server_version}) holds {exact} of {n_items} rows without the "
            f"{built} index and searches them exactly (Milvus 2.3 indexes no segment under "
            "dataCoord.segment.minSegmentNumRowsToEnableIndex rows, 1,024 by default): this row would measure exact "
            f"search, not {built}; score it on a gallery of at least that many items")
    return info
