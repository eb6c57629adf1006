"""Batched embedding extraction with worker processes, through the per-photo cache (resumable, incremental)."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from shelfsight.backbones import Backbone, build_pixel_transform
from shelfsight.catalog.images import ImageReadError, decode_image
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings.cache import PERMANENT, TRANSIENT, Chunk, FailureKind, SkippedItem, make_chunk
from shelfsight.embeddings.plan import ExtractionPlan, assemble, plan_extraction
from shelfsight.embeddings.runtime_choice import default_threads
from shelfsight.embeddings.runtimes import RuntimeChoice
from shelfsight.embeddings.vectors_file import read_for_catalog, write_vectors
from shelfsight.errors import ImageDecodeError
from shelfsight.progress import progress_bar

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DEFAULT_CHUNK_SIZE = 1024


@dataclass
class Embeddings:
    """L2-normalised float32 vectors aligned with ``ids`` (catalogue order, skipped items left out).

    Every vector is finite: an item whose embedding came out NaN or infinite is in ``skipped`` (reason
    ``"non-finite embedding"``), as an unreadable file is."""

    ids: list[str]
    vectors: np.ndarray
    skipped: list[SkippedItem]
    key: str
    computed: int = 0
    """Items embedded in this call (the rest came from the cache)."""
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    cache_folder: Path | None = field(default=None, repr=False)
    extraction_rate: float | None = None
    """Images/s of the run that computed these vectors (kept in the cache, so known on warm reads too)."""
    runtime: str = ""
    """The runtime that computed them (torch, onnx, openvino; ``vectors file`` for a vectors model)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """For a vectors model: the file, its digest, rows, dimension, dtype, extra ids ignored, items skipped, and
    that the vectors were L2-normalised on load (cells keep it in their details)."""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def write_skip_report(self, path: str | os.PathLike[str]) -> Path:
        """CSV of item_id, path, reason, kind: what was skipped, why, and whether the next run retries it."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["item_id", "path", "reason", "kind"])
            writer.writerows([s.item_id, s.path, s.reason, s.kind] for s in self.skipped)
        return target

    def save(self, path: str | os.PathLike[str], paths: list[str] | None = None,
             metadata: dict[str, Any] | None = None) -> Path:
        """The vectors with their ids (and image ``paths``) as ``.parquet``, ``.npz`` or ``.npy`` (by suffix): the
        format a bench ``vectors`` model reads (``embeddings.vectors_file``), so vectors made on one machine are
        benchmarked on another."""
        return write_vectors(path, self.ids, self.vectors, paths,
                             {"embedding_key": self.key, "runtime": self.runtime, "precision": self.precision,
                              "dim": self.dim, "l2_normalised": True, **(metadata or {})})


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """bf16 autocast on GPUs that support it, fp32 on the CPU (where autocast rarely pays off)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def default_batch_size(device: torch.device) -> int:
    """Small batches on the CPU (they stay in cache: 16 beat 64 by 1.6x for efficientnet_lite0 on two
    cores, see benchmarks/extraction.py), large ones on a GPU."""
    return 128 if device.type == "cuda" else 16


def default_num_workers() -> int:
    """Decoding workers: one per core beyond the one that runs the model, at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def embed_catalog(
    catalog: Catalog,
    backbone: Backbone,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    precision: Precision = "auto",
    runtime: RuntimeChoice = "auto",
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    draft: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> Embeddings:
    """Embed every item of ``catalog`` with ``backbone``, reading and filling the per-photo cache.

    A file that cannot be decoded is skipped and reported, never fatal: ``len(catalog) ==
    len(result.ids) + len(result.skipped)``. Only photos (by content) the cache lacks are computed, by
    ``runtime`` (``auto``: ONNX Runtime on a CPU when it agrees with PyTorch on these photos, see
    ``runtime_choice``). ``draft`` lets the JPEG decoder downscale large photos before resizing (part of
    the cache key, since it changes pixels slightly). ``threads``: the runtime's threads (default: the
    cores the decoding workers leave).
    """
    if backbone.vectors is not None:
        return vectors_embeddings(catalog, backbone)
    torch_device = resolve_device(device)
    batch_size = batch_size or default_batch_size(torch_device)
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    workers = default_num_workers() if num_workers is None else num_workers
    resolved_precision = resolve_precision(precision, torch_device)
    transform = build_pixel_transform(backbone.preprocess)
    draft_size = backbone.preprocess.resize_size if draft else None
    plan = plan_extraction(
        catalog, backbone, requested=runtime, device=torch_device, precision=resolved_precision, draft=draft,
        threads=threads or default_threads(workers), cache_dir=cache_dir, use_cache=use_cache,
        probe=lambda positions: probe_pixels(catalog, positions, transform, draft_size))
    started = time.perf_counter()
    computed = 0
    if plan.to_compute:
        assert plan.runtime is not None and plan.report is not None
        manifest = _manifest(catalog, backbone, plan, torch_device, resolved_precision, draft)
        if use_cache:
            plan.store.update_manifest(manifest)
        parts = _compute_parts(catalog, plan, transform, draft_size, chunk_size=chunk_size, batch_size=batch_size,
                               num_workers=workers, device=torch_device, progress=progress)
        computed = store_parts(parts, plan, use_cache, on_chunk)
        if use_cache:
            seconds = time.perf_counter() - started
            plan.store.update_manifest({"images_per_second": computed / max(seconds, 1e-9),
                                        "rate_batch_size": batch_size})
    return embeddings_from_plan(catalog, plan, computed=computed, seconds=time.perf_counter() - started,
                                device=str(torch_device), precision=resolved_precision, use_cache=use_cache)


def vectors_embeddings(catalog: Catalog, backbone: Backbone) -> Embeddings:
    """A vectors model's embeddings: its file read, checked and aligned with ``catalog`` (no network, no cache)."""
    assert backbone.vectors is not None
    started = time.perf_counter()
    found = read_for_catalog(catalog, backbone.vectors)
    return Embeddings(ids=found.ids, vectors=found.vectors, skipped=found.skipped, key=found.key,
                      seconds=time.perf_counter() - started, device="-", precision=str(found.notes["dtype"]),
                      runtime="vectors file", notes=found.notes)


def _manifest(catalog: Catalog, backbone: Backbone, plan: ExtractionPlan, device: torch.device, precision: str,
              draft: bool) -> dict[str, object]:
    assert plan.report is not None
    return {"backbone": backbone.spec.name, "identity": backbone.cache_identity(),
            "precision": precision, "draft": draft, "device": str(device), "runtime": plan.report.as_dict(),
            "last_catalog": catalog.name}


def probe_pixels(catalog: Catalog, positions: list[int], transform: Callable[..., torch.Tensor],
                 draft_size: int | None, photos: int = 8) -> torch.Tensor:
    """Up to ``photos`` decodable photos among ``positions``, spread over them: a runtime's agreement check."""
    step = max(1, len(positions) // (photos * 2))
    pixels: list[torch.Tensor] = []
    for position in positions[::step]:
        try:
            pixels.append(transform(decode_image(catalog.items[position].image_path, draft_size=draft_size)))
        except Exception:  # noqa: BLE001 - an unreadable photo is no probe; extraction reports it later
            continue
        if len(pixels) == photos:
            break
    if not pixels:
        size = transform(Image.new("RGB", (8, 8))).shape[-1]
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.stack(pixels)


def store_parts(parts: Iterable[tuple[int, Chunk]], plan: ExtractionPlan, use_cache: bool,
                 on_chunk: Callable[[int], None] | None) -> int:
    """Write each computed part to the store (and into the plan, for this call's result); count the photos.

    Permanent failures are stored with the vectors; transient ones only reach this call's result, so the
    next run tries those photos again."""
    computed = 0
    for index, chunk in parts:
        digest_of = {item_id: str(plan.digests[int(item_id)]) for item_id in
                     [*chunk.ids, *(s.item_id for s in chunk.skipped)]}
        vectors = chunk.vectors if len(chunk.ids) else np.zeros((0, 1), np.float32)
        digests = [digest_of[i] for i in chunk.ids]
        failures = {digest_of[s.item_id]: s.reason for s in chunk.skipped if s.kind == PERMANENT}
        if use_cache:
            plan.store.append(digests, vectors, failures)
        plan.stored.vectors.update(zip(digests, vectors, strict=True))
        plan.stored.failures.update(failures)
        plan.stored.transient.update((digest_of[s.item_id], s.reason) for s in chunk.skipped
                                     if s.kind != PERMANENT)
        computed += len(chunk.ids) + len(chunk.skipped)
        if on_chunk is not None:
            on_chunk(index)
    return computed


def embeddings_from_plan(catalog: Catalog, plan: ExtractionPlan, *, computed: int, seconds: float, device: str,
                         precision: str, use_cache: bool) -> Embeddings:
    """The catalogue's ``Embeddings`` from a plan whose store now holds every photo: shared by both engines."""
    ids, vectors, skipped = assemble(catalog, plan)
    rate = plan.store.read_manifest_rate().get("images_per_second") if use_cache else None
    return Embeddings(ids=ids, vectors=vectors, skipped=skipped, key=plan.catalogue_key, computed=computed,
                      seconds=seconds, device=device, precision=precision,
                      cache_folder=plan.store.folder if use_cache else None,
                      extraction_rate=rate or (computed / seconds if computed and seconds > 0 else None),
                      runtime=plan.report.chosen if plan.report else _stored_runtime(plan))


def _stored_runtime(plan: ExtractionPlan) -> str:
    report = plan.store.read_manifest().get("runtime")
    return str(report.get("chosen", "")) if isinstance(report, dict) else ""


def failure_of(error: Exception) -> tuple[FailureKind, str]:
    """The kind and reason of a photo that failed to decode or preprocess, classified where it failed.

    Only a decode error (the bytes are not a usable image) is permanent. A read error, running out of memory,
    and anything else not known to be the bytes' fault is transient: remembering it would keep the photo's
    vector out of the cache for good, while retrying costs one more attempt on the next run."""
    if isinstance(error, ImageReadError):
        return TRANSIENT, error.reason
    if isinstance(error, ImageDecodeError):
        return PERMANENT, error.reason
    return TRANSIENT, f"preprocessing failed ({type(error).__name__}: {error})"


_Failure = tuple[FailureKind, str]
_Sample = tuple[int, torch.Tensor | None, _Failure | None]


class _ImageDataset(Dataset[_Sample]):
    """Decodes and preprocesses one item; a failure becomes its kind and reason, not an exception."""

    def __init__(self, image_paths: list[str], transform: Callable[..., torch.Tensor], draft_size: int | None):
        self.image_paths = image_paths
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> _Sample:
        try:
            image = decode_image(self.image_paths[index], draft_size=self.draft_size)
            return index, self.transform(image), None
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a catalogue-sized run
            return index, None, failure_of(exc)


_Batch = tuple[list[int], torch.Tensor | None, list[tuple[int, _Failure]]]


def _collate(samples: list[_Sample]) -> _Batch:
    good = [(i, t) for i, t, _ in samples if t is not None]
    failures = [(i, failure or (TRANSIENT, "unknown error")) for i, t, failure in samples if t is None]
    tensor = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], tensor, failures


def _batches_for(positions: list[int], chunk_size: int, batch_size: int) -> list[list[int]]:
    """Parts of ``chunk_size`` photos, batches never straddling parts: a resumed run computes exactly the
    batches an uninterrupted one would have for the photos left."""
    batches: list[list[int]] = []
    for start in range(0, len(positions), chunk_size):
        part = positions[start:start + chunk_size]
        batches.extend(part[s:s + batch_size] for s in range(0, len(part), batch_size))
    return batches


def _compute_parts(
    catalog: Catalog, plan: ExtractionPlan, transform: Callable[..., torch.Tensor], draft_size: int | None, *,
    chunk_size: int, batch_size: int, num_workers: int, device: torch.device, progress: bool,
) -> Iterator[tuple[int, Chunk]]:
    """Decode in worker processes, run the plan's runtime, yield whole parts (ids are catalogue positions)."""
    assert plan.runtime is not None
    items, positions = catalog.items, plan.to_compute
    dataset = _ImageDataset([str(i.image_path) for i in items], transform, draft_size)
    loader = DataLoader(
        dataset, batch_sampler=_batches_for(positions, chunk_size, batch_size), num_workers=num_workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None, multiprocessing_context="fork" if num_workers > 0 else None,
    )
    part_of = {p: k // chunk_size for k, p in enumerate(positions)}
    expected = {c: min(chunk_size, len(positions) - c * chunk_size) for c in set(part_of.values())}
    pending: dict[int, tuple[list[int], list[np.ndarray], list[SkippedItem]]] = {}
    label = f"embed {catalog.name} · {plan.runtime.name}"
    with _progress_bar(progress, len(positions), 0, label) as advance:
        for indices, pixels, failures in loader:
            vectors = plan.runtime(pixels) if pixels is not None else None
            part = part_of[indices[0] if indices else failures[0][0]]
            done, done_vectors, skipped = pending.setdefault(part, ([], [], []))
            done.extend(indices)
            if vectors is not None:
                done_vectors.append(vectors)
            skipped.extend(SkippedItem(str(i), str(items[i].image_path), reason, kind)
                           for i, (kind, reason) in failures)
            advance(len(indices) + len(failures))
            if len(done) + len(skipped) == expected[part]:
                del pending[part]
                stacked = np.concatenate(done_vectors) if done_vectors else np.zeros((0, 0), np.float32)
                yield part, make_chunk([str(i) for i in done], [str(items[i].image_path) for i in done], stacked,
                                       skipped)


def _progress_bar(enabled: bool, total: int, completed: int, description: str
                  ) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    return progress_bar(enabled, total, description, completed=completed, unit="img")
