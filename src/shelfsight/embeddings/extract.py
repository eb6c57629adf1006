"""Batched embedding extraction with worker processes, resumable through the chunk cache."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shelfsight import paths
from shelfsight.backbones import Backbone, Preprocess, build_pixel_transform, normalize_pixels
from shelfsight.catalog.images import decode_image
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings.cache import Chunk, EmbeddingCache, SkippedItem, cache_key, make_chunk
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

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def write_skip_report(self, path: str | os.PathLike[str]) -> Path:
        """CSV of item_id, path, reason: what was skipped and why."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["item_id", "path", "reason"])
            writer.writerows([s.item_id, s.path, s.reason] for s in self.skipped)
        return target

    def save(self, path: str | os.PathLike[str]) -> Path:
        """An ``.npz`` with ``ids`` and ``vectors``, for use outside shelfsight."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, ids=np.array(self.ids, dtype=str), vectors=self.vectors)
        return target


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
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    draft: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> Embeddings:
    """Embed every item of ``catalog`` with ``backbone``, reading and filling the cache.

    A file that cannot be decoded is skipped and reported, never fatal: ``len(catalog) ==
    len(result.ids) + len(result.skipped)``. ``draft`` lets the JPEG decoder downscale large
    photos before resizing (part of the cache key, since it changes pixels slightly).
    """
    torch_device = resolve_device(device)
    batch_size = batch_size or default_batch_size(torch_device)
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    resolved_precision = resolve_precision(precision, torch_device)
    encoder, fused = prepare_for_inference(backbone.encoder, torch_device)
    key = embedding_cache_key(catalog, backbone, draft=draft, precision=resolved_precision, chunk_size=chunk_size,
                              fused=fused)
    cache = EmbeddingCache(paths.cache_dir(cache_dir), key)
    n_chunks = math.ceil(len(catalog) / chunk_size)
    missing = [i for i in range(n_chunks) if not (use_cache and cache.has_chunk(i))]
    manifest = {
        "catalog": catalog.name, "items": len(catalog), "chunk_size": chunk_size, "chunks": n_chunks,
        "backbone": backbone.spec.name, "identity": backbone.cache_identity(), "precision": resolved_precision,
        "draft": draft, "device": str(torch_device), **cache.read_manifest_rate(),
    }
    if use_cache and missing:
        cache.write_manifest(manifest)
    started = time.perf_counter()
    chunks_in = _compute_chunks(
        catalog, backbone, encoder, missing, chunk_size=chunk_size, batch_size=batch_size,
        num_workers=default_num_workers() if num_workers is None else num_workers, device=torch_device,
        precision=resolved_precision, draft=draft, progress=progress, already_done=len(catalog)
        - sum(min(chunk_size, len(catalog) - i * chunk_size) for i in missing),
    ) if missing else iter(())
    computed, computed_chunks = _store_chunks(chunks_in, cache if use_cache else None, on_chunk)
    seconds = time.perf_counter() - started
    if computed:
        manifest.update({"images_per_second": computed / seconds, "rate_batch_size": batch_size})
        if use_cache:
            cache.write_manifest(manifest)
    chunks = [computed_chunks[i] if i in computed_chunks else cache.read_chunk(i) for i in range(n_chunks)]
    return embeddings_from_chunks(
        chunks, key=key, computed=computed, seconds=seconds, device=str(torch_device), precision=resolved_precision,
        cache_folder=cache.folder if use_cache else None, extraction_rate=manifest.get("images_per_second"),
        catalog=catalog)


def _store_chunks(chunks: Iterable[tuple[int, Chunk]], cache: EmbeddingCache | None,
                  on_chunk: Callable[[int], None] | None) -> tuple[int, dict[int, Chunk]]:
    """Write each computed chunk to the cache (or keep it in memory without one); count the items."""
    computed, kept = 0, {}
    for index, chunk in chunks:
        computed += len(chunk.ids) + len(chunk.skipped)
        if cache is not None:
            cache.write_chunk(index, chunk)
        else:
            kept[index] = chunk
        if on_chunk is not None:
            on_chunk(index)
    return computed, kept


def embeddings_from_chunks(chunks: list[Chunk], *, key: str, computed: int, seconds: float, device: str,
                           precision: str, cache_folder: Path | None, extraction_rate: object,
                           catalog: Catalog | None = None) -> Embeddings:
    """Concatenate cache chunks (in catalogue order) into one ``Embeddings``: shared by every engine.

    Non-finite vectors are refused here too (a chunk cached before they were refused at extraction may hold
    some): such items move to ``skipped``, with their path from ``catalog``."""
    if any(len(c.ids) and not np.isfinite(c.vectors).all() for c in chunks):
        where = {item.item_id: str(item.image_path) for item in catalog} if catalog is not None else {}
        chunks = [make_chunk(c.ids, [where.get(i, "") for i in c.ids], c.vectors, c.skipped) for c in chunks]
    vectors = [c.vectors for c in chunks if len(c.ids)]
    dim = vectors[0].shape[1] if vectors else 0
    return Embeddings(
        ids=[item_id for c in chunks for item_id in c.ids],
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
        skipped=[s for c in chunks for s in c.skipped], key=key, computed=computed, seconds=seconds,
        device=device, precision=precision, cache_folder=cache_folder,
        extraction_rate=extraction_rate,  # type: ignore[arg-type]
    )


def embedding_cache_key(catalog: Catalog, backbone: Backbone, *, draft: bool, precision: str, chunk_size: int,
                        fused: bool) -> str:
    """The cache key of a catalogue embedded by a backbone: shared by every engine (one process, Ray)."""
    return cache_key({
        "backbone": backbone.cache_identity(), "catalog": catalog.fingerprint(), "draft": draft,
        "precision": precision, "chunk_size": chunk_size, "fused": fused,
    })


class _ImageDataset(Dataset[tuple[int, torch.Tensor | None, str | None]]):
    """Decodes and preprocesses one item; a failure becomes a reason, not an exception."""

    def __init__(self, image_paths: list[str], transform: Callable[..., torch.Tensor], draft_size: int | None):
        self.image_paths = image_paths
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = decode_image(self.image_paths[index], draft_size=self.draft_size)
            return index, self.transform(image), None
        except ImageDecodeError as exc:
            return index, None, exc.reason
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a catalogue-sized run
            return index, None, f"preprocessing failed ({type(exc).__name__}: {exc})"


_Batch = tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]


def _collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> _Batch:
    good = [(i, t) for i, t, _ in samples if t is not None]
    failures = [(i, reason or "unknown error") for i, t, reason in samples if t is None]
    tensor = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], tensor, failures


def _batches_for(chunks: list[int], chunk_size: int, total: int, batch_size: int) -> list[list[int]]:
    """Batches never straddle chunks, so a resumed run computes exactly the batches of a full one."""
    batches: list[list[int]] = []
    for chunk in chunks:
        start, stop = chunk * chunk_size, min(total, (chunk + 1) * chunk_size)
        batches.extend(list(range(s, min(stop, s + batch_size))) for s in range(start, stop, batch_size))
    return batches


def _compute_chunks(
    catalog: Catalog, backbone: Backbone, encoder: torch.nn.Module, chunks: list[int], *, chunk_size: int,
    batch_size: int, num_workers: int, device: torch.device, precision: str, draft: bool, progress: bool,
    already_done: int,
) -> Iterator[tuple[int, Chunk]]:
    items = catalog.items
    dataset = _ImageDataset([str(i.image_path) for i in items], build_pixel_transform(backbone.preprocess),
                            backbone.preprocess.resize_size if draft else None)
    loader = DataLoader(
        dataset, batch_sampler=_batches_for(chunks, chunk_size, len(items), batch_size), num_workers=num_workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None, multiprocessing_context="fork" if num_workers > 0 else None,
    )
    pending: dict[int, tuple[list[int], list[np.ndarray], list[SkippedItem]]] = {}
    expected = {c: min(chunk_size, len(items) - c * chunk_size) for c in chunks}
    with _progress_bar(progress, len(items), already_done, f"embed {catalog.name} · {backbone.spec.name}") as advance:
        for indices, pixels, failures in loader:
            vectors = _forward(encoder, pixels, backbone.preprocess, device, precision) if pixels is not None else None
            chunk = (indices[0] if indices else failures[0][0]) // chunk_size
            done_ids, done_vectors, skipped = pending.setdefault(chunk, ([], [], []))
            done_ids.extend(indices)
            if vectors is not None:
                done_vectors.append(vectors)
            skipped.extend(SkippedItem(items[i].item_id, str(items[i].image_path), r) for i, r in failures)
            advance(len(indices) + len(failures))
            if len(done_ids) + len(skipped) == expected[chunk]:
                del pending[chunk]
                dim_vectors = np.concatenate(done_vectors) if done_vectors else np.zeros((0, 0), np.float32)
                yield chunk, make_chunk([items[i].item_id for i in done_ids], [str(items[i].image_path)
                                                                               for i in done_ids],
                                        dim_vectors, skipped)


def prepare_for_inference(encoder: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """Eval mode on ``device``, batch norm folded into convolutions where the graph can be traced,
    channels-last memory: about twice the CPU throughput of a plain eval model for CNNs, and the same
    numbers up to float rounding. Returns the model and whether folding applied (part of cache keys).
    """
    from torch.fx.experimental.optimization import fuse

    model = encoder.to(device).eval()
    try:
        model, fused = fuse(model), True
    except Exception:  # noqa: BLE001 - untraceable models (dynamic control flow) run unfused
        fused = False
    return model.to(memory_format=torch.channels_last), fused


def _forward(
    encoder: torch.nn.Module, pixels: torch.Tensor, preprocess: Preprocess, device: torch.device, precision: str
) -> np.ndarray:
    """uint8 batch -> L2-normalised float32 vectors."""
    autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    with torch.inference_mode():
        batch = normalize_pixels(pixels.to(device, non_blocking=True), preprocess)
        with autocast:
            features = encoder(batch.contiguous(memory_format=torch.channels_last))
        features = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _progress_bar(enabled: bool, total: int, completed: int, description: str
                  ) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    return progress_bar(enabled, total, description, completed=completed, unit="img")
