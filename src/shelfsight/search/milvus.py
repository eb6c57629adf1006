"""Milvus as a :class:`~shelfsight.search.base.VectorIndex`: Milvus Lite on a local ``.db`` file or any server.

One code path for both, through ``pymilvus.MilvusClient``; only how the client is made differs
(:meth:`MilvusIndex.lite` / :meth:`MilvusIndex.server`). The index's settings are a
:class:`~shelfsight.search.milvus_config.MilvusIndexConfig` (``milvus_config.py``); the collection's fields
and filter expressions are in ``milvus_fields.py``, the server-side steps (checks, readiness, row scans) in
``milvus_collection.py``, the shared Lite server's reference count in ``milvus_lite.py``. What these modules
take care of, because getting it wrong makes recall silently wrong rather than failing:

- **Ready before search, with the parameters asked for** (``milvus_collection.py``): the first search
  after adding flushes, builds the index if there is none, waits for it and loads the collection, and
  the build parameters the server recorded are checked against the config.
- **Expressions are escaped** (:func:`quote`, :func:`filter_expression`).
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
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shelfsight.search.base import SearchResult, check_finite
from shelfsight.search.faiss_compat import uses_numpy_faiss
from shelfsight.search.milvus_collection import (
    check_existing,
    count,
    drop_index,
    ensure_ready,
    index_info,
    loaded,
    scan_rows,
)
from shelfsight.search.milvus_config import (
    MAX_TOPK,
    MilvusIndexConfig,
    MilvusIndexError,
    MilvusRequestConfig,
    UnsupportedIndexError,
    check_supported,
    parse_options,
)
from shelfsight.search.milvus_fields import (
    ATTRIBUTES_FIELD,
    ID_MAX_LENGTH,
    LABEL_MAX_LENGTH,
    SPLIT_MAX_LENGTH,
    VECTOR_FIELD,
    check_new_ids,
    collection_schema,
    filter_expression,
    id_filter,
    quote,
    text_column,
)
from shelfsight.search.milvus_lite import acquire_lite, lite_path, release_lite
from shelfsight.search.milvus_size import DiskBytes, lite_collection_bytes

if TYPE_CHECKING:
    from pymilvus import MilvusClient

__all__ = [
    "ID_MAX_LENGTH", "LABEL_MAX_LENGTH", "MilvusIndex", "MilvusIndexConfig", "MilvusIndexError",
    "MilvusRequestConfig", "UnsupportedIndexError", "filter_expression", "quote",
]

_LITE_L2_QUERY_BYTES = 256 * 1024 * 1024  # Lite's brute-force L2 allocates queries x rows x dim floats
_DELETE_BATCH = 1000
_GET_BATCH = 1000


class MilvusIndex:
    """A Milvus collection (``id``, ``vector``, ``label``, ``split``, ``position``) behind the VectorIndex protocol.

    ``config`` is the index to build and search (type, metric, parameters); ``requests`` how requests are
    cut and waited for; ``reuse``/``overwrite`` what to do with an existing collection; ``attributes``
    adds the JSON attributes field to a new one. ``where`` (for messages) and ``lite_key`` (the Lite
    server to release on close) are set by :meth:`lite` and :meth:`server`, the usual ways to open one.

    ``position`` is the insertion order, so results carry the same ``indices`` as ExactIndex fed
    the same items in the same order. The set of ids is mirrored in memory (read back on reuse)
    to refuse duplicate ids as ExactIndex does; one writer per collection is assumed. Not thread-safe:
    concurrent callers serialise their calls (as ``shelfsight.serve`` does).
    """

    @uses_numpy_faiss
    def __init__(self, client: MilvusClient, collection: str, dim: int, config: MilvusIndexConfig, *,
                 requests: MilvusRequestConfig = MilvusRequestConfig(), reuse: bool = False,
                 overwrite: bool = False, attributes: bool = False, where: str = "",
                 lite_key: str | None = None) -> None:
        if not isinstance(config, MilvusIndexConfig) or not isinstance(requests, MilvusRequestConfig):
            raise TypeError("MilvusIndex takes config=MilvusIndexConfig(...) and requests=MilvusRequestConfig(...); "
                            "MilvusIndex.lite/server also take their settings as keyword options")
        if reuse and overwrite:
            raise ValueError("reuse=True and overwrite=True contradict each other: choose one")
        if dim < 1:
            raise ValueError(f"need dim >= 1, got {dim}")
        self.config = config
        self.requests = requests
        self.client: MilvusClient | None = client
        self.collection = collection
        self.dim = int(dim)
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
        check_supported(self.config.index_type, self.server_version)
        self._open(reuse=reuse, overwrite=overwrite)

    # ── construction ──────────────────────────────────────────────────────────────────────────

    @classmethod
    def lite(cls, path: str | os.PathLike[str], collection: str, dim: int, **options: Any) -> MilvusIndex:
        """Milvus Lite on a local ``.db`` path (a folder Milvus Lite creates; the parent is created here).

        ``options``: the fields of :class:`MilvusIndexConfig` (``index_type``, ``metric``, ``nlist``...) or
        ``config=``; those of :class:`MilvusRequestConfig` (``insert_batch``, ``timeout``...) or ``requests=``;
        ``reuse``, ``overwrite``, ``attributes``. An unknown option is a ``TypeError`` naming it.
        """
        config, requests, opening = parse_options(options)
        key = lite_path(path)
        from pymilvus import MilvusClient

        acquire_lite(key)
        client = None
        try:
            client = MilvusClient(key)
            return cls(client, collection, dim, config, requests=requests, where=f"Milvus Lite database {key}",
                       lite_key=key, **opening)
        except BaseException:
            if client is not None:
                client.close()
            release_lite(key)
            raise

    @classmethod
    def server(cls, uri: str, token: str, collection: str, dim: int, **options: Any) -> MilvusIndex:
        """Any Milvus server (or ``milvus-lite server``) by URI, e.g. ``http://127.0.0.1:19530``; token may be "".

        ``options`` as for :meth:`lite`.
        """
        config, requests, opening = parse_options(options)
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri, token=token, timeout=requests.timeout)
        try:
            return cls(client, collection, dim, config, requests=requests, where=f"Milvus server {uri}", **opening)
        except BaseException:
            client.close()
            raise

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
                self.has_attributes = check_existing(client, self.collection, self.dim, self.config,
                                                     where=self.where)
                self._ensure_ready()
                for item_id, position in scan_rows(client, self.collection):  # mirror ids, next position
                    self._ids.add(item_id)
                    self._next_position = max(self._next_position, position + 1)
                return
        client.create_collection(self.collection, schema=collection_schema(self.dim, attributes=self.has_attributes),
                                 consistency_level="Strong")

    # ── the protocol ──────────────────────────────────────────────────────────────────────────

    @uses_numpy_faiss
    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None, attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert new items; ``attributes`` (one JSON object per item) needs a collection made with attributes=True."""
        ids = [str(i) for i in ids]
        vectors = self._check_vectors(vectors, len(ids), what="vectors", ids=ids)
        labels_ = text_column(labels, len(ids), "labels", LABEL_MAX_LENGTH)
        splits_ = text_column(splits, len(ids), "splits", SPLIT_MAX_LENGTH)
        extra = self._attribute_column(attributes, len(ids))
        check_new_ids(ids, self._ids)
        client, batch = self._client(), self.requests.insert_batch
        for start in range(0, len(ids), batch):
            stop = min(start + batch, len(ids))
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
        limit = min(k + extra + self.requests.tie_margin, MAX_TOPK)
        expr, batch = filter_expression(label=label, split=split), self._query_batch_size()
        for start in range(0, len(queries), batch):
            block = queries[start:start + batch]
            hits = self._client().search(
                self.collection, data=list(block), limit=limit, filter=expr, output_fields=["position"],
                search_params=self.config.search_params(limit), anns_field=VECTOR_FIELD,
                consistency_level=self.requests.search_consistency)
            for row, query_hits in enumerate(hits):
                q = start + row
                best = self._rank(query_hits, excluded[q], k)
                for j, (score, position, item_id) in enumerate(best):
                    indices[q, j], scores[q, j], ids[q][j] = position, score, item_id
        return SearchResult(indices=indices, scores=scores, ids=ids)

    @uses_numpy_faiss
    def get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``label``, ``split``, ``position`` (and ``attributes``) of the ids present; absent ids are left out.
        Only mirrored ids are queried: a new collection answers with no query (a server refuses an unloaded one)."""
        client = self._client()  # a closed index says so, even for an id it never held
        ids = [str(i) for i in ids if str(i) in self._ids]
        if not ids:
            return {}
        self._ensure_loaded()
        fields = ["id", "label", "split", "position"] + ([ATTRIBUTES_FIELD] if self.has_attributes else [])
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _GET_BATCH):
            rows = client.query(self.collection, filter=id_filter(ids[start:start + _GET_BATCH]),
                                 output_fields=fields, consistency_level="Strong")
            for row in rows:
                found[str(row["id"])] = {name: row[name] for name in fields if name != "id"}
        return found

    @uses_numpy_faiss
    def delete(self, ids: Sequence[str]) -> None:
        ids = [str(i) for i in ids]
        client = self._client()
        for start in range(0, len(ids), _DELETE_BATCH):
            client.delete(self.collection, filter=id_filter(ids[start:start + _DELETE_BATCH]))
        self._ids.difference_update(ids)

    @uses_numpy_faiss
    def __len__(self) -> int:
        self._ensure_ready()
        return count(self._client(), self.collection, "")

    def stored_ids(self) -> set[str]:
        """Every id in the collection (from the id mirror: no round trip)."""
        return set(self._ids)

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
                release_lite(self._lite_key)

    def drop(self) -> None:
        """Drop the collection and close: for one-off collections (a bench cell's), so the store does not
        grow without bound."""
        if self.client is not None:
            self.client.drop_collection(self.collection)
        self.close()

    def disk_bytes(self) -> DiskBytes | None:
        """On-disk sizes of this collection (index files, everything) for Milvus Lite; None on a server."""
        return lite_collection_bytes(self._lite_key, self.collection) if self._lite_key is not None else None

    def tune(self, *, nprobe: int | None = None, ef: int | None = None, search_list: int | None = None) -> None:
        """Change search-time knobs (IVF nprobe, HNSW ef, DiskANN search list); build parameters are fixed."""
        self.config = _changed(self.config, nprobe=nprobe, ef=ef, search_list=search_list)

    @uses_numpy_faiss
    def rebuild(self, index_type: str, *, nlist: int | None = None, m: int | None = None,
                ef_construction: int | None = None) -> None:
        """Replace the collection's index (e.g. FLAT -> IVF_FLAT) without re-inserting: release, drop, build, load."""
        config = _changed(self.config, index_type=index_type, nlist=nlist, m=m, ef_construction=ef_construction)
        check_supported(config.index_type, self.server_version)
        drop_index(self._client(), self.collection)
        self.config, self._ready = config, False
        self._ensure_ready()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return f"MilvusIndex({self.collection!r}, dim={self.dim}, {c.index_type}/{c.metric}, {self.where})"

    # ── readiness: flush, index, load (milvus_collection.py) ─────────────────────────────────────────────────────────

    def _ensure_ready(self) -> None:
        """Flush new rows, build the index if missing, wait for it and load: search sees every row, indexed."""
        if self._ready:
            return
        self.config = ensure_ready(self._client(), self.collection, self.config, flush=self._dirty, where=self.where,
                                   requests=self.requests)
        self._ready, self._dirty = True, False

    def _ensure_loaded(self) -> None:
        """A server queries only a loaded collection (Lite any): build and load one that never was."""
        if not self._ready and not self.is_lite and not loaded(self._client(), self.collection):
            self._ensure_ready()

    def _index_info(self) -> dict[str, Any] | None:
        return index_info(self._client(), self.collection)

    def _client(self) -> MilvusClient:
        if self.client is None:
            raise MilvusIndexError(f"{self!r} is closed")
        return self.client

    def _query_batch_size(self) -> int:
        if not (self.is_lite and self.config.metric == "L2"):
            return self.requests.query_batch
        per_query = max(1, len(self._ids)) * self.dim * 4
        return max(1, min(self.requests.query_batch, _LITE_L2_QUERY_BYTES // per_query))

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


def _changed(config: MilvusIndexConfig, **changes: Any) -> MilvusIndexConfig:
    """``config`` with the changes that are not None (validated again)."""
    return replace(config, **{name: value for name, value in changes.items() if value is not None})
