"""Run one compression method on one gallery and its queries: build it, size it, time it, keep its answer.

Build time runs from the float gallery to a searchable index (PCA fit, projection, codec training, adding,
the Milvus build and load), not counting the connection to Milvus. Throughput includes projecting the queries:
batched (every query in one call) and at batch 1 (the first ``batch1_queries`` queries one call each), the way a
service receives them. PCA and the codecs learn from the side's fit set: the gallery, or items disjoint from the
queries where the gallery holds them (``fitting.py``); Milvus trains on what it indexes, so it applies only where
the gallery is the fit set.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from shelfsight.compress.indexes import MilvusPlace, describe, make_index, prepare, sizes
from shelfsight.compress.methods import CompressConfig, CompressionMethod
from shelfsight.compress.project import NotApplicable, Projection, Projections
from shelfsight.search import MilvusIndex, SearchResult, VectorIndex
from shelfsight.search.faiss_compat import faiss_threads

T = TypeVar("T")


@dataclass(frozen=True)
class Side:
    """One protocol's two sides: the gallery (what is indexed) and the queries, with the id each query must
    never return (leave-one-out protocols) and a key naming the gallery; and the fit set, the items PCA and the
    codecs learn from (None: the gallery itself, which is right when it holds none of the queries)."""

    gallery_ids: list[str]
    gallery: np.ndarray
    queries: np.ndarray
    exclude: list[str | None] | None
    key: bytes
    fit: np.ndarray | None = None
    """Vectors disjoint from the queries to fit on, when the gallery holds the queries (leave-one-out)."""
    fit_key: bytes = b""
    """Names the fit set (fits are shared by key); empty when the gallery is the fit set."""

    @property
    def fit_vectors(self) -> np.ndarray:
        return self.gallery if self.fit is None else self.fit

    @property
    def fit_name(self) -> bytes:
        return self.key if self.fit is None else self.fit_key


@dataclass(frozen=True)
class MethodRun:
    """A method's answer to every query and its costs: sizes, build seconds, queries/s, dimension."""

    method: CompressionMethod
    answer: SearchResult
    costs: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def run_method(method: CompressionMethod, side: Side, *, config: CompressConfig, projections: Projections,
               place: MilvusPlace, collection: str) -> MethodRun:
    """Build, size and search ``method`` (raises ``NotApplicable`` when it cannot apply to this embedding),
    with ``config.threads`` FAISS and BLAS threads (Milvus Lite's indexes are FAISS too, in this process; PCA
    is BLAS)."""
    from threadpoolctl import threadpool_limits

    with faiss_threads(config.threads), threadpool_limits(limits=config.threads or None):
        return _run(method, side, config, projections, place, collection)


def _run(method: CompressionMethod, side: Side, config: CompressConfig, projections: Projections,
         place: MilvusPlace, collection: str) -> MethodRun:
    if method.codec == "milvus" and side.fit is not None:
        raise NotApplicable(f"{method.name}: Milvus trains its index on the items it holds, and this gallery holds "
                            "the evaluated queries (leave-one-out); score it on a query/gallery protocol")
    projection = projections.get(side.fit_name, side.fit_vectors, method.pca, method.whiten)  # once per fit set
    gallery, projecting = _timed(lambda: projection.apply(side.gallery))
    fit, projecting_fit = (None, 0.0) if side.fit is None else _timed(lambda: projection.apply(side.fit_vectors))
    index = make_index(method, gallery.shape[1], len(side.fit_vectors), config, place, collection,
                       fit=fit)  # connected, empty
    try:
        started = time.perf_counter()
        index.add(side.gallery_ids, gallery)
        prepare(index)
        build = projection.fit_seconds + projecting + projecting_fit + time.perf_counter() - started
        costs = {**sizes(index, len(gallery)), "build_seconds": build, "dim": float(gallery.shape[1]),
                 "items": float(len(gallery)),
                 "fixed_bytes_projection": float(projection.parameter_bytes)}
        details = {"index": _describe(index, len(gallery)), "backend": method.backend}
        answer, seconds = _timed(lambda: _search(index, projection, side.queries, config.depth, side.exclude))
        costs["qps_batched"] = len(side.queries) / seconds if seconds > 0 else float("nan")
        costs["qps_batch1"] = _batch1_rate(index, projection, side, config)
    except BaseException:
        with contextlib.suppress(Exception):  # the method's own error is the one to report
            _release(index)
        raise
    _release(index)
    return MethodRun(method, answer, costs, details)


def _search(index: VectorIndex, projection: Projection, queries: np.ndarray, k: int,
            exclude: list[str | None] | None) -> SearchResult:
    return index.search(projection.apply(queries), k, exclude_ids=exclude)


def _batch1_rate(index: VectorIndex, projection: Projection, side: Side, config: CompressConfig) -> float:
    """Queries/s answering the first queries one call each."""
    n = min(config.batch1_queries, len(side.queries))
    started = time.perf_counter()
    for row in range(n):
        _search(index, projection, side.queries[row:row + 1], config.depth,
                None if side.exclude is None else side.exclude[row:row + 1])
    seconds = time.perf_counter() - started
    return n / seconds if seconds > 0 and n else float("nan")


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def _describe(index: VectorIndex, n_items: int) -> dict[str, Any]:
    """What was built, as Milvus's own ``describe_index`` reports it (FAISS indexes: nothing to add)."""
    if not isinstance(index, MilvusIndex):
        return {}
    info = describe(index, n_items)
    found: dict[str, Any] = {key: info[key] for key in ("index_type", "metric_type", "params", "indexed_rows")
                             if key in info}
    engine = f"Milvus Lite ({index.server_version})" if index.is_lite else f"{index.where} ({index.server_version})"
    return {**found, "built_by": engine}


def _release(index: VectorIndex) -> None:
    """Drop a Milvus collection (a cell's are one-off; on a shared server it must not outlive the method), close
    anything else. The connection is closed even when the drop fails."""
    if not isinstance(index, MilvusIndex):
        index.close()
        return
    try:
        index.drop()
    finally:
        index.close()
