"""One call behind ``shelfsight duplicates``: a catalogue's duplicate clusters and its protocols' leakage,
written to a folder (pairs.csv, clusters.csv, duplicates.html, summary.json).

``summary.json`` is what the report's duplicates section reads when the folder is ``RUN/duplicates``.
``calibrate_own`` calibrates the threshold on the catalogue's own photos (``--calibrate``) and keeps it where the
lookup finds it for the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfsight import paths
from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.duplicates.calibration import (
    CalibrationSettings,
    calibrate_and_store,
    calibrated_threshold,
    find_calibration,
    identity_key,
    load_calibration,
)
from shelfsight.duplicates.clusters import DuplicateReport, find_duplicates
from shelfsight.duplicates.hashing import content_hashes
from shelfsight.duplicates.leakage import protocol_leakage
from shelfsight.duplicates.output import write_outputs
from shelfsight.embeddings import embed_catalog
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

SUMMARY = "summary.json"
SUMMARY_CLUSTERS = 12
OWN_SOURCES = 200
OWN_DISTRACTORS = 800


@dataclass(frozen=True)
class ThresholdChoice:
    """The cosine threshold used and where it came from (given, or a calibration at a target precision)."""

    value: float
    source: str


def resolve_threshold(model: str | Backbone, threshold: float | None, target_precision: float | None,
                      calibration: str | Path | None = None) -> ThresholdChoice:
    """``threshold`` when given, else the calibrated one for ``target_precision`` (default 0.99), from the
    calibration of the model's identity (weights by content, preprocessing; a name is loaded to learn it)."""
    if threshold is not None and target_precision is not None:
        raise ShelfsightError("give --threshold or --target-precision, not both")
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise ShelfsightError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
        return ThresholdChoice(threshold, "given")
    precision = 0.99 if target_precision is None else target_precision
    backbone = load_backbone(model) if isinstance(model, str) else model
    name = model if isinstance(model, str) else backbone.spec.name
    identity = backbone.cache_identity()
    path = Path(calibration) if calibration else find_calibration(name, identity)
    value = calibrated_threshold(load_calibration(path), precision, identity=identity)
    return ThresholdChoice(value, f"calibrated at precision {precision:g} ({path})")


def default_threshold(model: str | Backbone, precision: float = 0.99) -> float | None:
    """The threshold at ``precision`` of the calibration the lookup finds for ``model`` (the user's own, else the
    shipped one); None when there is none, so a caller (``run``'s dedupe policy) falls back to exact copies."""
    try:
        return resolve_threshold(model, None, precision).value
    except ShelfsightError:
        return None


def own_settings(catalog: Catalog, sources: int | None = None, seed: int = 0) -> CalibrationSettings:
    """A calibration sized to the catalogue: a fifth of its photos (at most OWN_SOURCES) get edited copies, matched
    against them and up to OWN_DISTRACTORS others, drawn from every split."""
    size = len(catalog)
    chosen = sources if sources is not None else min(OWN_SOURCES, max(1, size // 5))
    if not 1 <= chosen < size:
        raise ShelfsightError(f"{catalog.name} has {size} photos: calibrating needs at least one to copy and one "
                              f"other (asked for {chosen} to copy)")
    return CalibrationSettings(sources=chosen, distractors=min(OWN_DISTRACTORS, size - chosen), seed=seed, split=None)


def calibrate_own(catalog: Catalog, model: str | Backbone, settings: CalibrationSettings, *,
                  progress: bool = False) -> tuple[dict[str, Any], Path]:
    """Calibrate ``model``'s threshold on ``catalog`` (edited copies of a sample against the rest; same-group photos
    as hard negatives) and store it where ``find_calibration`` looks first; the copies stay in the cache."""
    backbone = load_backbone(model) if isinstance(model, str) else model
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", catalog.name)
    workdir = paths.cache_dir() / "duplicates" / "copies" / f"{name}-{identity_key(catalog.identity())}"
    return calibrate_and_store(catalog, backbone, workdir, settings, progress=progress)


def run_duplicates(catalog: Catalog, source: str, model: str, choice: ThresholdChoice, output: str | Path, *,
                   backend: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Find the clusters, measure each protocol's leakage, write every file; return the summary."""
    embeddings = embed_catalog(catalog, load_backbone(model), progress=progress)
    report = find_duplicates(catalog, embeddings, choice.value, backend=backend)
    hashes = content_hashes(catalog)
    leakage = [protocol_leakage(p, catalog, embeddings, choice.value, hashes=hashes).as_dict(report.paths)
               for p in _protocols(source, catalog)]
    files = write_outputs(report, output)
    summary = summarise(report, model, choice, leakage, {name: str(path) for name, path in files.items()})
    text = json.dumps(summary, indent=1)
    atomic_write(Path(output) / SUMMARY, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return summary


def _protocols(source: str, catalog: Catalog) -> list[Any]:
    try:
        return list(protocols_for(source, catalog))
    except ShelfsightError:
        return []  # a catalogue with no split structure has duplicates, but no protocol to leak


def summarise(report: DuplicateReport, model: str, choice: ThresholdChoice, leakage: list[dict[str, Any]],
              files: dict[str, str]) -> dict[str, Any]:
    """Plain data: counts, the largest clusters with their paths, the leakage per protocol, the files."""
    clusters = [{"number": c.number, "size": len(c.ids), "max_similarity": c.max_similarity, "exact": c.exact,
                 "min_similarity": c.min_similarity, "weakest": list(c.weakest),
                 "items": [{"id": i, "path": report.paths.get(i, ""), "label": report.labels.get(i, "")}
                           for i in c.ids]} for c in report.clusters[:SUMMARY_CLUSTERS]]
    return {"catalog": report.catalog, "model": model, "threshold": choice.value, "threshold_source": choice.source,
            "items": report.items, "pairs": len(report.pairs), "exact_pairs": report.exact_pairs,
            "clusters": len(report.clusters), "duplicated_items": report.duplicated_items,
            "largest_clusters": clusters, "leakage": leakage, "files": files}
