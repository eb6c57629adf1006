"""Catalogue-sized extraction on Ray Data: the same numbers and the same cache as ``embed_catalog``.

The pipeline has three stages, each where it scales:

1. decode and preprocess (CPU tasks, as many as the cluster has cores): path -> uint8 pixels, or the
   reason the file was skipped;
2. the backbone (an actor pool: one actor per GPU, or CPU actors), which normalises, runs the model
   and L2-normalises exactly as single-machine extraction does (on a CPU-only cluster the two stages
   ask for the same resources and Ray Data fuses them into the actors, which saves moving pixels
   through the object store; GPU actors keep decoding on the CPU tasks);
3. the driver, which streams the vectors back, cuts them into the cache's chunks along catalogue
   order and writes each chunk (and a Parquet shard of it for bulk indexing) as soon as it is whole.

The plan (which photos the per-photo cache lacks, which runtime computes them, checked against PyTorch
on those photos) is the single-machine one, so a Ray run fills the cache that ``embed_catalog`` reads
(and the reverse), and an interrupted Ray run resumes part by part. Ray retries a failed decode task
and restarts a dead actor; the driver keys rows by catalogue position, so a retried block can neither
duplicate nor drop an item. (Ray Data's defaults already retry tasks and restart actors without
limit on system failures: a killed worker process or node.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.backbones import Backbone, Preprocess, build_pixel_transform, load_backbone
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings.cache import PERMANENT, TRANSIENT, Chunk, FailureKind, SkippedItem, make_chunk
from shelfsight.embeddings.extract import (
    DEFAULT_CHUNK_SIZE,
    Embeddings,
    Precision,
    default_batch_size,
    embeddings_from_plan,
    failure_of,
    probe_pixels,
    resolve_device,
    resolve_precision,
    store_parts,
)
from shelfsight.embeddings.plan import ExtractionPlan, plan_extraction
from shelfsight.embeddings.ray_start import RayStartError, start_ray
from shelfsight.embeddings.runtime_choice import build_runtime
from shelfsight.embeddings.runtimes import RuntimeChoice
from shelfsight.embeddings.shards import write_shard
from shelfsight.errors import ShelfsightError
from shelfsight.progress import progress_bar


class RayEngineError(ShelfsightError):
    """Ray is missing or the cluster cannot run the job; the message says what to do."""


@dataclass(frozen=True)
class BackboneRecipe:
    """How to rebuild a backbone inside a Ray actor: what ``load_backbone`` was called with."""

    name: str
    pretrained: bool = True
    weights: str | None = None
    preprocess: dict[str, Any] | None = None
    seed: int = 0

    def load(self) -> Backbone:
        return load_backbone(self.name, pretrained=self.pretrained, weights=self.weights,
                             preprocess=self.preprocess, seed=self.seed)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. ``address=None`` starts a local cluster sized by ``num_cpus``."""

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    """Backbone actors; default: one per GPU, else one per ``cpus_per_actor`` CPUs of the cluster."""
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_batch: int = 32
    shards: bool = True
    """Also write each chunk as ``shards/chunk-NNNNN.parquet`` (ids and vectors) for bulk indexing."""


@dataclass
class _PendingChunk:
    expected: int
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    reasons: dict[int, tuple[FailureKind, str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.vectors) + len(self.reasons) == self.expected


def _decode_batch(batch: dict[str, np.ndarray], preprocess: dict[str, Any], draft: bool) -> dict[str, np.ndarray]:
    """Ray Data task: paths -> uint8 CHW pixels (zeros plus a reason and its kind for a file that cannot be
    used: ``failure_of`` classifies it where it failed, as on one machine)."""
    from shelfsight.catalog.images import decode_image

    resolved = Preprocess(**preprocess)
    transform = build_pixel_transform(resolved)
    draft_size = resolved.resize_size if draft else None
    pixels = np.zeros((len(batch["path"]), 3, resolved.input_size, resolved.input_size), dtype=np.uint8)
    reasons = np.full(len(batch["path"]), "", dtype=object)
    kinds = np.full(len(batch["path"]), "", dtype=object)
    for row, path in enumerate(batch["path"]):
        try:
            pixels[row] = transform(decode_image(str(path), draft_size=draft_size)).numpy()
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a catalogue-sized run
            kinds[row], reasons[row] = failure_of(exc)
    return {"position": batch["position"], "pixels": pixels, "reason": reasons.astype(str), "kind": kinds.astype(str)}


class _Embed:
    """Ray Data actor: builds the driver's chosen runtime once, then uint8 pixels -> L2-normalised vectors."""

    def __init__(self, recipe: BackboneRecipe, runtime: str, device: str, precision: str, threads: int,
                 cache_dir: str) -> None:
        import torch

        torch.set_num_threads(threads)  # the actor's CPU share, not every core of the node
        # the runtime the driver chose and checked, rebuilt here (the export is shared through the cache)
        self.runtime = build_runtime(runtime, recipe.load(), device=torch.device(device), precision=precision,
                                     threads=threads, cache_dir=cache_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        good = batch["reason"] == ""
        dim = None
        vectors: np.ndarray | None = None
        if good.any():
            computed = self.runtime(torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])))
            dim = computed.shape[1]
            vectors = np.zeros((len(good), dim), dtype=np.float32)
            vectors[good] = computed
        if vectors is None:
            vectors = np.zeros((len(good), dim or 1), dtype=np.float32)
        return {"position": batch["position"], "vector": vectors, "reason": batch["reason"], "kind": batch["kind"]}


def embed_catalog_ray(
    catalog: Catalog,
    recipe: BackboneRecipe,
    *,
    options: RayOptions | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: Precision = "auto",
    runtime: RuntimeChoice = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    draft: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> Embeddings:
    """Embed ``catalog`` on a Ray cluster into the shared cache, then read it back like ``embed_catalog``.

    Only photos missing from the cache are computed. ``device``/``precision``/``runtime`` are resolved the
    same way as on one machine (``auto`` means a GPU when actors get one, where PyTorch is the runtime).
    """
    ray = _import_ray()
    options = options or RayOptions()
    backbone = recipe.load()
    torch_device = resolve_device("cuda" if options.gpus_per_actor > 0 and device == "auto" else device)
    batch_size = batch_size or default_batch_size(torch_device)
    resolved_precision = resolve_precision(precision, torch_device)
    transform = build_pixel_transform(backbone.preprocess)
    draft_size = backbone.preprocess.resize_size if draft else None
    threads = max(1, round(options.cpus_per_actor))
    plan = plan_extraction(
        catalog, backbone, requested=runtime, device=torch_device, precision=resolved_precision, draft=draft,
        threads=threads, cache_dir=cache_dir, use_cache=True,
        probe=lambda positions: probe_pixels(catalog, positions, transform, draft_size))
    started = time.perf_counter()
    computed = 0
    if plan.to_compute:
        assert plan.report is not None
        manifest = {"backbone": backbone.spec.name, "engine": "ray",
                    "identity": backbone.cache_identity(), "precision": resolved_precision, "draft": draft,
                    "device": str(torch_device), "runtime": plan.report.as_dict(), "last_catalog": catalog.name}
        plan.store.update_manifest(manifest)
        _start_ray(ray, options)
        parts = _run_pipeline(ray, catalog, recipe, backbone, plan, options=options, chunk_size=chunk_size,
                              batch_size=batch_size, device=str(torch_device), precision=resolved_precision,
                              draft=draft, progress=progress, cache_dir=str(plan.store.folder.parents[2]))
        computed = store_parts(parts, plan, True, on_chunk)
        seconds = time.perf_counter() - started
        plan.store.update_manifest({"images_per_second": computed / max(seconds, 1e-9),
                                    "rate_batch_size": batch_size})
    result = embeddings_from_plan(catalog, plan, computed=computed, seconds=time.perf_counter() - started,
                                  device=str(torch_device), precision=resolved_precision, use_cache=True)
    if options.shards:
        write_shards(result, shard_folder(result), chunk_size)
    return result


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayEngineError("the Ray engine needs Ray Data: pip install 'ray[data]' (or `pip install "
                             "'shelfsight[ray]'`), then run again") from None
    return ray


def _start_ray(ray: Any, options: RayOptions) -> None:
    try:
        start_ray(ray, options.address, options.num_cpus)
    except RayStartError as exc:
        raise RayEngineError(str(exc)) from None


def _actor_count(ray: Any, options: RayOptions) -> int:
    if options.actors:
        return options.actors
    resources = ray.cluster_resources()
    if options.gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) / options.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // max(options.cpus_per_actor, 1e-9)))


def _run_pipeline(
    ray: Any, catalog: Catalog, recipe: BackboneRecipe, backbone: Backbone, plan: ExtractionPlan, *,
    options: RayOptions, chunk_size: int, batch_size: int, device: str, precision: str, draft: bool,
    progress: bool, cache_dir: str,
) -> Iterator[tuple[int, Chunk]]:
    """Stream the photos to compute through decode tasks and runtime actors; yield parts as they complete."""
    import ray.data

    assert plan.runtime is not None
    items, positions = catalog.items, plan.to_compute
    rows = [{"position": p, "path": str(items[p].image_path)} for p in positions]
    blocks = max(1, min(len(rows) // max(1, options.decode_batch), 4096))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    decoded = dataset.map_batches(
        _decode_batch, fn_kwargs={"preprocess": backbone.preprocess.as_dict(), "draft": draft},
        batch_size=options.decode_batch, num_cpus=1)
    embedded = decoded.map_batches(
        _Embed, fn_constructor_kwargs={"recipe": recipe, "runtime": plan.runtime.name, "device": device,
                                       "precision": precision, "threads": max(1, round(options.cpus_per_actor)),
                                       "cache_dir": cache_dir},
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=_actor_count(ray, options)),
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)
    part_of = {p: k // chunk_size for k, p in enumerate(positions)}
    pending = {c: _PendingChunk(expected=min(chunk_size, len(positions) - c * chunk_size))
               for c in set(part_of.values())}
    with _progress(progress, len(positions), 0, f"embed {catalog.name} · {plan.runtime.name} · ray") as advance:
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            advance(_keep_rows(batch, pending, part_of))
            for index in [c for c, state in pending.items() if state.complete]:
                yield index, _as_chunk(pending.pop(index), items)
    if pending:
        raise RayEngineError(f"the Ray pipeline ended with {len(pending)} part(s) incomplete "
                             f"({sorted(pending)[:5]}); run again to compute them (finished parts are kept)")


def _keep_rows(batch: dict[str, np.ndarray], pending: dict[int, _PendingChunk], part_of: dict[int, int]) -> int:
    """File each row of an embedded batch under its part (a vector, or a failure with its kind); returns how
    many rows were new (a retried block re-delivers rows already kept, which are ignored)."""
    fresh = 0
    for position, vector, reason, kind in zip(batch["position"], batch["vector"], batch["reason"], batch["kind"],
                                              strict=True):
        chunk = pending.get(part_of.get(int(position), -1))
        if chunk is None or int(position) in chunk.vectors or int(position) in chunk.reasons:
            continue
        fresh += 1
        if reason:
            chunk.reasons[int(position)] = (PERMANENT if kind == PERMANENT else TRANSIENT, str(reason))
        else:
            chunk.vectors[int(position)] = np.asarray(vector, dtype=np.float32)
    return fresh


def _as_chunk(state: _PendingChunk, items: tuple[Any, ...]) -> Chunk:
    """In catalogue order (ids are catalogue positions, as in ``embed_catalog``), through the same
    ``make_chunk``, so non-finite vectors are refused alike."""
    order = sorted(state.vectors)
    vectors = np.stack([state.vectors[p] for p in order]) if order else np.zeros((0, 0), np.float32)
    skipped = [SkippedItem(str(p), str(items[p].image_path), reason, kind)
               for p, (kind, reason) in state.reasons.items()]
    return make_chunk([str(p) for p in order], [str(items[p].image_path) for p in order], vectors, skipped)


def _progress(enabled: bool, total: int, completed: int, description: str) -> Any:
    return progress_bar(enabled, total, description, completed=completed, unit="img")


def shard_folder(result: Embeddings) -> Path:
    """Where the Parquet shards of one catalogue's vectors go: beside the space's vectors, by catalogue key."""
    if result.cache_folder is None:
        raise RayEngineError("shards are written beside cached vectors; this result has no cache folder")
    return result.cache_folder / "shards" / result.key[:16]


def write_shards(result: Embeddings, folder: Path, rows_per_shard: int) -> list[Path]:
    """The catalogue's ids and vectors as ``chunk-NNNNN.parquet`` shards for bulk indexing (rewritten whole)."""
    written = []
    for index, start in enumerate(range(0, len(result.ids), rows_per_shard)):
        target = folder / f"chunk-{index:05d}.parquet"
        if not target.is_file():
            write_shard(target, result.ids[start:start + rows_per_shard],
                        result.vectors[start:start + rows_per_shard])
        written.append(target)
    return written


def shard_paths(folder: Path) -> list[Path]:
    """The Parquet shards in a shard folder, in order."""
    return sorted(folder.glob("chunk-*.parquet"))
