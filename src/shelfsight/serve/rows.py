"""The rows ``shelfsight index`` writes, and how ``--sync`` decides which to replace.

Each row's ``attributes`` hold the image's root key and relative path, the item's metadata and the SHA-256 of its
bytes. A later run *extends* the collection: ids already stored are left alone. With ``--sync`` an item of this
catalogue whose label, split, metadata, image location or bytes changed is replaced (deleted and added again with
its new vector: the embedding cache is keyed by content, so a photo replaced at the same path is embedded anew),
and ids the service could not serve (``.``/``..`` segments, ``/image`` or ``/similar`` endings) are skipped with
the reason. A catalogue id already taken by an item added through ``POST /items`` (or indexed from another
folder) is never overwritten: it is reported in ``IndexReport.conflicts``, and the command warns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.embeddings.digests import file_digest
from shelfsight.search.milvus import MilvusIndex
from shelfsight.serve.errors import InvalidItemError, ServeError
from shelfsight.serve.manifest import UPLOADS_ROOT, ServiceManifest
from shelfsight.serve.validation import check_item_id, check_metadata

ADD_BATCH = 1000


@dataclass
class IndexReport:
    """What one ``build_index`` call did."""

    folder: Path
    items: int
    added: int
    already_indexed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(item id, reason) of items that were not indexed: unreadable images, degenerate embeddings."""
    removed: int = 0
    """Items deleted by ``sync`` because the catalogue no longer lists them."""
    refreshed: list[str] = field(default_factory=list)
    """Ids ``sync`` replaced because their label, split, metadata or image bytes changed."""
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    """(item id, where it came from) of catalogue items not indexed because the id is taken by an item added
    through ``POST /items`` or indexed from another folder."""
    embedded: int = 0
    """Photos embedded by this call (the others came from the per-photo cache)."""
    outside_root: int = 0
    """Items indexed whose image lies outside the catalogue root: searchable, but their image is not served."""
    total: int = 0
    dim: int = 0
    vectors: str = "backbone"
    onnx: Path | None = None
    seconds: float = 0.0
    compression: str = "none"
    """The ``--compress`` method the folder stores its vectors with (``none``, ``pca64``, ``sq8``, ``pca64-sq8``)."""
    bytes_per_item: int = 0
    """Bytes of one stored vector's code in the index: 4 x dim as float32, dim as int8."""
    index_bytes_per_item: float | None = None
    """Measured: the Milvus Lite index files over the items (None on a server)."""
    disk_bytes_per_item: float | None = None
    """Measured: the whole Milvus Lite collection on disk over the items (its rows keep float32 vectors too)."""



def add_items(index: MilvusIndex, catalog: Catalog, ids: list[str], rows: np.ndarray, manifest: ServiceManifest,
               report: IndexReport, *, sync: bool = False) -> None:
    """Insert the items not yet in the collection, in batches, with their image location, metadata and content
    digest; with ``sync``, also replace the items of this catalogue whose label, split, metadata or bytes changed."""
    by_id = {item.item_id: item for item in catalog}
    root = catalog.root.resolve()
    root_key = manifest.root_key(root)
    norms = np.linalg.norm(rows, axis=1) if len(rows) else np.zeros(0)
    for start in range(0, len(ids), ADD_BATCH):
        chunk = [i for i in range(start, min(start + ADD_BATCH, len(ids))) if _usable_id(ids[i], report)]
        present = index.get([ids[i] for i in chunk])
        keep: list[int] = []
        for i in chunk:
            if norms[i] <= 0.5:
                report.skipped.append((ids[i], "degenerate (all-zero) top-tuned embedding"))
            elif ids[i] not in present:
                keep.append(i)
            elif _stored_elsewhere(ids[i], present[ids[i]], root_key, report):
                continue
            elif sync and _changed(present[ids[i]], by_id[ids[i]], root, root_key):
                report.refreshed.append(ids[i])
                keep.append(i)
            else:
                report.already_indexed += 1
        if not keep:
            continue
        items = [by_id[ids[i]] for i in keep]
        attributes = [item_attributes(item, root, root_key, digest=True) for item in items]
        report.outside_root += sum(1 for a in attributes if a["path"] is None)
        replaced = [item.item_id for item in items if item.item_id in present]
        if replaced:
            index.delete(replaced)
        index.add([item.item_id for item in items], rows[keep], [item.label for item in items],
                  [item.split for item in items], attributes)
        report.added += len(keep) - len(replaced)


def _usable_id(item_id: str, report: IndexReport) -> bool:
    """Whether the service could serve this id (the API's rules); else skipped with the reason."""
    try:
        check_item_id(item_id)
    except InvalidItemError as error:
        report.skipped.append((item_id, f"id refused: {error}"))
        return False
    return True


def _stored_elsewhere(item_id: str, record: dict[str, Any], root_key: str, report: IndexReport) -> bool:
    """An id this catalogue lists that the collection holds from elsewhere (``POST /items``, another catalogue's
    folder): kept as it is, and reported, never silently left out."""
    attributes = record.get("attributes")
    source = attributes.get("root") if isinstance(attributes, dict) else None
    if source == root_key:
        return False
    where = "added through POST /items" if source == UPLOADS_ROOT else f"indexed from another folder ({source})"
    report.conflicts.append((item_id, where))
    return True


def _changed(record: dict[str, Any], item: CatalogItem, root: Path, root_key: str) -> bool:
    """Whether a stored item differs from the catalogue's: label, split, image location, metadata or the image's
    bytes (SHA-256; an item stored before digests were recorded counts as changed, once)."""
    if record.get("label") != item.label or record.get("split") != item.split:
        return True
    return record.get("attributes") != item_attributes(item, root, root_key, digest=True)


def item_attributes(item: CatalogItem, root: Path, root_key: str, *, digest: bool = False) -> dict[str, Any]:
    """The row's attributes: image root key and relative path (or absolute ``file`` outside the root), metadata,
    and with ``digest`` the SHA-256 of the image's bytes, which ``index --sync`` compares."""
    try:
        relative: str | None = item.image_path.resolve().relative_to(root).as_posix()
    except ValueError:
        relative = None
    metadata = {key: value for key, value in (("coarse_label", item.coarse_label), ("product_id", item.product_id))
                if value is not None} | dict(item.metadata)
    try:
        check_metadata(metadata)
    except InvalidItemError as error:
        raise ServeError(f"item {item.item_id!r}: its metadata (the manifest's other columns) cannot be stored: "
                         f"{error}; shorten or drop that column") from None
    attributes = {"root": root_key, "path": relative, "metadata": metadata}
    if relative is None:  # outside the root: its image is served only from a folder the user allows
        attributes["file"] = item.image_path.resolve().as_posix()
    if digest:
        with contextlib.suppress(OSError):  # unreadable now: embedded from the cache, compared without its bytes
            attributes["sha256"] = file_digest(item.image_path)
    return attributes
