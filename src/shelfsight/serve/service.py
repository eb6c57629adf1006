"""The visual search and tagging service as a library object: what the HTTP app calls, without HTTP.

One :class:`VisualSearchService` owns the model, the optional top-tuned head and the Milvus
collection of an index folder. It is safe to call from many threads: model inference runs under
one lock (on a CPU, two requests computing at once only slow each other down) and every Milvus
call under another (the client and :class:`~shelfsight.search.MilvusIndex`'s id mirror are not
thread-safe), so a search never sees half an addition. One service process per index folder: Milvus Lite is
single-process, and the collection's id mirror assumes one writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote as url_quote

import numpy as np
from PIL import Image

from shelfsight.adapt import MLPHead, embed_with_head, load_head, predict
from shelfsight.backbones import Backbone, load_backbone
from shelfsight.errors import ImageDecodeError
from shelfsight.search.milvus import ID_MAX_LENGTH, LABEL_MAX_LENGTH, MilvusIndex
from shelfsight.serve.encoder import (
    Encoder,
    EncoderChoice,
    EncoderReport,
    OnnxEncoder,
    Pixels,
    TorchEncoder,
    choose_encoder,
    ensure_onnx,
    probe_pixels,
)
from shelfsight.serve.errors import (
    DuplicateItemError,
    ImageOutsideRootError,
    ImageUnavailableError,
    InvalidItemError,
    ItemNotFoundError,
    ServeError,
    TaggingUnavailableError,
    UnreadableImageError,
    UnsupportedImageError,
    UploadTooLargeError,
)
from shelfsight.serve.indexer import head_digest, open_collection
from shelfsight.serve.manifest import (
    UPLOADS_ROOT,
    IndexLayout,
    ServiceManifest,
    normalised_identity,
    preprocess_overrides,
    read_manifest,
)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
STALE_UPLOAD_SECONDS = 3600
UPLOADED_SPLIT = "uploaded"
"""The ``split`` of items added through the API (catalogue items keep their dataset split)."""
_COPY_BLOCK = 1 << 16
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Item:
    id: str
    label: str
    split: str
    image_url: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    label: str
    score: float
    split: str
    image_url: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tag:
    label: str
    probability: float


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    tags: list[Tag] | None
    """The head's top classes for the query, when the service has a head (the embedding is computed once)."""
    took_ms: float


def image_url(item_id: str) -> str:
    return f"/items/{url_quote(item_id, safe='/')}/image"


class VisualSearchService:
    """Search, tag, add and delete over one index folder; open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, layout: IndexLayout, manifest: ServiceManifest, encoder: Encoder, report: EncoderReport,
                 pixels: Pixels, head: MLPHead | None, classes: list[str], index: MilvusIndex, *,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        self.layout = layout
        self.manifest = manifest
        self.encoder = encoder
        self.encoder_report = report
        self.pixels = pixels
        self.head = head
        self.classes = classes
        self.index = index
        self.max_upload_bytes = max_upload_bytes
        self._model_lock = threading.Lock()
        self._index_lock = threading.RLock()
        layout.incoming.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for stale in layout.incoming.glob("upload-*"):  # left by a process killed mid-request
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], *, encoder: EncoderChoice = "auto", token: str = "",
             max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> VisualSearchService:
        """Load the model (and head) the folder was indexed with, pick the encoder, open the collection."""
        layout = IndexLayout.at(index_dir)
        manifest = read_manifest(layout)
        backbone = load_backbone(manifest.model, pretrained=manifest.pretrained, weights=manifest.weights,
                                 preprocess=preprocess_overrides(manifest))
        if normalised_identity(backbone.cache_identity()) != manifest.backbone:
            raise ServeError(f"the weights of {manifest.model} changed since {layout.folder} was indexed "
                             f"({manifest.backbone.get('weights')} then, {backbone.weights_id} now): the stored "
                             "vectors are not comparable; rebuild with `shelfsight index --overwrite`")
        head, classes = _open_head(manifest)
        chosen, report = _open_encoder(layout, backbone, encoder)
        index = open_collection(layout, manifest, token=token)
        return cls(layout, manifest, chosen, report, Pixels(backbone.preprocess), head, classes, index,
                   max_upload_bytes=max_upload_bytes)

    def close(self) -> None:
        with self._index_lock:
            self.index.close()

    def __enter__(self) -> VisualSearchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ── uploads ───────────────────────────────────────────────────────────────────────────────

    @contextlib.contextmanager
    def receive(self, stream: IO[bytes]) -> Iterator[Path]:
        """Spool an upload to a private file, refusing it once it passes the size limit; removed on exit
        unless :meth:`add_item` moved it into the uploads folder."""
        descriptor, name = tempfile.mkstemp(prefix="upload-", dir=self.layout.incoming)
        path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                size = 0
                while block := stream.read(_COPY_BLOCK):
                    size += len(block)
                    if size > self.max_upload_bytes:
                        raise UploadTooLargeError(f"upload larger than the limit of {self.max_upload_bytes:,} bytes")
                    handle.write(block)
            yield path
        finally:
            path.unlink(missing_ok=True)

    # ── model ─────────────────────────────────────────────────────────────────────────────────

    def embed(self, path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
        """(backbone embedding, indexed-space vector) of one photo; the two are equal for backbone indexes."""
        try:
            pixels = self.pixels(path)
        except ImageDecodeError as error:
            if error.reason.startswith("not an image") and not has_image_signature(path):
                raise UnsupportedImageError(f"the upload is not an image ({error.reason}); send a JPEG, PNG, WebP, "
                                            "GIF, BMP or TIFF photo") from None
            raise UnreadableImageError(f"the upload cannot be decoded as an image: {error.reason}") from None
        with self._model_lock:
            raw = self.encoder(pixels[None])
            vector = embed_with_head(self.head, raw) if self.manifest.vectors == "head" and self.head else raw
        return raw[0], vector[0]

    def require_tagging(self) -> MLPHead:
        if self.head is None:
            raise TaggingUnavailableError("this index has no top-tuned head, so it cannot tag: extend it with "
                                          "`shelfsight index --head HEAD_FOLDER` (same model and catalogue)")
        return self.head

    def _tags(self, raw: np.ndarray, top: int) -> list[Tag]:
        head = self.require_tagging()
        with self._model_lock:
            _, probabilities = predict(head, raw[None])
        order = np.argsort(-probabilities[0], kind="stable")[:top]
        return [Tag(self.classes[i], float(probabilities[0, i])) for i in order]

    # ── requests ──────────────────────────────────────────────────────────────────────────────

    def search(self, path: str | os.PathLike[str], *, k: int = 10, category: str | None = None,
               tags: int = 5) -> SearchOutcome:
        """The top ``k`` items like the photo (cosine similarity), optionally within one label; plus its tags."""
        started = time.perf_counter()
        raw, vector = self.embed(path)
        with self._index_lock:
            result = self.index.search(vector[None], k, label=category or None)
            ids = [item_id for item_id in result.ids[0] if item_id]
            records = self.index.get(ids)
        hits = [Hit(id=item_id, label=records[item_id]["label"], score=float(score), split=records[item_id]["split"],
                    image_url=image_url(item_id), metadata=_metadata(records[item_id]))
                for item_id, score in zip(result.ids[0], result.scores[0], strict=True) if item_id in records]
        predicted = self._tags(raw, tags) if self.head is not None and tags > 0 else None
        return SearchOutcome(hits, predicted, (time.perf_counter() - started) * 1000.0)

    def tag(self, path: str | os.PathLike[str], *, top: int = 5) -> list[Tag]:
        """The head's ``top`` most probable classes for the photo, most probable first."""
        self.require_tagging()
        raw, _ = self.embed(path)
        return self._tags(raw, top)

    def add_item(self, path: Path, item_id: str, label: str = "", metadata: Mapping[str, Any] | None = None) -> Item:
        """Embed the photo and add it; searchable at once. The file is moved into the service's uploads folder."""
        _check_item(item_id, label, metadata)
        _, vector = self.embed(path)
        if not float(np.linalg.norm(vector)) > 0.5:
            raise UnreadableImageError("this photo's top-tuned embedding is all zeros, so it cannot be indexed")
        media_type, suffix = _media_type(path)
        stored = self.layout.uploads / (hashlib.sha256(item_id.encode()).hexdigest()[:40] + suffix)
        attributes = {"root": UPLOADS_ROOT, "path": stored.name, "media_type": media_type,
                      "metadata": dict(metadata or {})}
        with self._index_lock:
            if self.index.get([item_id]):
                raise DuplicateItemError(f"an item with id {item_id!r} already exists; delete it first to replace it")
            os.replace(path, stored)
            try:
                self.index.add([item_id], vector[None], [label], [UPLOADED_SPLIT], [attributes])
            except BaseException:
                stored.unlink(missing_ok=True)
                raise
        return Item(item_id, label, UPLOADED_SPLIT, image_url(item_id), dict(metadata or {}))

    def delete_item(self, item_id: str) -> None:
        """Remove the item from the index (at once) and, for an uploaded item, its stored image."""
        with self._index_lock:
            record = self.index.get([item_id]).get(item_id)
            if record is None:
                raise ItemNotFoundError(f"no item with id {item_id!r}")
            self.index.delete([item_id])
            attributes = record.get("attributes") or {}
            if attributes.get("root") == UPLOADS_ROOT and attributes.get("path"):
                (self.layout.uploads / Path(str(attributes["path"])).name).unlink(missing_ok=True)

    def item(self, item_id: str) -> Item:
        record = self._record(item_id)
        return Item(item_id, record["label"], record["split"], image_url(item_id), _metadata(record))

    def image_file(self, item_id: str) -> tuple[Path, str | None]:
        """(file, media type) of the item's image, only if registered and resolved inside its root."""
        attributes = self._record(item_id).get("attributes") or {}
        key, relative = attributes.get("root"), attributes.get("path")
        folder = self.layout.uploads if key == UPLOADS_ROOT else self.manifest.roots.get(str(key))
        if folder is None or not relative:
            raise ImageUnavailableError(f"item {item_id!r} has no servable image (it lies outside its catalogue)")
        root = Path(folder).resolve()
        candidate = (root / str(relative)).resolve()
        if not candidate.is_relative_to(root):
            raise ImageOutsideRootError(f"the image of item {item_id!r} resolves outside its catalogue folder: refused")
        if not candidate.is_file():
            raise ImageUnavailableError(f"the image file of item {item_id!r} is missing")
        return candidate, attributes.get("media_type")

    def _record(self, item_id: str) -> dict[str, Any]:
        with self._index_lock:
            record = self.index.get([item_id]).get(item_id)
        if record is None:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        return record

    def count(self) -> int:
        with self._index_lock:
            return len(self.index)

    def health(self) -> dict[str, Any]:
        """What is served: model, vectors, encoder (and why), item count, whether tagging is available."""
        return {"status": "ok", "items": self.count(), "model": self.manifest.model, "vectors": self.manifest.vectors,
                "dim": self.manifest.dim, "encoder": self.encoder.name, "encoder_report": asdict(self.encoder_report),
                "tagging": self.head is not None, "classes": list(self.classes),
                "max_upload_bytes": self.max_upload_bytes}


def _open_head(manifest: ServiceManifest) -> tuple[MLPHead | None, list[str]]:
    if manifest.head is None:
        return None, []
    folder = Path(manifest.head)
    if not folder.is_dir():
        raise ServeError(f"the head {folder} recorded in the index is missing: restore it, or re-run `shelfsight "
                         "index` on this folder with --head pointing at its new place")
    if manifest.vectors == "head" and head_digest(folder) != manifest.head_digest:
        raise ServeError(f"the head {folder} changed since the index stored its top-tuned vectors: rebuild with "
                         "`shelfsight index --overwrite`")
    head, classes, _ = load_head(folder)
    if head.in_dim != manifest.backbone_dim:
        raise ServeError(f"the head {folder} takes {head.in_dim}-d inputs but {manifest.model} gives "
                         f"{manifest.backbone_dim}-d embeddings")
    return head, classes


def _open_encoder(layout: IndexLayout, backbone: Backbone, choice: EncoderChoice) -> tuple[Encoder, EncoderReport]:
    torch_encoder = TorchEncoder(backbone)
    onnx_encoder = None
    note = ""
    if choice != "torch":
        try:
            path, _ = ensure_onnx(backbone, layout.onnx)
            onnx_encoder = OnnxEncoder(path)
        except (ServeError, OSError) as error:
            if choice == "onnx":
                raise ServeError(f"cannot serve through ONNX Runtime: {error}") from error
            note = f"ONNX unavailable ({error}); "
    chosen, report = choose_encoder(torch_encoder, onnx_encoder, probe_pixels(backbone.preprocess), choice=choice)
    return chosen, EncoderReport(**{**asdict(report), "note": note + report.note}) if note else report


def _metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict((record.get("attributes") or {}).get("metadata") or {})


def _check_item(item_id: str, label: str, metadata: Mapping[str, Any] | None) -> None:
    if not item_id or len(item_id.encode()) > ID_MAX_LENGTH:
        raise InvalidItemError(f"an item id must be 1 to {ID_MAX_LENGTH} bytes of UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in item_id + label):
        raise InvalidItemError("item ids and labels cannot hold control characters")
    if len(label.encode()) > LABEL_MAX_LENGTH:
        raise InvalidItemError(f"a label must be at most {LABEL_MAX_LENGTH} bytes of UTF-8")
    if metadata is not None and len(json.dumps(dict(metadata)).encode()) > MAX_METADATA_BYTES:
        raise InvalidItemError(f"metadata must be at most {MAX_METADATA_BYTES:,} bytes of JSON")


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def has_image_signature(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a common image format: such a file that fails to decode is corrupt
    (422), not of an unsupported type (415)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _media_type(path: Path) -> tuple[str, str]:
    """(media type, file suffix) of an image that already decoded, from its header."""
    with Image.open(path) as image:
        kind = image.format or ""
    return Image.MIME.get(kind, "application/octet-stream"), _EXTENSIONS.get(kind, ".img")
