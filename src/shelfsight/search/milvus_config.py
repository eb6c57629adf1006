"""What a :class:`~shelfsight.search.milvus.MilvusIndex` builds and how it talks to the server.

:class:`MilvusIndexConfig` is the index itself (type, metric, build and search parameters);
:class:`MilvusRequestConfig` is how requests are cut and waited for. :func:`parse_options` turns the
keyword options of ``MilvusIndex.lite``/``MilvusIndex.server`` into both, refusing unknown names once,
before any server is touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from shelfsight.errors import ShelfsightError

INDEX_TYPES: tuple[str, ...] = ("FLAT", "IVF_FLAT", "HNSW", "DISKANN", "IVF_SQ8", "HNSW_SQ", "IVF_PQ")
"""Index types this wrapper knows how to parameterise (the last three compress: int8 codes, int8 codes under
an HNSW graph, product-quantised codes)."""
LITE_INDEX_TYPES: tuple[str, ...] = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
"""Dense index types Milvus Lite 3.2.2 builds (its FAISS-backed index factory): checked with describe_index.
It answers IVF_PQ with "reserved for a future phase" and SCANN, IVF_RABITQ, HNSW_PQ and BIN_FLAT with
"unknown index_type"."""
SERVER_INDEX_TYPES: dict[str, tuple[str, ...]] = {"2.3.5": ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")}
"""Of :data:`INDEX_TYPES`, what a Milvus server version builds, measured (``tests/test_compress_server.py``): 2.3.5
(PyPI's ``milvus`` wheel, reporting ``v2.3.5-lite``) built FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW (and SCANN,
AUTOINDEX) on 2,000 x 64-d rows; it answers HNSW_SQ, HNSW_PQ, HNSW_PRQ and IVF_RABITQ with "invalid index type",
and left DISKANN "InProgress" for 5 minutes (its config has ``queryNode.enableDisk: false``). Versions not listed
are asked: the server's own refusal is reported with its version."""
SERVER_LACKS: dict[str, str] = {
    "HNSW_SQ": "it answers \"invalid index type: HNSW_SQ\" (int8 codes under HNSW came in a later Milvus)",
    "DISKANN": "it accepts the request but never builds it (the server's queryNode.enableDisk is false)",
}
_VERSION = re.compile(r"v?(\d+\.\d+\.\d+)")
METRICS: tuple[str, ...] = ("IP", "L2")
CONSISTENCY_LEVELS: tuple[str, ...] = ("Strong", "Session", "Bounded", "Eventually")
MAX_TOPK = 16384
"""Milvus' limit on ``limit`` (top-k) per search request."""
MAX_NQ = 16384
"""Milvus' default limit on query vectors per search request."""
OPEN_OPTIONS: tuple[str, ...] = ("reuse", "overwrite", "attributes")
"""The keyword arguments of ``MilvusIndex`` that say how its collection is opened (not index settings)."""


class MilvusIndexError(ShelfsightError):
    """The Milvus collection or server cannot be used as asked; the message says what to do."""


class UnsupportedIndexError(MilvusIndexError):
    """The server cannot build the requested index type."""


@dataclass(frozen=True)
class MilvusIndexConfig:
    """Index type, metric and their build/search parameters (ignored where a type has no such knob).

    ``index_type`` and ``metric`` are upper-cased; every parameter must be a positive integer, except
    ``nlist=None``: about the square root of the rows, fixed when the index is built (:meth:`sized`).
    """

    index_type: str = "FLAT"
    metric: str = "IP"
    nlist: int | None = 128
    nprobe: int = 16
    m: int = 16
    ef_construction: int = 200
    ef: int = 64
    search_list: int = 100
    pq_m: int = 16
    """IVF_PQ: sub-vectors per item (bytes per item at 8 bits); must divide the dimension."""
    nbits: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_type", str(self.index_type).upper())
        object.__setattr__(self, "metric", str(self.metric).upper())
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.index_type!r}; choose one of {list(INDEX_TYPES)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {list(METRICS)}")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef", "search_list", "pq_m", "nbits"):
            if (name != "nlist" or self.nlist is not None) and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def build_params(self) -> dict[str, int]:
        """What the server builds with; an automatic ``nlist`` not yet sized is left out (any is accepted)."""
        nlist = {"nlist": self.nlist} if self.nlist is not None else {}
        if self.index_type in ("IVF_FLAT", "IVF_SQ8"):
            return nlist
        if self.index_type == "IVF_PQ":
            return {**nlist, "m": self.pq_m, "nbits": self.nbits}
        if self.index_type in ("HNSW", "HNSW_SQ"):
            return {"M": self.m, "efConstruction": self.ef_construction}
        return {}

    def sized(self, rows: int) -> MilvusIndexConfig:
        """This config with an automatic ``nlist`` fixed for ``rows`` rows (about sqrt(rows), at least 1)."""
        return self if self.nlist is not None else replace(self, nlist=max(1, round(math.sqrt(max(rows, 1)))))

    def search_params(self, limit: int) -> dict[str, Any]:
        """Per-request parameters; HNSW's ef and DiskANN's search list must be at least the limit."""
        params: dict[str, int] = {}
        if self.index_type.startswith("IVF_"):
            params = {"nprobe": self.nprobe}
        elif self.index_type.startswith("HNSW"):
            params = {"ef": max(self.ef, limit)}
        elif self.index_type == "DISKANN":
            params = {"search_list": max(self.search_list, limit)}
        return {"metric_type": self.metric, "params": params}


@dataclass(frozen=True)
class MilvusRequestConfig:
    """How requests are cut and waited for: rows per insert, queries per search, the extra hits fetched to
    break ties by position (``tie_margin``), the seconds one request may take (``timeout``) and the seconds to
    wait for an index build and load (``build_timeout``: a server builds in the background, for minutes on a
    large collection), with a progress bar of indexed rows when ``build_progress``.

    ``consistency`` is the level of searches and lookups. ``Strong`` sees every acknowledged write of any
    client, and on a server waits for the next time tick for it (200-285 ms per search call on 2.3.5, measured
    by ``benchmarks/serve_load.py`` and the compression frontier, against 2.5-6 ms with ``Session``, same
    hits); ``Session`` sees this client's own writes at once and other clients' within a tick, without the
    wait: what a service that writes through its own client, or a bench's one-off collection, needs."""

    insert_batch: int = 5000
    query_batch: int = 1024
    tie_margin: int = 8
    timeout: float = 300.0
    build_timeout: float = 300.0
    build_progress: bool = False
    consistency: str = "Strong"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, got {self.consistency!r}")
        if self.insert_batch < 1 or not 1 <= self.query_batch <= MAX_NQ or self.tie_margin < 0:
            raise ValueError(f"need insert_batch >= 1, 1 <= query_batch <= {MAX_NQ}, tie_margin >= 0; got "
                             f"insert_batch={self.insert_batch}, query_batch={self.query_batch}, "
                             f"tie_margin={self.tie_margin}")
        if not (self.timeout > 0 and self.build_timeout > 0):
            raise ValueError(f"timeout and build_timeout must be positive seconds, got {self.timeout}, "
                             f"{self.build_timeout}")


_Config = TypeVar("_Config", MilvusIndexConfig, MilvusRequestConfig)
INDEX_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(MilvusIndexConfig))
REQUEST_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(MilvusRequestConfig))


def parse_options(options: Mapping[str, Any]) -> tuple[MilvusIndexConfig, MilvusRequestConfig, dict[str, Any]]:
    """Split ``MilvusIndex.lite``/``server`` keyword options into the index config, the request config and
    the collection options (:data:`OPEN_OPTIONS`).

    Index settings come loose (``index_type=``, ``nlist=``...) or whole as ``config=``; request settings
    loose (``insert_batch=``...) or as ``requests=``; not both. An unknown name is a ``TypeError`` naming it.
    """
    known = {*INDEX_OPTIONS, *REQUEST_OPTIONS, *OPEN_OPTIONS, "config", "requests"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown MilvusIndex option {unknown[0]!r}; the options are: index settings "
                        f"{', '.join(INDEX_OPTIONS)} (or config=MilvusIndexConfig(...)); request settings "
                        f"{', '.join(REQUEST_OPTIONS)} (or requests=MilvusRequestConfig(...)); "
                        f"{', '.join(OPEN_OPTIONS)}")
    config = _whole_or_loose(options, "config", MilvusIndexConfig, INDEX_OPTIONS)
    requests = _whole_or_loose(options, "requests", MilvusRequestConfig, REQUEST_OPTIONS)
    return config, requests, {name: options[name] for name in OPEN_OPTIONS if name in options}


def _whole_or_loose(options: Mapping[str, Any], key: str, kind: type[_Config], names: tuple[str, ...]) -> _Config:
    loose = {name: options[name] for name in names if name in options}
    whole = options.get(key)
    if whole is None:
        return kind(**loose)
    if not isinstance(whole, kind):
        raise TypeError(f"MilvusIndex option {key}= must be a {kind.__name__}, got {type(whole).__name__}")
    if loose:
        raise TypeError(f"MilvusIndex option {next(iter(loose))!r} given together with {key}=: set it in the "
                        f"{kind.__name__} instead")
    return whole


def check_supported(index_type: str, server_version: str) -> None:
    """Refuse, before anything is created, an index type Milvus Lite or a measured server version cannot build,
    naming the version and the types it has."""
    if server_version.startswith("milvus_lite") and index_type not in LITE_INDEX_TYPES:
        usable = ", ".join(t for t in INDEX_TYPES if t in LITE_INDEX_TYPES)
        raise UnsupportedIndexError(
            f"{server_version} cannot build a {index_type} index; Milvus Lite supports "
            f"{', '.join(LITE_INDEX_TYPES)} (through this wrapper: {usable}). Use one of those, or a Milvus "
            "server for this index type.")
    builds = server_index_types(server_version)
    if builds is not None and index_type not in builds:
        why = SERVER_LACKS.get(index_type, "it was not measured to build it")
        raise UnsupportedIndexError(
            f"Milvus server {server_version} cannot build a {index_type} index: {why}. Measured on this version, it "
            f"builds {', '.join(builds)} (of the types shelfsight parameterises); use one of those (IVF_SQ8 for "
            "int8 codes), or a newer Milvus server.")


def server_index_types(server_version: str) -> tuple[str, ...] | None:
    """The measured index types of a Milvus server version (``v2.3.5-lite`` -> 2.3.5's), None when not measured."""
    match = _VERSION.match(server_version.strip())
    return SERVER_INDEX_TYPES.get(match.group(1)) if match else None


def recorded_params(info: Mapping[str, Any], wanted: Mapping[str, int]) -> dict[str, int]:
    """The build parameters a describe_index answer records (nested under "params" or flat, by server)."""
    nested = info.get("params")
    sources = [nested, info] if isinstance(nested, dict) else [info]
    recorded = {}
    for key in wanted:
        value = next((source[key] for source in sources if source.get(key) is not None), None)
        if value is not None:
            recorded[key] = int(value)
    return recorded


def index_options(index_type: str, params: Mapping[str, int], dim: int) -> dict[str, Any]:
    """A bench config's index parameters as MilvusIndex options. For IVF_PQ ``m`` is the sub-vector count (a
    divisor of the dimension: the largest of 32..1 unless given) and nlist about sqrt(rows) unless given."""
    if index_type.upper() != "IVF_PQ":
        return dict(params)
    options: dict[str, Any] = {name: value for name, value in params.items() if name != "m"}
    options["pq_m"] = params.get("m") or next(m for m in (32, 16, 8, 4, 2, 1) if dim % m == 0)
    if dim % options["pq_m"]:
        raise MilvusIndexError(f"IVF_PQ m={options['pq_m']} does not divide the embedding dimension {dim}: "
                               "choose a divisor (index.params.m)")
    options.setdefault("nlist", None)
    return options
