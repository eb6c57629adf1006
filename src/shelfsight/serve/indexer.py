"""Build or extend the Milvus collection a service searches: ``shelfsight index``.

Vectors come from the cached ``embed_catalog``, so indexing a catalogue the bench already embedded
reads the cache instead of recomputing, and the service's own embeddings (same preprocessing, same
prepared model) land next to them. Each row stores the item id, label, split and a JSON ``attributes``
object: the image's root key and path relative to that root (so the service can serve it and refuse
anything outside), and the item's metadata (coarse label, product id, and a manifest's other columns, such as a
seller id: the service returns them with every hit).

**Which vectors?** By default the collection stores the raw backbone embeddings, even when a
top-tuned head is given: new products of classes the head never saw can be added and found, and a
retrained head only changes tagging, not the index. ``vectors="head"`` stores the head's penultimate
(top-tuned) embeddings instead, usually better for retrieval inside the head's classes (the paper's
top-tuning result), at the price of re-indexing whenever the head changes. A ``linear`` or ``ncm`` cell's head
(``adapt.heads.LinearHead``) tags only: it has no embedding of its own, so its index stores backbone vectors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.adapt import (
    LINEAR_HEAD_FORMAT,
    LinearHead,
    MLPHead,
    embed_with_head,
    head_format,
    load_head,
    load_linear_head,
)
from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings import Embeddings, RuntimeChoice, embed_catalog
from shelfsight.search.milvus import MilvusIndex
from shelfsight.serve.compression import (
    PROJECTION_NAME,
    ServedCompression,
    check_same,
    fit_and_save,
    load_projection,
    milvus_params,
    one_blas_thread,
    parse_compression,
    recorded_method,
)
from shelfsight.serve.encoder import ensure_onnx
from shelfsight.serve.errors import ServeError
from shelfsight.serve.manifest import (
    CatalogueRecord,
    CompressionRecord,
    IndexLayout,
    MilvusTarget,
    ServiceManifest,
    VectorKind,
    normalised_identity,
    read_manifest,
    write_manifest,
)
from shelfsight.serve.rows import IndexReport, add_items, item_attributes

__all__ = ["IndexReport", "ServedHead", "build_index", "head_digest", "item_attributes", "load_served_head",
           "open_collection", "probe_dim"]

ServedHead = MLPHead | LinearHead
"""A head the service tags with: a top-tuned MLP, or a linear probe / class means."""


def load_served_head(folder: str | os.PathLike[str]) -> tuple[ServedHead, list[str]]:
    """Any saved head (``toptune``, ``linear`` or ``ncm`` cell) and its class names, read by its declared format."""
    path = Path(folder)
    if head_format(path) == LINEAR_HEAD_FORMAT:
        linear = load_linear_head(path)
        return linear, list(linear.classes)
    mlp, classes, _ = load_head(path)
    return mlp, classes


def head_digest(folder: str | os.PathLike[str]) -> str:
    """SHA-256 of a saved head's files: a changed head is noticed by the indexer and the service."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("head.*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


def open_collection(layout: IndexLayout, manifest: ServiceManifest, *, token: str = "",
                    overwrite: bool = False, require_attributes: bool = True, build_timeout: float = 300.0,
                    build_progress: bool = False, consistency: str = "Strong") -> MilvusIndex:
    """The manifest's collection (created when absent, replaced with ``overwrite``), with the attributes field.

    ``require_attributes=False`` also opens a collection without it (a bare ``shelfsight bulk-index``
    load), which the service then serves read-only. ``build_timeout``: seconds to wait for a server's index build.
    """
    target = manifest.milvus
    options: dict[str, Any] = {"index_type": target.index_type, "metric": target.metric, "reuse": not overwrite,
                               "overwrite": overwrite, "attributes": True, "build_timeout": build_timeout,
                               "build_progress": build_progress, "consistency": consistency, **target.params}
    if target.uri is None:
        index = MilvusIndex.lite(layout.milvus_lite, target.collection, manifest.dim, **options)
    else:
        index = MilvusIndex.server(target.uri, token, target.collection, manifest.dim, **options)
    if require_attributes and not index.has_attributes:
        index.close()
        raise ServeError(f"collection {target.collection!r} ({index.where}) was not written by `shelfsight index` "
                         "(no attributes field): choose another --collection or pass --overwrite")
    return index


def build_index(
    model: str, catalog: Catalog, index_dir: str | os.PathLike[str], *, head: str | os.PathLike[str] | None = None,
    vectors: VectorKind = "backbone", pretrained: bool = True, weights: str | os.PathLike[str] | None = None,
    preprocess: dict[str, Any] | None = None, uri: str | None = None, token: str = "",
    collection: str = "catalogue", index_type: str = "FLAT", overwrite: bool = False, export_onnx: bool = True,
    cache_dir: str | os.PathLike[str] | None = None, batch_size: int | None = None, num_workers: int | None = None,
    progress: bool = True, sync: bool = False, runtime: RuntimeChoice = "auto", compress: str | None = None,
    build_timeout: float = 300.0,
) -> IndexReport:
    """Embed ``catalog`` (through the per-photo cache) and add its items to the index folder's collection.

    A second call on the same folder extends it: items already indexed are left alone and only new photos
    are embedded, so re-running after new photos arrive costs time in proportion to them. ``sync`` also
    deletes the items this catalogue's folder indexed earlier that it no longer lists (items added through
    the API, or from other catalogues, are kept). The backbone must be the one the folder was built with;
    a different head may be given when the collection stores backbone vectors (it changes tagging only).
    ``compress`` (``pca256``, ``sq8``, ``pca256-sq8``; None: the folder's own, none for a new one) stores the
    vectors compressed; the projection is fitted on this catalogue at the first build and kept for every later
    addition (``serve/compression.py``). ``build_timeout``: seconds to wait for a server's index build.
    """
    started = time.perf_counter()
    if vectors == "head" and head is None:
        raise ServeError("vectors='head' stores top-tuned embeddings and needs a head: pass --head HEAD_FOLDER")
    layout = IndexLayout.at(index_dir)
    backbone = load_backbone(model, pretrained=pretrained, weights=weights, preprocess=preprocess)
    head_path = Path(head).expanduser().resolve() if head is not None else None
    embedded, rows, backbone_dim = _embed(catalog, backbone, model, head_path, vectors, runtime=runtime,
                                          batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
                                          progress=progress)
    compression = parse_compression(compress if compress is not None else _recorded(layout, overwrite), index_type)
    rows, record = _compressed(layout, compression, rows, overwrite)
    dim = record.dim if record is not None else int(rows.shape[1])
    built_type = compression.index_type(index_type)
    target = MilvusTarget(uri=uri, collection=collection, index_type=built_type,
                          params=milvus_params(built_type, dim, len(rows)))
    manifest = _manifest_for(layout, backbone, model=model, pretrained=pretrained, weights=weights,
                             backbone_dim=backbone_dim, dim=dim, vectors=vectors, head=head_path,
                             target=target, overwrite=overwrite, compression=record)
    report = IndexReport(folder=layout.folder, items=len(catalog), added=0, already_indexed=0, dim=dim,
                         vectors=vectors, skipped=[(s.item_id, s.reason) for s in embedded.skipped],
                         compression=compression.name, bytes_per_item=compression.bytes_per_item(dim))
    if overwrite and layout.uploads.is_dir():
        shutil.rmtree(layout.uploads)  # the images of API-added items go with the collection they belonged to
    layout.uploads.mkdir(parents=True, exist_ok=True)
    _fill(layout, manifest, catalog, embedded.ids, rows, report, token=token, overwrite=overwrite, sync=sync,
          build=(build_timeout, progress))
    manifest.catalogues.append(CatalogueRecord(source=catalog.name, root=manifest.root_key(catalog.root.resolve()),
                                               items=len(catalog), added=report.added))
    write_manifest(layout, manifest)
    if export_onnx:
        report.onnx, _ = ensure_onnx(backbone, layout.onnx)
    report.seconds = time.perf_counter() - started
    report.embedded = embedded.computed
    return report


def _embed(catalog: Catalog, backbone: Backbone, model: str, head_path: Path | None, vectors: VectorKind, *,
           runtime: RuntimeChoice, batch_size: int | None, num_workers: int | None,
           cache_dir: str | os.PathLike[str] | None, progress: bool) -> tuple[Embeddings, np.ndarray, int]:
    """The catalogue's embeddings, the rows to store (the head's when ``vectors`` is head) and the backbone size."""
    head_module = load_served_head(head_path)[0] if head_path is not None else None
    if vectors == "head" and isinstance(head_module, LinearHead):
        raise ServeError(f"head {head_path} is a {head_module.kind} head: it tags but has no embedding of its own "
                         "(a linear layer does not change the vectors); index with --vectors backbone")
    embedded = embed_catalog(catalog, backbone, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
                             progress=progress, runtime=runtime)
    if embedded.dim and head_module is not None and head_module.in_dim != embedded.dim:
        raise ServeError(f"head {head_path} takes {head_module.in_dim}-d embeddings but {model} gives "
                         f"{embedded.dim}-d: train the head on this backbone's embeddings")
    backbone_dim = embedded.dim or probe_dim(backbone)
    rows = embedded.vectors
    if vectors == "head" and isinstance(head_module, MLPHead):
        rows = embed_with_head(head_module, rows) if len(rows) else np.zeros((0, head_module.embed_dim), np.float32)
    elif not len(rows):
        rows = np.zeros((0, backbone_dim), dtype=np.float32)
    return embedded, rows, backbone_dim


def _recorded(layout: IndexLayout, overwrite: bool) -> str | None:
    """The compression an existing folder was built with (kept when ``--compress`` is not given)."""
    if overwrite or not layout.exists():
        return None
    manifest = read_manifest(layout)
    return recorded_method(manifest.compression, manifest.milvus.index_type)


def _compressed(layout: IndexLayout, compression: ServedCompression, rows: np.ndarray,
                overwrite: bool) -> tuple[np.ndarray, CompressionRecord | None]:
    """The rows in the stored space: a new folder fits (and saves) the projection on them, an existing one
    must have been built with the same compression and reuses its stored projection."""
    if layout.exists() and not overwrite:
        existing = read_manifest(layout)
        record = existing.compression
        check_same(record, compression, f"index {layout.folder}", existing.milvus.index_type)
    elif compression.name == "none":
        (layout.folder / PROJECTION_NAME).unlink(missing_ok=True)
        record = None
    else:
        record = fit_and_save(layout, compression, rows[np.linalg.norm(rows, axis=1) > 0.5])
    if record is None or record.projection is None:
        return rows, record
    with one_blas_thread():
        projected = load_projection(layout, record).apply(rows)
    projected[np.linalg.norm(rows, axis=1) <= 0.5] = 0.0  # degenerate rows stay degenerate, and are skipped
    return projected, record


def _fill(layout: IndexLayout, manifest: ServiceManifest, catalog: Catalog, ids: list[str], rows: np.ndarray,
          report: IndexReport, *, token: str, overwrite: bool, sync: bool, build: tuple[float, bool]) -> None:
    """Open (or create) the collection, sync and add, and measure what its index occupies on disk."""
    index = open_collection(layout, manifest, token=token, overwrite=overwrite, build_timeout=build[0],
                            build_progress=build[1])
    try:
        if sync:
            report.removed = _remove_unlisted(index, catalog, manifest)
        add_items(index, catalog, ids, rows, manifest, report, sync=sync)
        report.total = len(index)
        disk = index.disk_bytes()
        if disk is not None and report.total:
            report.index_bytes_per_item = disk.index / report.total
            report.disk_bytes_per_item = disk.total / report.total
    finally:
        index.close()


def _remove_unlisted(index: MilvusIndex, catalog: Catalog, manifest: ServiceManifest) -> int:
    """Delete the items indexed from this catalogue's root that the catalogue no longer lists."""
    root_key = manifest.root_key(catalog.root.resolve())
    listed = {item.item_id for item in catalog}
    candidates = sorted(index.stored_ids() - listed)
    stored = index.get(candidates) if candidates else {}
    gone = [item_id for item_id, row in stored.items()
            if isinstance(row.get("attributes"), dict) and row["attributes"].get("root") == root_key]
    if gone:
        index.delete(gone)
    return len(gone)


def probe_dim(backbone: Backbone) -> int:
    """The embedding size when the catalogue gave no vector to read it from (every image unreadable)."""
    import torch

    size = backbone.preprocess.input_size
    with torch.inference_mode():
        return int(backbone.encoder.eval()(torch.zeros(1, 3, size, size)).shape[1])


def _manifest_for(layout: IndexLayout, backbone: Backbone, *, model: str, pretrained: bool,
                  weights: str | os.PathLike[str] | None, backbone_dim: int, dim: int, vectors: VectorKind,
                  head: Path | None, target: MilvusTarget, overwrite: bool,
                  compression: CompressionRecord | None = None) -> ServiceManifest:
    """A new manifest, or the folder's existing one after checking that it was built the same way."""
    identity = normalised_identity(backbone.cache_identity())
    digest = head_digest(head) if head is not None else None
    if layout.exists() and not overwrite:
        manifest = read_manifest(layout)
        where = f"index {layout.folder}"
        if manifest.backbone != identity:
            raise ServeError(f"{where} was built with {manifest.model} ({manifest.backbone.get('weights')}), not "
                             f"{model} ({identity.get('weights')}): its vectors would not be comparable. Use another "
                             "--index-dir, or --overwrite to rebuild it")
        if manifest.vectors != vectors:
            raise ServeError(f"{where} stores {manifest.vectors} vectors, not {vectors}: pass --vectors "
                             f"{manifest.vectors}, or --overwrite to rebuild it")
        if vectors == "head" and manifest.head_digest != digest:
            raise ServeError(f"{where} stores the top-tuned vectors of head {manifest.head}; a different head needs "
                             "a rebuild (--overwrite)")
        if (manifest.milvus.uri, manifest.milvus.collection) != (target.uri, target.collection):
            raise ServeError(f"{where} lives in collection {manifest.milvus.collection!r} at "
                             f"{manifest.milvus.uri or 'Milvus Lite'}; pass the same --uri/--collection or "
                             "--overwrite")
        if head is not None:
            manifest.head, manifest.head_digest = str(head), digest
        return manifest
    return ServiceManifest(
        model=model, pretrained=pretrained, weights=str(Path(weights).expanduser().resolve()) if weights else None,
        preprocess=backbone.preprocess.as_dict(), backbone=identity, backbone_dim=backbone_dim, vectors=vectors,
        dim=dim, head=str(head) if head is not None else None, head_digest=digest, milvus=target,
        compression=compression)
