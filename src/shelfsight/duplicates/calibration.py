"""Run the calibration end to end and keep its result as a plain JSON file with its provenance.

The result stores, for each method (the embedding, pHash, dHash), the pooled threshold per target precision,
the per-transformation table and the pooled precision-recall curve; ``shelfsight duplicates
--target-precision P`` reads a threshold for any P back from that curve.

A threshold holds only for the embedding it was calibrated on, so a calibration is found by the model's identity
(``Backbone.cache_identity()``: weights by content, preprocessing), not by its name: the cache file is
``calibration-<name>-<identity key>.json``, and a threshold is refused for a model whose identity differs from
the one the result records (a re-fetched hub model with other weights, another input size). The name stays in
the file name and the result, for people.

The lookup reads the user's cache first (a calibration on their own photos, ``shelfsight duplicates --calibrate``),
then the calibrations shipped in ``calibrations/`` (Grocery Store, for the offline backbones; each records its
dataset, split, seed, sizes, date, shelfsight version and model identity), so a packaged model needs no prior step.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight import __version__, paths
from shelfsight.backbones import Backbone
from shelfsight.catalog import Catalog
from shelfsight.duplicates.calibrate import (
    PairScores,
    evaluate_method,
    hard_negatives,
    thin_curve,
    threshold_from_curve,
    truth,
)
from shelfsight.duplicates.calibration_set import CalibrationSet, build_calibration_set
from shelfsight.duplicates.perceptual import HASHES, hash_images, hash_similarity
from shelfsight.duplicates.transforms import get_transforms
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

EMBEDDING = "embedding"
PRECISIONS = (0.99, 0.95, 0.9)
SHIPPED = Path(__file__).parent / "calibrations"
"""Calibrations that ship with the package: found after the user's cache, by the same file name."""
SHIPPED_CURVE_POINTS = 400


class CalibrationError(ShelfsightError):
    """A calibration result is missing, unreadable or lacks what was asked of it."""


@dataclass(frozen=True)
class CalibrationSettings:
    sources: int = 200
    distractors: int = 800
    seed: int = 0
    split: str | None = "train"
    """Where sources and other photos are drawn from (None: the whole catalogue)."""
    transforms: tuple[str, ...] | None = None
    precisions: tuple[float, ...] = PRECISIONS
    hashes: tuple[str, ...] = tuple(HASHES)
    group_negatives: int = 3
    """Per source with a group (``CatalogItem.group``): up to this many other photos of its group join the pool,
    as hard negatives (same seller or shoot, same background, a different item)."""


def calibrate(catalog: Catalog, backbone: Backbone, workdir: str | Path, settings: CalibrationSettings,
              *, progress: bool = False) -> dict[str, Any]:
    """Build the calibration set from ``catalog``, score every method on it, and return the result."""
    started = time.perf_counter()
    transforms = get_transforms(settings.transforms)
    calibration = build_calibration_set(catalog, transforms, workdir, sources=settings.sources,
                                        distractors=settings.distractors, seed=settings.seed,
                                        split=settings.split, group_negatives=settings.group_negatives)
    positive, names = truth(calibration)
    hard = hard_negatives(calibration, positive)
    scored = {EMBEDDING: embedding_scores(catalog, calibration, backbone, progress)}
    pool_paths = [str(i.image_path) for i in calibration.pool]
    copy_paths = [str(i.image_path) for i in calibration.copies]
    for method in settings.hashes:
        scored[method] = hash_similarity(hash_images(copy_paths, method), hash_images(pool_paths, method))
    methods = {name: evaluate_method(PairScores(name, scores, positive, names, hard), settings.precisions)
               for name, scores in scored.items()}
    return {
        "model": backbone.spec.name, "model_identity": normalised(backbone.cache_identity()),
        "identity_key": identity_key(backbone.cache_identity()), "catalog": catalog.name,
        "catalog_identity": catalog.identity(), "sources": settings.sources, "split": settings.split,
        "distractors": settings.distractors, "seed": settings.seed, "copies": len(calibration.copies),
        "pool": len(calibration.pool), "pairs": int(positive.size), "hard_negative_pairs": int(hard.sum()),
        "transforms": [t.name for t in transforms], "precisions": list(settings.precisions), "methods": methods,
        "seconds": time.perf_counter() - started, "written": time.time(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "shelfsight_version": __version__,
    }


def embedding_scores(catalog: Catalog, calibration: CalibrationSet, backbone: Backbone,
                     progress: bool) -> np.ndarray:
    """Cosine similarities (copies x pool); only the pool and the copies are embedded (the cache keeps them)."""
    whole = embed_catalog(calibration.pool, backbone, progress=progress)
    copies = embed_catalog(calibration.copies, backbone, progress=progress)
    pool = _rows(whole, calibration.pool.ids, catalog.name)
    return _rows(copies, calibration.copies.ids, calibration.copies.name) @ pool.T


def _rows(embeddings: Embeddings, ids: list[str], name: str) -> np.ndarray:
    position = {item_id: row for row, item_id in enumerate(embeddings.ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        raise CalibrationError(f"{name}: {len(missing)} calibration image(s) could not be embedded, e.g. "
                               f"{missing[0]!r}; see the embedding's skipped list")
    return embeddings.vectors[[position[i] for i in ids]]


def normalised(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A model identity as it reads back from JSON, so a live one compares equal to a stored one."""
    return dict(json.loads(json.dumps(identity, sort_keys=True, default=str)))


def identity_key(identity: Mapping[str, Any]) -> str:
    """16 hex of the SHA-256 of the identity's canonical JSON: the part of a calibration's file name that finds it."""
    text = json.dumps(normalised(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_path(model: str, identity: Mapping[str, Any] | None = None) -> Path:
    """Where a model's calibration is kept: ``<cache>/duplicates/calibration-<model>-<identity key>.json``.
    Without ``identity``: the name-only file of older versions, still read when the identity it records matches."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    suffix = f"-{identity_key(identity)}" if identity is not None else ""
    return paths.cache_dir() / "duplicates" / f"calibration-{name}{suffix}.json"


def shipped_path(model: str, identity: Mapping[str, Any]) -> Path | None:
    """The calibration of this identity shipped with the package, if there is one."""
    path = SHIPPED / default_path(model, identity).name
    return path if path.is_file() else None


def find_calibration(model: str, identity: Mapping[str, Any]) -> Path:
    """The calibration of this identity: the cache's own file, else a name-only cache file that records it, else
    the shipped one; when none exists, the cache path it should have (so the error that follows names it)."""
    own, named = default_path(model, identity), default_path(model)
    if own.is_file():
        return own
    if named.is_file() and _records(named, identity):
        return named
    return shipped_path(model, identity) or own


def _records(path: Path, identity: Mapping[str, Any]) -> bool:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("model_identity")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return isinstance(recorded, dict) and normalised(recorded) == normalised(identity)


def shippable(result: dict[str, Any]) -> dict[str, Any]:
    """A result small enough to ship: curves thinned to SHIPPED_CURVE_POINTS (the stored pooled thresholds stay
    exact), leakage kept as counts (no photo paths of the machine that made it)."""
    methods = {name: {**entry, "curve": thin_curve(entry["curve"], SHIPPED_CURVE_POINTS)}
               for name, entry in result["methods"].items()}
    shipped = {**result, "methods": methods}
    if "leakage" in result:
        shipped["leakage"] = [{k: v for k, v in entry.items() if k in ("protocol", "queries", "gallery", "threshold",
                                                                        "leaking", "exact")}
                              for entry in result["leakage"]]
    return shipped


def calibrate_and_store(catalog: Catalog, backbone: Backbone, workdir: str | Path, settings: CalibrationSettings,
                        *, progress: bool = False) -> tuple[dict[str, Any], Path]:
    """Calibrate on ``catalog`` and keep the result where the lookup finds it for this model (the user's cache)."""
    result = calibrate(catalog, backbone, workdir, settings, progress=progress)
    return result, save_calibration(result, default_path(backbone.spec.name, backbone.cache_identity()))


def save_calibration(result: dict[str, Any], path: str | Path) -> Path:
    text = json.dumps(result, indent=1, sort_keys=True)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read a calibration result; a missing or malformed file is a CalibrationError naming it."""
    target = Path(path)
    try:
        result = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{target}: no calibration result; calibrate on your photos with `shelfsight "
                               "duplicates CATALOG --model MODEL --calibrate`, or give --threshold") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{target}: not a readable calibration result ({exc})") from None
    if not isinstance(result, dict) or EMBEDDING not in result.get("methods", {}):
        raise CalibrationError(f"{target}: not a calibration result (no 'methods.{EMBEDDING}' field)")
    return result


def calibrated_threshold(result: dict[str, Any], precision: float, method: str = EMBEDDING,
                         model: str | None = None, identity: Mapping[str, Any] | None = None) -> float:
    """The threshold of ``method`` reaching ``precision`` in a calibration result; ``identity`` (the loaded
    model's ``cache_identity()``) must be the one the result was calibrated on, ``model`` its name."""
    if model is not None and result.get("model") != model:
        raise CalibrationError(f"the calibration is of model {result.get('model')!r}, not {model!r}: a threshold "
                               "only holds for the embedding it was calibrated on")
    if identity is not None:
        _require_identity(result, identity)
    entry = result["methods"].get(method)
    if entry is None:
        raise CalibrationError(f"the calibration has no method {method!r}; it has {sorted(result['methods'])}")
    stored = entry.get("thresholds", {}).get(f"{precision:g}", {}).get("threshold")
    if isinstance(stored, float) and stored == stored:
        return stored  # the exact pooled threshold (a shipped curve is thinned)
    try:
        return threshold_from_curve(entry["curve"], precision)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None


def _require_identity(result: dict[str, Any], identity: Mapping[str, Any]) -> None:
    """A CalibrationError naming the parts of the identity that differ (weights, preprocess...)."""
    recorded, loaded = normalised(result.get("model_identity") or {}), normalised(identity)
    if recorded == loaded:
        return
    if not recorded:
        raise CalibrationError(f"the calibration of {result.get('model')!r} records no model identity (an older "
                               "result), so it cannot be matched to the loaded model: calibrate again (shelfsight "
                               "duplicates CATALOG --model MODEL --calibrate) or give --threshold")
    parts = sorted(k for k in recorded.keys() | loaded.keys() if recorded.get(k) != loaded.get(k))
    raise CalibrationError(
        f"the calibration of {result.get('model')!r} was made on another embedding than the loaded model's "
        f"(different {', '.join(parts)}: {_shown(recorded, parts)} then, {_shown(loaded, parts)} now); a threshold "
        "only holds for the embedding it was calibrated on: calibrate this one (shelfsight duplicates CATALOG "
        "--model MODEL --calibrate) or give --threshold")


def _shown(identity: dict[str, Any], parts: list[str]) -> str:
    return ", ".join(f"{k}={identity.get(k, '(none)')}" for k in parts)
