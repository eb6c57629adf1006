"""Bulk indexing: stream Parquet shards of embeddings into a vector index with bounded memory.

A reader thread loads shards ahead of the writer into a bounded queue; when the index is slower
than the disk (the usual case for a remote Milvus), the queue fills and reading waits: memory stays at
``read_ahead`` shards whatever the catalogue size. Inserts go in batches of ``batch_rows``. Labels and
splits come from the catalogue by id, so shards carry only what extraction produced (ids, vectors).
Ids already in the index are skipped, so a bulk load that was interrupted can simply be run again.

Search sits below the catalogue and the embeddings: the caller hands over the shard reader
(``embeddings.shards.read_shard``) and the catalogue's items, read here only for their id, label and split.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shelfsight.progress import progress_bar
from shelfsight.search.base import VectorIndex

ShardReader = Callable[[str | Path], tuple[list[str], np.ndarray]]
"""One shard's (ids, float32 vectors of shape (N, D)): ``embeddings.shards.read_shard``."""


class LabelledItem(Protocol):
    """What a bulk load reads of a catalogue item (``catalog.CatalogItem`` has it)."""

    @property
    def item_id(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def split(self) -> str: ...


@dataclass(frozen=True)
class BulkReport:
    """What a bulk load did: rows inserted and skipped, shards read, wall time, rows per second."""

    inserted: int
    already_present: int
    not_in_catalog: int
    shards: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.inserted / self.seconds if self.seconds > 0 else float("nan")


def bulk_index(
    index: VectorIndex, shards: Sequence[str | Path], *, read: ShardReader,
    catalog: Iterable[LabelledItem] | None = None,
    keep_ids: set[str] | None = None, batch_rows: int = 5000, read_ahead: int = 2,
    existing: Container[str] | None = None, progress: bool = False,
    attributes_for: Callable[[Sequence[str]], list[dict[str, Any]]] | None = None,
) -> BulkReport:
    """Insert every row of ``shards``, each read by ``read`` (``keep_ids`` narrows them, e.g. to a protocol's
    gallery).

    ``catalog`` supplies labels and splits by id (rows whose id it lacks are counted and left out);
    ``existing`` lists ids already in the index (default: ask the index when it can tell);
    ``attributes_for`` gives each inserted batch's JSON attributes (a collection made with attributes, such
    as one ``shelfsight serve`` will serve: image location and metadata per item).
    """
    if batch_rows < 1 or read_ahead < 1:
        raise ValueError("batch_rows and read_ahead must be at least 1")
    items = {item.item_id: item for item in catalog} if catalog is not None else None
    present = existing if existing is not None else _PresentIn(index)
    loaded: queue.Queue[tuple[list[str], np.ndarray] | None] = queue.Queue(maxsize=read_ahead)
    failure: list[BaseException] = []
    reader = threading.Thread(target=_read_shards, args=(shards, read, loaded, failure), daemon=True)
    started = time.perf_counter()
    reader.start()
    inserted = skipped_present = skipped_unknown = 0
    pending_ids: list[str] = []
    pending_vectors: list[np.ndarray] = []
    with progress_bar(progress, len(shards), "bulk index", unit="shards") as advance:
        try:
            while (entry := loaded.get()) is not None:
                inserted_now, present_now, unknown_now = _route(entry, index, keep_ids, present, items, pending_ids,
                                                                pending_vectors, batch_rows, attributes_for)
                inserted += inserted_now
                skipped_present += present_now
                skipped_unknown += unknown_now
                advance(1)
            if failure:
                raise failure[0]
            inserted += _flush(index, pending_ids, pending_vectors, items, attributes_for)
        finally:
            reader.join(timeout=1)
    return BulkReport(inserted=inserted, already_present=skipped_present, not_in_catalog=skipped_unknown,
                      shards=len(shards), seconds=time.perf_counter() - started)


def _route(entry: tuple[list[str], np.ndarray], index: VectorIndex, keep_ids: set[str] | None, present: Any,
           items: Any, pending_ids: list[str], pending_vectors: list[np.ndarray], batch_rows: int,
           attributes_for: Callable[[Sequence[str]], list[dict[str, Any]]] | None) -> tuple[int, int, int]:
    """One shard's rows into the pending batch (flushed whenever it is full): (inserted, present, unknown)."""
    inserted = skipped_present = skipped_unknown = 0
    ids, vectors = entry
    for row, item_id in enumerate(ids):
        if keep_ids is not None and item_id not in keep_ids:
            continue
        if item_id in present:
            skipped_present += 1
            continue
        if items is not None and item_id not in items:
            skipped_unknown += 1
            continue
        pending_ids.append(item_id)
        pending_vectors.append(vectors[row])
        if len(pending_ids) == batch_rows:
            inserted += _flush(index, pending_ids, pending_vectors, items, attributes_for)
    return inserted, skipped_present, skipped_unknown


def _read_shards(shards: Sequence[str | Path], read: ShardReader,
                 out: queue.Queue[tuple[list[str], np.ndarray] | None], failure: list[BaseException]) -> None:
    """Producer: one shard at a time into the bounded queue, then ``None`` as the end mark."""
    try:
        for path in shards:
            out.put(read(path))  # blocks while the writer is behind: backpressure
    except BaseException as exc:  # noqa: BLE001 - handed to the writer thread, which raises it
        failure.append(exc)
    finally:
        out.put(None)


def _flush(index: VectorIndex, ids: list[str], vectors: list[np.ndarray], items: Mapping[str, LabelledItem] | None,
           attributes_for: Callable[[Sequence[str]], list[dict[str, Any]]] | None = None) -> int:
    if not ids:
        return 0
    labels = splits = None
    if items is not None:
        labels = [str(items[i].label) for i in ids]
        splits = [str(items[i].split) for i in ids]
    vectors_ = np.stack(vectors).astype(np.float32)
    if attributes_for is not None:
        index.add(list(ids), vectors_, labels=labels, splits=splits, attributes=attributes_for(ids))  # type: ignore[call-arg]
    else:
        index.add(list(ids), vectors_, labels=labels, splits=splits)
    count = len(ids)
    ids.clear()
    vectors.clear()
    return count


class _PresentIn:
    """``id in index`` where the index can tell (MilvusIndex mirrors its ids), else nothing is present."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.can_tell = hasattr(type(index), "__contains__")

    def __contains__(self, item_id: object) -> bool:
        return bool(self.can_tell and item_id in self.index)  # type: ignore[operator]


