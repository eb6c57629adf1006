"""One Milvus collection on the server: check a reused one, scan its rows, build, wait for and load its index.

Plain functions over a ``MilvusClient`` and a collection name; :class:`~shelfsight.search.milvus.MilvusIndex`
keeps the state (id mirror, readiness) and calls them. ``where`` names the database or server in messages.

- **Ready before search** (:func:`ensure_ready`). After adding, the first search flushes, creates the index
  if there is none (after the bulk insert, so Milvus Lite builds it synchronously for every segment), waits
  until the server reports it built and loads the collection; reads use Strong consistency.
- **Build parameters reach the server** (:func:`create_index`). pymilvus 3 flattens ``params={"nlist": ...}``
  into top-level keys, which Milvus Lite 3.2 ignores (its IVF silently used nlist=128). The parameters are
  sent nested under ``"params"`` (the long-standing wire format every server reads) and checked back with
  ``describe_index``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shelfsight.progress import progress_bar
from shelfsight.search.milvus_config import (
    MilvusIndexConfig,
    MilvusIndexError,
    MilvusRequestConfig,
    UnsupportedIndexError,
    recorded_params,
)
from shelfsight.search.milvus_fields import ATTRIBUTES_FIELD, FIELDS, VECTOR_FIELD

if TYPE_CHECKING:
    from pymilvus import MilvusClient

SCAN_WINDOW = 16384
"""Rows read back per query when a reused collection's ids are mirrored."""


def check_existing(client: MilvusClient, collection: str, dim: int, config: MilvusIndexConfig, *,
                   where: str) -> bool:
    """Refuse a collection shelfsight did not write, of another dimension or with another index; return
    whether it has the attributes field."""
    fields = {f["name"]: f for f in client.describe_collection(collection)["fields"]}
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise MilvusIndexError(
            f"collection {collection!r} in {where} lacks field(s) {missing}: it was not written by "
            "shelfsight; choose another collection name or pass overwrite=True")
    stored = int(fields[VECTOR_FIELD].get("params", {}).get("dim", -1))
    if stored != dim:
        raise MilvusIndexError(
            f"collection {collection!r} in {where} holds {stored}-d vectors, not {dim}-d: open it "
            f"with dim={stored}, use another collection name, or pass overwrite=True to replace it")
    info = index_info(client, collection)
    if info is not None:
        stored_type, stored_metric = str(info.get("index_type", "")).upper(), str(info.get("metric_type", "")).upper()
        stored_params = recorded_params(info, config.build_params())
        wanted = (config.index_type, config.metric, config.build_params())
        if (stored_type, stored_metric, stored_params) != wanted:
            raise MilvusIndexError(
                f"collection {collection!r} in {where} has a {stored_type}/{stored_metric} index "
                f"{stored_params}, not the {wanted[0]}/{wanted[1]} {wanted[2]} asked for: open it with those "
                "settings or pass overwrite=True to rebuild")
    return ATTRIBUTES_FIELD in fields


def count(client: MilvusClient, collection: str, expr: str) -> int:
    """Rows matching ``expr`` ("" for all), read with Strong consistency."""
    rows = client.query(collection, filter=expr, output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"]) if rows else 0


def scan_rows(client: MilvusClient, collection: str) -> Iterator[tuple[str, int]]:
    """Every stored ``(id, position)``, windowed by position (keys need no quoting), galloping over gaps."""
    remaining, start, width = count(client, collection, ""), 0, SCAN_WINDOW
    while remaining > 0:
        if start >= 2**62:
            raise MilvusIndexError(f"collection {collection!r}: row count and positions disagree")
        window = f"position >= {start} and position < {start + width}"
        found = count(client, collection, window)
        if found == 0:
            start, width = start + width, width * 2  # gallop over a gap left by deletes
            continue
        if found > SCAN_WINDOW:
            width //= 2
            continue
        rows = client.query(collection, filter=window, output_fields=["id", "position"], consistency_level="Strong")
        for row in rows:
            yield str(row["id"]), int(row["position"])
        remaining -= len(rows)
        start, width = start + width, SCAN_WINDOW


def ensure_ready(client: MilvusClient, collection: str, config: MilvusIndexConfig, *, flush: bool, where: str,
                 requests: MilvusRequestConfig) -> MilvusIndexConfig:
    """Flush new rows (``flush``), build the index if missing, wait for it and load: search sees every row.
    Returns ``config`` with an automatic nlist sized to the rows it is built on. Requests take ``requests.timeout``;
    the build and load are waited for ``requests.build_timeout`` (with a progress bar if ``build_progress``)."""
    timeout = requests.build_timeout
    if flush:
        client.flush(collection)
    if index_info(client, collection) is None:
        if config.nlist is None:
            config = config.sized(int(client.get_collection_stats(collection)["row_count"]))
        create_index(client, collection, config, timeout=requests.timeout, where=where)
    wait_for_index(client, collection, timeout=timeout, where=where, progress=requests.build_progress)
    if not loaded(client, collection):
        client.load_collection(collection, timeout=timeout)
        if not loaded(client, collection):
            raise MilvusIndexError(f"collection {collection!r} in {where} did not load")
    return config


def create_index(client: MilvusClient, collection: str, config: MilvusIndexConfig, *, timeout: float,
                 where: str) -> None:
    """Start building ``config``'s index on the vector field and check the server recorded its parameters."""
    from pymilvus import MilvusException

    params = client.prepare_index_params()
    build = config.build_params()
    # Nested under "params": pymilvus 3 would flatten a plain dict, and Milvus Lite reads only "params".
    params.add_index(field_name=VECTOR_FIELD, index_type=config.index_type, index_name=VECTOR_FIELD,
                     metric_type=config.metric, params={"params": build} if build else None)
    try:
        client.create_index(collection, params, timeout=timeout, sync=False)  # waited for by wait_for_index
    except MilvusException as error:
        kind = UnsupportedIndexError if config.index_type in str(error) else MilvusIndexError
        raise kind(f"{where} (version {client.get_server_version()}) could not create a {config.index_type}/"
                   f"{config.metric} index on collection {collection!r}: {error}") from error
    recorded = recorded_params(index_info(client, collection) or {}, build)
    if recorded != build:
        raise MilvusIndexError(
            f"{where} recorded index parameters {recorded} instead of {build} for collection "
            f"{collection!r}: its results would not be the index asked for")


def wait_for_index(client: MilvusClient, collection: str, *, timeout: float, where: str,
                   progress: bool = False) -> None:
    """Poll until the server reports the index built with no pending rows (a server builds in the background:
    ``progress`` shows its indexed rows of the total while it does)."""
    deadline = time.monotonic() + timeout
    info = _unfinished(client, collection, where)
    if info is None:
        return
    total, done = int(info.get("total_rows", 0) or 0), int(info.get("indexed_rows", 0) or 0)
    with progress_bar(progress and total > 0, total, f"index build ({collection})", completed=done,
                      unit="rows") as advance:
        while info is not None:
            if time.monotonic() > deadline:
                raise MilvusIndexError(
                    f"the index of {collection!r} in {where} was not built within {timeout:.0f} s (state "
                    f"{info.get('state')}, {info.get('indexed_rows')}/{info.get('total_rows')} rows indexed); raise "
                    "build_timeout (index.build_timeout in a bench config, --build-timeout) or retry later")
            time.sleep(0.2)
            info = _unfinished(client, collection, where)
            now = int((info or {}).get("indexed_rows", total) or 0)
            advance(max(0, min(now, total) - done))
            done = max(done, min(now, total))


def _unfinished(client: MilvusClient, collection: str, where: str) -> dict[str, Any] | None:
    """``describe_index`` while the build is unfinished, None once built; a failed build raises."""
    info = index_info(client, collection) or {}
    state = str(info.get("state", "Finished"))
    if state == "Failed":
        raise MilvusIndexError(f"{where} failed to build the index of {collection!r}: {info}")
    return None if state == "Finished" and int(info.get("pending_index_rows", 0) or 0) == 0 else info


def drop_index(client: MilvusClient, collection: str) -> None:
    """Release the collection and drop its vector index, if it has one (before building another)."""
    if index_info(client, collection) is not None:
        client.release_collection(collection)
        client.drop_index(collection, VECTOR_FIELD)


def index_info(client: MilvusClient, collection: str) -> dict[str, Any] | None:
    """``describe_index`` of the vector field, or None when it has no index."""
    if VECTOR_FIELD not in client.list_indexes(collection, field_name=VECTOR_FIELD):
        return None
    info = client.describe_index(collection, VECTOR_FIELD)
    return dict(info) if info else None


def unindexed_rows(client: MilvusClient, collection: str) -> int:
    """Rows of a loaded collection in segments the server holds without the index, searched exactly: a Milvus
    2.3 server indexes no segment under ``dataCoord.segment.minSegmentNumRowsToEnableIndex`` rows (1,024 by
    default) although ``describe_index`` reports every row indexed. Measured on 2.3.5: 1,023 rows unindexed, 1,024
    indexed; a FLAT index is never built (it needs none), so its rows all count."""
    return sum(int(segment.num_rows) for segment in client.list_loaded_segments(collection)
               if not segment.index_name)


def loaded(client: MilvusClient, collection: str) -> bool:
    from pymilvus.client.types import LoadState

    return bool(client.get_load_state(collection)["state"] == LoadState.Loaded)
