"""Milvus as a :class:`~shelfsight.search.base.VectorIndex`: Milvus Lite on a local ``.db`` file or any server.

One code path for both, through ``pymilvus.MilvusClient``; only how the client is made differs
(:meth:`MilvusIndex.lite` / :meth:`MilvusIndex.server`). What this module takes care of, because
getting it wrong makes recall silently wrong rather than failing:

- **Ready before search.** After adding, the first search flushes, creates the index if there is
  none (after the bulk insert, so Milvus Lite builds it synchronously for every segment), waits
  until the server reports it built and loads the collection; reads use Strong consistency.
- **Build parameters reach the server.** pymilvus 3 flattens ``params={"nlist": ...}`` into
  top-level keys, which Milvus Lite 3.2 ignores (its IVF silently used nlist=128). The parameters
  are sent nested under ``"params"`` (the long-standing wire format every server reads) and
  checked back with ``describe_index``.
- **Expressions are escaped here.** pymilvus's ``delete(ids=...)``/``get(ids=...)`` and its query
  iterator paste string keys between quotes unescaped; ids, labels and splits with quotes would
  break (or widen) the expression, so every filter is built by :func:`quote`.
- **Attributes.** ``attributes=True`` adds a JSON field for per-item data the search itself does not
  need (image path, metadata); :meth:`MilvusIndex.get` reads it back by id. Reopened collections
  report whether they have it (``has_attributes``).
- **Metric.** Inner product by default: on L2-normalised vectors it *is* the cosine similarity,
  so scores are comparable with :class:`~shelfsight.search.exact.ExactIndex` as they are. ``"L2"``
  is offered too (same order; score ``1 - d/2``) but Milvus Lite computes brute-force L2 (FLAT
  index, unindexed data) by broadcasting ``queries x gallery x dim``: 10 queries on 100,000
  512-d vectors took 6 s and 100 ran out of 24 GB, so Lite L2 searches are cut into small batches.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shelfsight.errors import ShelfsightError
from shelfsight.search.base import SearchResult, check_finite
from shelfsight.search.faiss_compat import uses_numpy_faiss

if TYPE_CHECKING:
    from pymilvus import MilvusClient

Metric = Literal["IP", "L2"]
INDEX_TYPES: tuple[str, ...] = ("FLAT", "IVF_FLAT", "HNSW", "DISKANN")
"""Index types this wrapper knows how to parameterise."""
LITE_INDEX_TYPES: tuple[str, ...] = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
"""Dense index types Milvus Lite 3.2 builds (its FAISS-backed index factory; IVF_PQ is reserved)."""
METRICS: tuple[str, ...] = ("IP", "L2")
MAX_TOPK = 16384
"""Milvus' limit on ``limit`` (top-k) per search request."""
MAX_NQ = 16384
"""Milvus' default limit on query vectors per search request."""
ID_MAX_LENGTH = 1024
LABEL_MAX_LENGTH = 1024
SPLIT_MAX_LENGTH = 256
VECTOR_FIELD = "vector"
ATTRIBUTES_FIELD = "attributes"
FIELDS = ("id", VECTOR_FIELD, "label", "split", "position")
_LITE_L2_QUERY_BYTES = 256 * 1024 * 1024  # Lite's brute-force L2 allocates queries x rows x dim floats
_SCAN_WINDOW = 16384
_DELETE_BATCH = 1000
_GET_BATCH = 1000


class MilvusIndexError(ShelfsightError):
    """The Milvus collection or server cannot be used as asked; the message says what to do."""


class UnsupportedIndexError(MilvusIndexError):
    """The server cannot build the requested index type."""


@dataclass(frozen=True)
class IndexConfig:
    """Index type, metric and their build/search parameters (ignored where a type has no such knob)."""

    index_type: str = "FLAT"
    metric: str = "IP"
    nlist: int = 128
    nprobe: int = 16
    m: int = 16
    ef_construction: int = 200
    ef: int = 64
    search_list: int = 100

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.index_type!r}; choose one of {list(INDEX_TYPES)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {list(METRICS)}")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef", "search_list"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def build_params(self) -> dict[str, int]:
        if self.index_type == "IVF_FLAT":
            return {"nlist": self.nlist}
        if self.index_type == "HNSW":
            return {"M": self.m, "efConstruction": self.ef_construction}
        return {}

    def search_params(self, limit: int) -> dict[str, Any]:
        """Per-request parameters; HNSW's ef and DiskANN's search list must be at least the limit."""
        params: dict[str, int] = {}
        if self.index_type == "IVF_FLAT":
            params = {"nprobe": self.nprobe}
        elif self.index_type == "HNSW":
            params = {"ef": max(self.ef, limit)}
        elif self.index_type == "DISKANN":
            params = {"search_list": max(self.search_list, limit)}
        return {"metric_type": self.metric, "params": params}


class MilvusIndex:
    """A Milvus collection (``id``, ``vector``, ``label``, ``split``, ``position``) behind the VectorIndex protocol.

    ``position`` is the insertion order, so results carry the same ``indices`` as ExactIndex fed
    the same items in the same order. The set of ids is mirrored in memory (read back on reuse)
    to refuse duplicate ids as ExactIndex does; one writer per collection is assumed. Not thread-safe:
    concurrent callers serialise their calls (as ``shelfsight.serve`` does).
    """

    @uses_numpy_faiss
    def __init__(self, client: MilvusClient, collection: str, dim: int, *, index_type: str = "FLAT",
                 metric: Metric = "IP", nlist: int = 128, nprobe: int = 16, m: int = 16,
                 ef_construction: int = 200, ef: int = 64, search_list: int = 100, reuse: bool = False,
                 overwrite: bool = False, insert_batch: int = 5000, query_batch: int = 1024,
                 tie_margin: int = 8, timeout: float = 300.0, where: str = "", lite_key: str | None = None,
                 attributes: bool = False) -> None:
        if reuse and overwrite:
            raise ValueError("reuse=True and overwrite=True contradict each other: choose one")
        if dim < 1 or insert_batch < 1 or not 1 <= query_batch <= MAX_NQ or tie_margin < 0:
            raise ValueError(f"need dim >= 1, insert_batch >= 1, 1 <= query_batch <= {MAX_NQ}, tie_margin >= 0")
        self.config = IndexConfig(index_type.upper(), metric.upper(), nlist, nprobe, m, ef_construction, ef,
                                  search_list)
        self.client: MilvusClient | None = client
        self.collection = collection
        self.dim = int(dim)
        self.insert_batch = insert_batch
        self.query_batch = query_batch
        self.tie_margin = tie_margin
        self.timeout = timeout
        self.where = where or "the Milvus server"
        self._lite_key = lite_key
        self._ids: set[str] = set()
        self._next_position = 0
        self._ready = False
        self._dirty = False
        self.has_attributes = attributes
        """Whether rows carry the JSON ``attributes`` field (read from the schema when a collection is reused)."""
        self.server_version = str(client.get_server_version())
        self.is_lite = self.server_version.startswith("milvus_lite")
        self._check_supported(self.config.index_type)
        self._open(reuse=reuse, overwrite=overwrite)

    # ── construction ──────────────────────────────────────────────────────────────────────────

    @classmethod
    def lite(cls, path: str | os.PathLike[str], collection: str, dim: int, **options: Any) -> MilvusIndex:
        """Milvus Lite on a local ``.db`` path (a folder Milvus Lite creates; the parent is created here)."""
        target = Path(os.path.abspath(os.fspath(path)))
        if target.suffix != ".db":
            raise ValueError(f"a Milvus Lite database path must end in .db, got {str(target)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        from pymilvus import MilvusClient

        key = str(target)
        _acquire_lite(key)
        client = None
        try:
            client = MilvusClient(key)
            return cls(client, collection, dim, where=f"Milvus Lite database {key}", lite_key=key, **options)
        except BaseException:
            if client is not None:
                client.close()
            _release_lite(key)
            raise

    @classmethod
    def server(cls, uri: str, token: str, collection: str, dim: int, **options: Any) -> MilvusIndex:
        """Any Milvus server (or ``milvus-lite server``) by URI, e.g. ``http://127.0.0.1:19530``; token may be ""."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri, token=token, timeout=options.get("timeout", 300.0))
        try:
            return cls(client, collection, dim, where=f"Milvus server {uri}", **options)
        except BaseException:
            client.close()
            raise

    def _check_supported(self, index_type: str) -> None:
        if self.is_lite and index_type not in LITE_INDEX_TYPES:
            usable = ", ".join(t for t in INDEX_TYPES if t in LITE_INDEX_TYPES)
            raise UnsupportedIndexError(
                f"{self.server_version} cannot build a {index_type} index; Milvus Lite supports "
                f"{', '.join(LITE_INDEX_TYPES)} (through this wrapper: {usable}). Use one of those, or a Milvus "
                "server for this index type.")

    def _open(self, *, reuse: bool, overwrite: bool) -> None:
        client = self._client()
        if client.has_collection(self.collection):
            if overwrite:
                client.drop_collection(self.collection)
            elif not reuse:
                raise MilvusIndexError(
                    f"collection {self.collection!r} already exists in {self.where}: pass reuse=True to open it "
                    "or overwrite=True to replace it")
            else:
                self._check_existing_schema()
                self._check_existing_index()
                self._ensure_ready()
                self._read_back_ids()
                return
        client.create_collection(self.collection, schema=self._schema(), consistency_level="Strong")

    def _schema(self) -> Any:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_LENGTH)
        schema.add_field("split", DataType.VARCHAR, max_length=SPLIT_MAX_LENGTH)
        schema.add_field("position", DataType.INT64)
        if self.has_attributes:
            schema.add_field(ATTRIBUTES_FIELD, DataType.JSON)
        return schema

    def _check_existing_schema(self) -> None:
        fields = {f["name"]: f for f in self._client().describe_collection(self.collection)["fields"]}
        missing = [name for name in FIELDS if name not in fields]
        if missing:
            raise MilvusIndexError(
                f"collection {self.collection!r} in {self.where} lacks field(s) {missing}: it was not written by "
                "shelfsight; choose another collection name or pass overwrite=True")
        self.has_attributes = ATTRIBUTES_FIELD in fields
        stored = int(fields[VECTOR_FIELD].get("params", {}).get("dim", -1))
        if stored != self.dim:
            raise MilvusIndexError(
                f"collection {self.collection!r} in {self.where} holds {stored}-d vectors, not {self.dim}-d: open it "
                f"with dim={stored}, use another collection name, or pass overwrite=True to replace it")

    def _check_existing_index(self) -> None:
        info = self._index_info()
        if info is None:
            return
        stored_type, stored_metric = str(info.get("index_type", "")).upper(), str(info.get("metric_type", "")).upper()
        stored_params = _recorded_params(info, self.config.build_params())
        wanted = (self.config.index_type, self.config.metric, self.config.build_params())
        if (stored_type, stored_metric, stored_params) != wanted:
            raise MilvusIndexError(
                f"collection {self.collection!r} in {self.where} has a {stored_type}/{stored_metric} index "
                f"{stored_params}, not the {wanted[0]}/{wanted[1]} {wanted[2]} asked for: open it with those "
                "settings or pass overwrite=True to rebuild")

    def _read_back_ids(self) -> None:
        """Mirror the stored ids and the next free position, windowed by position (keys need no quoting)."""
        for item_id, position in self._scan_rows():
            self._ids.add(item_id)
            self._next_position = max(self._next_position, position + 1)

    def _scan_rows(self) -> Iterator[tuple[str, int]]:
        remaining, start, width = self._count(""), 0, _SCAN_WINDOW
        while remaining > 0:
            if start >= 2**62:
                raise MilvusIndexError(f"collection {self.collection!r}: row count and positions disagree")
            window = f"position >= {start} and position < {start + width}"
            found = self._count(window)
            if found == 0:
                start, width = start + width, width * 2  # gallop over a gap left by deletes
                continue
            if found > _SCAN_WINDOW:
                width //= 2
                continue
            rows = self._client().query(self.collection, filter=window, output_fields=["id", "position"],
                                        consistency_level="Strong")
            for row in rows:
                yield str(row["id"]), int(row["position"])
            remaining -= len(rows)
            start, width = start + width, _SCAN_WINDOW

    # ── the protocol ──────────────────────────────────────────────────────────────────────────

    @uses_numpy_faiss
    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None, attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert new items; ``attributes`` (one JSON object per item) needs a collection made with attributes=True."""
        ids = [str(i) for i in ids]
        vectors = self._check_vectors(vectors, len(ids), what="vectors", ids=ids)
        labels_ = _column(labels, len(ids), "labels", LABEL_MAX_LENGTH)
        splits_ = _column(splits, len(ids), "splits", SPLIT_MAX_LENGTH)
        extra = self._attribute_column(attributes, len(ids))
        self._check_new_ids(ids)
        client = self._client()
        for start in range(0, len(ids), self.insert_batch):
            stop = min(start + self.insert_batch, len(ids))
            rows = [{"id": ids[i], VECTOR_FIELD: vectors[i], "label": labels_[i], "split": splits_[i],
                     "position": self._next_position + i - start} for i in range(start, stop)]
            if extra is not None:
                for row, values in zip(rows, extra[start:stop], strict=True):
                    row[ATTRIBUTES_FIELD] = values
            self._ready, self._dirty = False, True
            client.insert(self.collection, rows)
            self._ids.update(ids[start:stop])  # batch by batch: a failure leaves the mirror true to the server
            self._next_position += stop - start

    @uses_numpy_faiss
    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        queries = self._check_vectors(vectors, None, what="queries", unit=False)
        excluded = list(exclude_ids) if exclude_ids is not None else [None] * len(queries)
        if len(excluded) != len(queries):
            raise ValueError(f"exclude_ids has {len(excluded)} entries for {len(queries)} queries")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        extra = int(any(e is not None for e in excluded))
        if k + extra > MAX_TOPK:
            raise ValueError(f"k={k} is above Milvus' top-k limit of {MAX_TOPK - extra} for this request")
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = [[""] * k for _ in range(len(queries))]
        if k == 0 or len(queries) == 0:
            return SearchResult(indices=indices, scores=scores, ids=ids)
        self._ensure_ready()
        limit = min(k + extra + self.tie_margin, MAX_TOPK)
        expr = filter_expression(label=label, split=split)
        batch = self._query_batch_size()
        for start in range(0, len(queries), batch):
            block = queries[start:start + batch]
            hits = self._client().search(
                self.collection, data=list(block), limit=limit, filter=expr, output_fields=["position"],
                search_params=self.config.search_params(limit), anns_field=VECTOR_FIELD, consistency_level="Strong")
            for row, query_hits in enumerate(hits):
                q = start + row
                best = self._rank(query_hits, excluded[q], k)
                for j, (score, position, item_id) in enumerate(best):
                    indices[q, j], scores[q, j], ids[q][j] = position, score, item_id
        return SearchResult(indices=indices, scores=scores, ids=ids)

    @uses_numpy_faiss
    def get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``label``, ``split``, ``position`` (and ``attributes``) of the ids present; absent ids are left out."""
        ids = [str(i) for i in ids]
        fields = ["id", "label", "split", "position"] + ([ATTRIBUTES_FIELD] if self.has_attributes else [])
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _GET_BATCH):
            chunk = ids[start:start + _GET_BATCH]
            rows = self._client().query(self.collection, filter=f"id in [{', '.join(quote(i) for i in chunk)}]",
                                        output_fields=fields, consistency_level="Strong")
            for row in rows:
                found[str(row["id"])] = {name: row[name] for name in fields if name != "id"}
        return found

    @uses_numpy_faiss
    def delete(self, ids: Sequence[str]) -> None:
        ids = [str(i) for i in ids]
        client = self._client()
        for start in range(0, len(ids), _DELETE_BATCH):
            chunk = ids[start:start + _DELETE_BATCH]
            client.delete(self.collection, filter=f"id in [{', '.join(quote(i) for i in chunk)}]")
        self._ids.difference_update(ids)

    @uses_numpy_faiss
    def __len__(self) -> int:
        self._ensure_ready()
        return self._count("")

    def __contains__(self, item_id: object) -> bool:
        """Whether an id is stored (from the id mirror: no round trip), e.g. to resume a bulk load."""
        return str(item_id) in self._ids

    def close(self) -> None:
        """Close the connection; for Milvus Lite also stop its in-process server when the last user leaves."""
        if self.client is None:
            return
        client, self.client = self.client, None
        try:
            client.close()
        finally:
            if self._lite_key is not None:
                _release_lite(self._lite_key)

    def drop(self) -> None:
        """Drop the collection and close: for one-off collections (a bench cell's), so the store does not
        grow without bound."""
        if self.client is not None:
            self.client.drop_collection(self.collection)
        self.close()

    def tune(self, *, nprobe: int | None = None, ef: int | None = None, search_list: int | None = None) -> None:
        """Change search-time knobs (IVF nprobe, HNSW ef, DiskANN search list); build parameters are fixed."""
        c = self.config
        self.config = replace(c, nprobe=c.nprobe if nprobe is None else nprobe, ef=c.ef if ef is None else ef,
                              search_list=c.search_list if search_list is None else search_list)

    @uses_numpy_faiss
    def rebuild(self, index_type: str, *, nlist: int | None = None, m: int | None = None,
                ef_construction: int | None = None) -> None:
        """Replace the collection's index (e.g. FLAT -> IVF_FLAT) without re-inserting: release, drop, build, load."""
        c = self.config
        config = replace(c, index_type=index_type.upper(), nlist=c.nlist if nlist is None else nlist,
                         m=c.m if m is None else m,
                         ef_construction=c.ef_construction if ef_construction is None else ef_construction)
        self._check_supported(config.index_type)
        client = self._client()
        if self._index_info() is not None:
            client.release_collection(self.collection)
            client.drop_index(self.collection, VECTOR_FIELD)
        self.config, self._ready = config, False
        self._ensure_ready()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return f"MilvusIndex({self.collection!r}, dim={self.dim}, {c.index_type}/{c.metric}, {self.where})"

    # ── readiness: flush, index, load ─────────────────────────────────────────────────────────

    def _ensure_ready(self) -> None:
        """Flush new rows, build the index if missing, wait for it and load: search sees every row, indexed."""
        if self._ready:
            return
        client = self._client()
        if self._dirty:
            client.flush(self.collection)
        if self._index_info() is None:
            self._create_index()
        self._wait_for_index()
        if not self._loaded():
            client.load_collection(self.collection, timeout=self.timeout)
            if not self._loaded():
                raise MilvusIndexError(f"collection {self.collection!r} in {self.where} did not load")
        self._ready, self._dirty = True, False

    def _create_index(self) -> None:
        from pymilvus import MilvusException

        client = self._client()
        params = client.prepare_index_params()
        build = self.config.build_params()
        # Nested under "params": pymilvus 3 would flatten a plain dict, and Milvus Lite reads only "params".
        params.add_index(field_name=VECTOR_FIELD, index_type=self.config.index_type, index_name=VECTOR_FIELD,
                         metric_type=self.config.metric, params={"params": build} if build else None)
        try:
            client.create_index(self.collection, params, timeout=self.timeout, sync=False)  # waited for below
        except MilvusException as error:
            kind = UnsupportedIndexError if self.config.index_type in str(error) else MilvusIndexError
            raise kind(f"{self.where} could not create a {self.config.index_type}/{self.config.metric} index on "
                       f"collection {self.collection!r}: {error}") from error
        info = self._index_info()
        recorded = _recorded_params(info or {}, build)
        if recorded != build:
            raise MilvusIndexError(
                f"{self.where} recorded index parameters {recorded} instead of {build} for collection "
                f"{self.collection!r}: its results would not be the index asked for")

    def _wait_for_index(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            info = self._index_info() or {}
            state = str(info.get("state", "Finished"))
            if state == "Failed":
                raise MilvusIndexError(f"{self.where} failed to build the index of {self.collection!r}: {info}")
            if state == "Finished" and int(info.get("pending_index_rows", 0) or 0) == 0:
                return
            if time.monotonic() > deadline:
                raise MilvusIndexError(
                    f"the index of {self.collection!r} in {self.where} was not built within {self.timeout:.0f} s "
                    f"(state {state}); raise timeout= or retry later")
            time.sleep(0.2)

    def _index_info(self) -> dict[str, Any] | None:
        client = self._client()
        if VECTOR_FIELD not in client.list_indexes(self.collection, field_name=VECTOR_FIELD):
            return None
        info = client.describe_index(self.collection, VECTOR_FIELD)
        return dict(info) if info else None

    def _loaded(self) -> bool:
        from pymilvus.client.types import LoadState

        return bool(self._client().get_load_state(self.collection)["state"] == LoadState.Loaded)

    # ── helpers ───────────────────────────────────────────────────────────────────────────────

    def _client(self) -> MilvusClient:
        if self.client is None:
            raise MilvusIndexError(f"{self!r} is closed")
        return self.client

    def _count(self, expr: str) -> int:
        rows = self._client().query(self.collection, filter=expr, output_fields=["count(*)"],
                                    consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def _query_batch_size(self) -> int:
        if not (self.is_lite and self.config.metric == "L2"):
            return self.query_batch
        per_query = max(1, len(self._ids)) * self.dim * 4
        return max(1, min(self.query_batch, _LITE_L2_QUERY_BYTES // per_query))

    def _score(self, distance: float) -> float:
        """Milvus reports IP as the dot product and L2 as the squared distance: 1 - d/2 is the cosine."""
        return float(distance) if self.config.metric == "IP" else 1.0 - float(distance) / 2.0

    def _rank(self, hits: Any, excluded: str | None, k: int) -> list[tuple[float, int, str]]:
        """Drop the excluded id, order by score then lower position (deterministic ties), keep k."""
        found = [(self._score(hit["distance"]), int(hit["entity"]["position"]), str(hit["id"])) for hit in hits]
        found = [f for f in found if f[2] != excluded]
        found.sort(key=lambda f: (-f[0], f[1]))
        return found[:k]

    def _check_vectors(self, vectors: np.ndarray, rows: int | None, *, what: str, unit: bool = True,
                       ids: Sequence[str] | None = None) -> np.ndarray:
        """Shape, finiteness (``check_finite``: ``ids`` name stored vectors, rows name queries) and, for stored
        vectors, unit norm: scores are cosines only for unit vectors."""
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim or (rows is not None and len(array) != rows):
            expected = f"({rows if rows is not None else 'Q'}, {self.dim})"
            raise ValueError(f"expected {what} of shape {expected}, got {array.shape}")
        check_finite(array, ids)
        norms = np.linalg.norm(array, axis=1)
        if unit and len(array) and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError(f"{what} must be L2-normalised (norms range {norms.min():.4g}..{norms.max():.4g})")
        return array

    def _attribute_column(self, attributes: Sequence[Mapping[str, Any]] | None,
                          rows: int) -> list[dict[str, Any]] | None:
        if attributes is None:
            return [{} for _ in range(rows)] if self.has_attributes else None
        if not self.has_attributes:
            raise MilvusIndexError(f"collection {self.collection!r} in {self.where} has no attributes field: create "
                                   "it with attributes=True to store per-item attributes")
        column = [dict(values) for values in attributes]
        if len(column) != rows:
            raise ValueError(f"attributes has {len(column)} entries for {rows} ids")
        return column

    def _check_new_ids(self, ids: list[str]) -> None:
        seen: set[str] = set()
        for item_id in ids:
            if item_id in seen or item_id in self._ids:
                raise ValueError(f"duplicate id {item_id!r}: ids must be unique in an index")
            if not item_id or len(item_id.encode()) > ID_MAX_LENGTH:
                raise ValueError(f"id {item_id[:80]!r} must be 1 to {ID_MAX_LENGTH} bytes of UTF-8")
            seen.add(item_id)


def quote(value: str) -> str:
    """A Milvus expression string literal for ``value`` (backslash escapes, as Milvus and Milvus Lite parse them)."""
    bad = next((c for c in value if ord(c) < 32 and c not in "\n\r\t"), None)
    if bad is not None:
        raise ValueError(f"{value[:80]!r} holds control character {bad!r}, which a filter cannot express")
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def filter_expression(*, label: str | None = None, split: str | None = None) -> str:
    """Exact-match filter on label and/or split ("" when neither is given)."""
    terms = [f"{field} == {quote(value)}" for field, value in (("label", label), ("split", split)) if value is not None]
    return " and ".join(terms)


def _column(values: Sequence[str] | None, rows: int, name: str, max_length: int) -> list[str]:
    if values is None:
        return [""] * rows
    column = [str(v) for v in values]
    if len(column) != rows:
        raise ValueError(f"{name} has {len(column)} entries for {rows} ids")
    too_long = next((v for v in column if len(v.encode()) > max_length), None)
    if too_long is not None:
        raise ValueError(f"{name} value {too_long[:80]!r} is longer than {max_length} bytes")
    return column


def _recorded_params(info: dict[str, Any], wanted: dict[str, int]) -> dict[str, int]:
    """The build parameters a describe_index answer records (nested under "params" or flat, by server)."""
    nested = info.get("params")
    sources = [nested, info] if isinstance(nested, dict) else [info]
    recorded = {}
    for key in wanted:
        value = next((source[key] for source in sources if source.get(key) is not None), None)
        if value is not None:
            recorded[key] = int(value)
    return recorded


# Milvus Lite runs one in-process server per .db path, shared by every client of that path; it is
# stopped (releasing the folder's lock) when the last MilvusIndex on the path closes.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _acquire_lite(key: str) -> None:
    with _LITE_LOCK:
        _LITE_USERS[key] = _LITE_USERS.get(key, 0) + 1


def _release_lite(key: str) -> None:
    with _LITE_LOCK:
        _LITE_USERS[key] = _LITE_USERS.get(key, 1) - 1
        if _LITE_USERS[key] > 0:
            return
        del _LITE_USERS[key]
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(key)
