"""The visual search and tagging service as a library object: what the HTTP app calls, without HTTP.

One :class:`VisualSearchService` owns the model, the optional top-tuned head and the Milvus
collection of an index folder, and is safe to call from many threads. A search runs:

1. **decode** in the request's thread, bounded (:class:`~shelfsight.serve.decode.BoundedDecoder`: pixel
   budget, early reduction, a semaphore on concurrent decodes);
2. **embed** in the encoder stage, micro-batched with the other requests' photos (one encoder call);
3. **search** in the Milvus stage, micro-batched too (one batched Milvus search), results split back.

With ``max_batch=1`` the stages run in the request's thread under their locks instead (no batching).
Catalogue changes take the collection's lock, so a search never sees half an addition. One service
process per index folder: Milvus Lite is single-process, and the collection's id mirror assumes one writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from shelfsight.backbones import load_backbone
from shelfsight.search.milvus import MilvusIndex
from shelfsight.search.milvus_fields import VECTOR_FIELD, id_filter
from shelfsight.serve.batching import lower_thread_priority, runner
from shelfsight.serve.compression import load_projection
from shelfsight.serve.decode import BoundedDecoder, media_type
from shelfsight.serve.encoder import Encoder, EncoderChoice, EncoderReport
from shelfsight.serve.errors import (
    DuplicateItemError,
    ImageOutsideRootError,
    ImageUnavailableError,
    IndexReadOnlyError,
    ItemNotFoundError,
    ServeError,
    TaggingUnavailableError,
    UnreadableImageError,
    UploadTooLargeError,
)
from shelfsight.serve.indexer import ServedHead
from shelfsight.serve.manifest import (
    UPLOADS_ROOT,
    IndexLayout,
    ServiceManifest,
    preprocess_overrides,
    read_manifest,
)
from shelfsight.serve.opening import (
    ServiceOptions,
    check_not_locked,
    check_weights,
    open_encoder,
    open_head,
    open_served_collection,
)
from shelfsight.serve.pipeline import Embedded, EmbedStage, Hit, Lookup, SearchStage, record_metadata
from shelfsight.serve.validation import check_item_id, check_metadata, image_url

UPLOADED_SPLIT = "uploaded"
"""The ``split`` of items added through the API (catalogue items keep their dataset split)."""
_COPY_BLOCK = 1 << 16


@dataclass(frozen=True)
class Item:
    id: str
    label: str
    split: str
    image_url: str
    metadata: dict[str, Any]


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


class VisualSearchService:
    """Search, tag, add and delete over one index folder; open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, layout: IndexLayout, manifest: ServiceManifest, encoder: Encoder, report: EncoderReport,
                 decoder: BoundedDecoder, head: tuple[ServedHead, list[str]] | None, index: MilvusIndex, *,
                 options: ServiceOptions | None = None, images_from: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.options = options or ServiceOptions()
        self.images_from = tuple(Path(folder).resolve() for folder in images_from)
        """Folders the user allowed images to be served from beyond the index's roots (``--allow-images-from``)."""
        self.layout, self.manifest, self.index = layout, manifest, index
        self.encoder, self.encoder_report, self.decoder = encoder, report, decoder
        self.head: ServedHead | None = head[0] if head is not None else None
        self.classes: list[str] = head[1] if head is not None else []
        self._index_lock = threading.RLock()
        batch, wait = self.options.max_batch, self.options.max_wait_ms
        projection = load_projection(layout, manifest.compression)
        self.embed_stage = EmbedStage(encoder, self.head, head_vectors=manifest.vectors == "head",
                                      projection=projection)
        self.search_stage = SearchStage(index, self._index_lock, projection)
        self._embedder = runner(self.embed_stage, max_batch=batch, max_wait_ms=wait, name="encoder")
        self._searcher = runner(self.search_stage, max_batch=batch, max_wait_ms=wait, name="milvus")
        self._batch_lane = ThreadPoolExecutor(max(1, decoder.concurrency - 1), "shelfsight-batch-decode",
                                              initializer=lower_thread_priority)
        """Decodes ``/search/batch`` photos: fewer threads than decode slots (a single search always finds one),
        at a lower CPU priority (a batch of large photos uses the CPU that single searches leave)."""
        layout.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in layout.incoming.glob("upload-*"):  # left by a process killed mid-request
            with contextlib.suppress(OSError):
                leftover.unlink()

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], *, encoder: EncoderChoice = "auto", token: str = "",
             uri: str | None = None, options: ServiceOptions | None = None,
             images_from: Sequence[str | os.PathLike[str]] = ()) -> VisualSearchService:
        """Load the model (and head) the folder was indexed with, pick the encoder, open the collection
        (``uri`` overrides the Milvus server recorded in the folder). ``images_from``: folders whose images are
        served also for items that lie outside their catalogue's root."""
        for folder in images_from:
            if not Path(folder).is_dir():
                raise ServeError(f"--allow-images-from {folder}: no such folder")
        layout = IndexLayout.at(index_dir)
        manifest = read_manifest(layout)
        if uri is not None:
            manifest = manifest.model_copy(update={"milvus": manifest.milvus.model_copy(update={"uri": uri})})
        check_not_locked(layout, manifest)  # before the model loads: a second process fails at once, saying why
        backbone = load_backbone(manifest.model, pretrained=manifest.pretrained, weights=manifest.weights,
                                 preprocess=preprocess_overrides(manifest))
        check_weights(layout, manifest, backbone)
        head = open_head(manifest)
        chosen, report = open_encoder(layout, backbone, encoder)
        index = open_served_collection(layout, manifest, token=token)
        opts = options or ServiceOptions()
        decoder = BoundedDecoder(backbone.preprocess, max_pixels=opts.max_decode_pixels,
                                 concurrency=opts.decode_concurrency)
        return cls(layout, manifest, chosen, report, decoder, head, index, options=opts, images_from=images_from)

    def close(self) -> None:
        self._batch_lane.shutdown(wait=True, cancel_futures=True)
        self._embedder.close()
        self._searcher.close()
        with self._index_lock:
            self.index.close()

    def __enter__(self) -> VisualSearchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_upload_bytes(self) -> int:
        return self.options.max_upload_bytes

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

    def embed_photo(self, path: str | os.PathLike[str]) -> Embedded:
        """Decode (bounded) and embed one photo, batched with concurrent requests."""
        with self._searcher.expecting():  # this request will search soon: worth a short wait
            with self._embedder.expecting():
                pixels = self.decoder(path)
            return self._embedder.submit(pixels)

    def require_tagging(self) -> ServedHead:
        if self.head is None:
            raise TaggingUnavailableError("this index has no head, so it cannot tag: extend it with `shelfsight "
                                          "index --head RUN/work/CELL/head` (the top-tuned head of a toptune cell, "
                                          "or the head of a linear or ncm cell, of the same model; same catalogue)")
        return self.head

    def _tags(self, embedded: Embedded, top: int) -> list[Tag] | None:
        if embedded.probabilities is None or top <= 0:
            return None
        order = np.argsort(-embedded.probabilities, kind="stable")[:top]
        return [Tag(self.classes[i], float(embedded.probabilities[i])) for i in order]

    # ── requests ──────────────────────────────────────────────────────────────────────────────

    def search(self, path: str | os.PathLike[str], *, k: int = 10, category: str | None = None,
               tags: int = 5) -> SearchOutcome:
        """The top ``k`` items like the photo (cosine similarity), optionally within one label; plus its tags."""
        started = time.perf_counter()
        embedded = self.embed_photo(path)
        hits = self._searcher.submit(Lookup(embedded.vector, k, category or None))
        return SearchOutcome(hits, self._tags(embedded, tags), (time.perf_counter() - started) * 1000.0)

    def search_many(self, paths: Sequence[str | os.PathLike[str]], *, k: int = 10, category: str | None = None,
                    tags: int = 5) -> list[SearchOutcome | ServeError]:
        """Several photos of one request; a photo that cannot be used gets its error in its place, the others
        their results. Fair to single searches: the photos are decoded one at a time in the batch lane (threads at a
        lower CPU priority, fewer than the decode slots, so a single request always finds one), and go through the
        same micro-batches as single searches, at most ``batch_in_flight`` queued per stage."""
        started = time.perf_counter()
        outcomes: list[SearchOutcome | ServeError | None] = [None] * len(paths)
        embedding: deque[tuple[int, Future[Embedded]]] = deque()
        searching: deque[tuple[int, Embedded, Future[list[Hit]]]] = deque()

        def advance(limit: int) -> None:
            while len(embedding) > limit:
                position, pending = embedding.popleft()
                one = pending.result()
                searching.append((position, one, self._searcher.enqueue(Lookup(one.vector, k, category or None))))
            while len(searching) > limit:
                position, one, found = searching.popleft()
                outcomes[position] = SearchOutcome(found.result(), self._tags(one, tags),
                                                   (time.perf_counter() - started) * 1000.0)

        for position, path in enumerate(paths):
            try:
                pixels = self._batch_lane.submit(self.decoder, path).result()
            except ServeError as error:
                outcomes[position] = error
                continue
            advance(self.options.batch_in_flight - 1)
            embedding.append((position, self._embedder.enqueue(pixels)))
        advance(0)
        return [outcome for outcome in outcomes if outcome is not None]

    def tag(self, path: str | os.PathLike[str], *, top: int = 5) -> list[Tag]:
        """The head's ``top`` most probable classes for the photo, most probable first."""
        self.require_tagging()
        return self._tags(self.embed_photo(path), top) or []

    def similar(self, item_id: str, *, k: int = 10, category: str | None = None) -> list[Hit]:
        """The ``k`` items nearest a stored item, from its stored vector (no re-encoding), itself left out."""
        with self._index_lock:
            client = self.index.client
            if client is None:
                raise ServeError("the collection is closed")
            rows = client.query(self.index.collection, filter=id_filter([item_id]), output_fields=[VECTOR_FIELD],
                                consistency_level=self.index.requests.consistency)
        if not rows:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        vector = np.asarray(rows[0][VECTOR_FIELD], dtype=np.float32)
        return self._searcher.submit(Lookup(vector, k, category or None, exclude=item_id))

    def add_item(self, path: Path, item_id: str, label: str = "", metadata: Mapping[str, Any] | None = None) -> Item:
        """Embed the photo and add it; searchable at once. The file is moved into the service's uploads folder."""
        check_item_id(item_id)
        stored_metadata = dict(metadata or {})
        check_metadata(stored_metadata)
        if not self.index.has_attributes:
            raise IndexReadOnlyError("this collection was loaded without the attributes field (a bare `shelfsight "
                                     "bulk-index`), so items cannot be added through the API; bulk-load it with "
                                     "--index-dir to make it writable")
        vector = self.embed_photo(path).vector
        if not float(np.linalg.norm(vector)) > 0.5:
            raise UnreadableImageError("this photo's top-tuned embedding is all zeros, so it cannot be indexed")
        kind, suffix = media_type(path)
        stored = self.layout.uploads / (hashlib.sha256(item_id.encode()).hexdigest()[:40] + suffix)
        attributes = {"root": UPLOADS_ROOT, "path": stored.name, "media_type": kind, "metadata": stored_metadata}
        with self._index_lock:
            if self.index.get([item_id]):
                raise DuplicateItemError(f"an item with id {item_id!r} already exists; delete it first to replace it")
            os.replace(path, stored)
            try:
                self.index.add([item_id], vector[None], [label], [UPLOADED_SPLIT], [attributes])
            except BaseException:
                stored.unlink(missing_ok=True)
                raise
        return Item(item_id, label, UPLOADED_SPLIT, image_url(item_id), stored_metadata)

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
        return Item(item_id, record["label"], record["split"], image_url(item_id), record_metadata(record))

    def image_file(self, item_id: str) -> tuple[Path, str | None]:
        """(file, media type) of the item's image, only if registered and resolved inside its root, or, for an item
        indexed from outside its catalogue's root, inside a folder the user allowed (``--allow-images-from``)."""
        attributes = self._record(item_id).get("attributes") or {}
        key, relative = attributes.get("root"), attributes.get("path")
        folder = self.layout.uploads if key == UPLOADS_ROOT else self.manifest.roots.get(str(key))
        if folder is not None and not relative and attributes.get("file"):
            candidate = self._allowed_outside(item_id, Path(str(attributes["file"])))
        elif folder is None or not relative:
            raise ImageUnavailableError(f"item {item_id!r} has no servable image (the collection records no image "
                                        "path for it)")
        else:
            root = Path(folder).resolve()
            candidate = (root / str(relative)).resolve()
            if not candidate.is_relative_to(root):
                raise ImageOutsideRootError(f"the image of item {item_id!r} resolves outside its catalogue folder: "
                                            "refused")
        if not candidate.is_file():
            raise ImageUnavailableError(f"the image file of item {item_id!r} is missing")
        return candidate, attributes.get("media_type")

    def _allowed_outside(self, item_id: str, file: Path) -> Path:
        """The image of an item indexed from outside its catalogue's root, if it resolves inside an allowed folder.
        The message names the fix, never the server's path."""
        candidate = file.resolve()
        if any(candidate.is_relative_to(allowed) for allowed in self.images_from):
            return candidate
        if self.images_from:
            raise ImageOutsideRootError(f"the image of item {item_id!r} is outside the folders this service may "
                                        "serve: refused")
        raise ImageUnavailableError(f"the image of item {item_id!r} lies outside its catalogue's folder: serve it "
                                    "with `shelfsight serve --allow-images-from FOLDER`, or re-index with "
                                    "--image-root FOLDER holding every photo")

    def _record(self, item_id: str) -> dict[str, Any]:
        with self._index_lock:
            record = self.index.get([item_id]).get(item_id)
        if record is None:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        return record

    def count(self) -> int:
        with self._index_lock:
            return len(self.index)

    def _compression(self) -> dict[str, Any]:
        """What ``--compress`` the index was built with, its Milvus index type and bytes per stored code."""
        record = self.manifest.compression
        return {"method": record.method if record else "none", "index_type": self.manifest.milvus.index_type,
                "source_dim": record.source_dim if record else self.manifest.dim,
                "bytes_per_item": record.bytes_per_item if record else 4 * self.manifest.dim}

    def health(self) -> dict[str, Any]:
        """What is served: model, vectors, encoder (and why), item count, tagging, batching and decode bounds."""
        return {"status": "ok", "items": self.count(), "model": self.manifest.model, "vectors": self.manifest.vectors,
                "dim": self.manifest.dim, "compression": self._compression(), "encoder": self.encoder.name,
                "encoder_report": asdict(self.encoder_report),
                "tagging": self.head is not None, "classes": list(self.classes),
                "max_upload_bytes": self.max_upload_bytes, "writable": self.index.has_attributes,
                "batching": {"max_batch": self.options.max_batch, "max_wait_ms": self.options.max_wait_ms,
                             "batch_in_flight": self.options.batch_in_flight,
                             "encoder": asdict(self._embedder.stats), "milvus": asdict(self._searcher.stats)},
                "decode": {"max_pixels": self.decoder.max_pixels, "concurrency": self.decoder.concurrency,
                           "per_decode_bytes": self.decoder.per_decode_bytes,
                           "memory_bound_bytes": self.decoder.memory_bound_bytes}}
