"""What an extraction has to do: which photos the cache already holds, which runtime computes the rest.

Shared by both engines (one process, Ray). A catalogue's photos are identified by their bytes
(:mod:`shelfsight.embeddings.digests`); the embedding space by the backbone, preprocessing, precision and
runtime, and the installed versions of the libraries that decode photos and compute vectors (a Pillow, torch
or timm upgrade is another space, whatever the runtime). Choosing ``auto`` means checking a runtime against
PyTorch, which costs seconds: the choice is remembered per (backbone, settings, installed versions), so a
warm run reads vectors without building any model, and a run with photos to compute checks the runtime again
on those very photos.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shelfsight import paths
from shelfsight.backbones import Backbone
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings.cache import NON_FINITE, TRANSIENT, SkippedItem, StoredItems, VectorStore, cache_key
from shelfsight.embeddings.digests import MISSING, DigestMemo
from shelfsight.embeddings.runtime_choice import Probe, select_runtime
from shelfsight.embeddings.runtimes import Runtime, RuntimeChoice, RuntimeReport
from shelfsight.embeddings.versions import library_versions
from shelfsight.files import atomic_write


@dataclass
class ExtractionPlan:
    """The space to read and fill, every item's digest, what is stored, and the positions to compute."""

    store: VectorStore
    digests: list[str | None]
    stored: StoredItems
    to_compute: list[int]
    """Catalogue positions, one per photo (by content) the store lacks, in catalogue order."""
    ids: tuple[str, ...] = ()
    """The catalogue's item ids, aligned with ``digests``."""
    runtime: Runtime | None = None
    report: RuntimeReport | None = None

    @property
    def catalogue_key(self) -> str:
        """The key of these vectors for this catalogue: the space and each item's id and content."""
        return cache_key({"space": self.store.key, "items": [[i, d] for i, d in zip(self.ids, self.digests,
                                                                                          strict=True)]})


def _versions() -> dict[str, str]:
    out = {}
    for package in ("onnxruntime", "openvino"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def base_identity(backbone: Backbone, *, draft: bool, precision: str, device: torch.device,
                  versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What decides the numbers apart from the runtime, library versions included (``versions``: the
    installed ones by default), so an upgrade of any of them never reads vectors the old code computed."""
    return {"backbone": backbone.cache_identity(), "draft": draft, "precision": precision, "device": device.type,
            "libraries": dict(versions if versions is not None else library_versions(backbone))}


def space_key(base: dict[str, Any], runtime_identity: dict[str, Any]) -> str:
    """The key of one embedding space: the base identity and the runtime's."""
    return cache_key({**base, "runtime": runtime_identity})


def _choice_path(root: Path, base: dict[str, Any], requested: str) -> Path:
    key = cache_key({"base": base, "requested": requested, "versions": _versions(), "torch": torch.__version__})
    return root / "runtimes" / f"{key}.json"


def plan_extraction(catalog: Catalog, backbone: Backbone, *, requested: RuntimeChoice, device: torch.device,
                    precision: str, draft: bool, threads: int, probe: Callable[[list[int]], torch.Tensor],
                    cache_dir: str | os.PathLike[str] | None, use_cache: bool) -> ExtractionPlan:
    """Digest the photos, find what is stored, and (only when something is missing) choose the runtime."""
    root = paths.cache_dir(cache_dir)
    base = base_identity(backbone, draft=draft, precision=precision, device=device)
    digests = DigestMemo(root).digests([item.image_path for item in catalog.items])
    ids = tuple(item.item_id for item in catalog.items)
    choice_file = _choice_path(root, base, requested)
    remembered = _read_choice(choice_file) if use_cache else None
    if remembered is not None:
        plan = _plan_in(root, remembered, base, digests, ids, use_cache)
        if not plan.to_compute:
            return plan
    candidates = _missing_positions(digests, StoredItems({}, {})) or [0]
    probe_for: Probe = lambda: probe(candidates)  # noqa: E731 - a deferred call, made only by a check
    runtime, report = select_runtime(requested, backbone, device=device, precision=precision, probe=probe_for,
                                     threads=threads, cache_dir=root)
    if use_cache:
        _write_choice(choice_file, report.identity, report.as_dict())
    plan = _plan_in(root, report.identity, base, digests, ids, use_cache)
    plan.runtime, plan.report = runtime, report
    return plan


def _plan_in(root: Path, identity: dict[str, Any], base: dict[str, Any], digests: list[str | None],
             ids: tuple[str, ...], use_cache: bool) -> ExtractionPlan:
    store = VectorStore(root, space_key(base, identity))
    stored = store.read() if use_cache else StoredItems({}, {})
    return ExtractionPlan(store, digests, stored, _missing_positions(digests, stored), ids=ids)


def _missing_positions(digests: list[str | None], stored: StoredItems) -> list[int]:
    seen: set[str] = set()
    positions = []
    for position, digest in enumerate(digests):
        if digest is None or digest in seen or digest in stored.vectors or digest in stored.failures:
            continue
        seen.add(digest)
        positions.append(position)
    return positions


def _read_choice(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["identity"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_choice(path: Path, identity: dict[str, Any], report: dict[str, Any]) -> None:
    text = json.dumps({"identity": identity, "report": report}, indent=2, sort_keys=True, default=str).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(text), mode=None)


def assemble(catalog: Catalog, plan: ExtractionPlan) -> tuple[list[str], np.ndarray, list[SkippedItem]]:
    """Catalogue order: the ids with vectors, their vectors, and every skipped item with its reason and kind.
    A finite vector wins over a failure of the same photo (another process may have embedded it since)."""
    ids: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[SkippedItem] = []
    stored = plan.stored
    for item, digest in zip(catalog.items, plan.digests, strict=True):
        path = str(item.image_path)
        if digest is None:
            reason = MISSING if not os.path.exists(item.image_path) else "cannot read file"
            skipped.append(SkippedItem(item.item_id, path, reason, TRANSIENT))
        elif digest in stored.vectors and np.isfinite(stored.vectors[digest]).all():
            ids.append(item.item_id)
            rows.append(stored.vectors[digest])
        elif digest in stored.failures:
            skipped.append(SkippedItem(item.item_id, path, stored.failures[digest]))
        elif digest in stored.transient:
            skipped.append(SkippedItem(item.item_id, path, stored.transient[digest], TRANSIENT))
        else:
            skipped.append(SkippedItem(item.item_id, path, NON_FINITE))
    vectors = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
    return ids, vectors, skipped


def uncached_photos(catalog: Catalog, backbone: Backbone, *, requested: RuntimeChoice, device: torch.device,
                    precision: str, draft: bool = True,
                    cache_dir: str | os.PathLike[str] | None = None) -> tuple[int, dict[str, Any]]:
    """How many photos (by content) an extraction would compute, and the manifest of the space it would
    fill (its measured ``images_per_second``, if a run has measured it). Builds no model: before a runtime
    was ever chosen for these settings, every photo counts as uncached."""
    if backbone.vectors is not None:  # read from its file: nothing to compute
        return 0, {}
    root = paths.cache_dir(cache_dir)
    base = base_identity(backbone, draft=draft, precision=precision, device=device)
    digests = DigestMemo(root).digests([item.image_path for item in catalog.items])
    remembered = _read_choice(_choice_path(root, base, requested))
    if remembered is None:
        return len(_missing_positions(digests, StoredItems({}, {}))), {}
    plan = _plan_in(root, remembered, base, digests, tuple(item.item_id for item in catalog.items), True)
    return len(plan.to_compute), plan.store.read_manifest()
