"""One call behind ``shelfsight duplicates``: a catalogue's duplicate clusters and its protocols' leakage,
written to a folder (pairs.csv, clusters.csv, duplicates.html, summary.json).

``summary.json`` is what the report's duplicates section reads when the folder is ``RUN/duplicates``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.duplicates.calibration import calibrated_threshold, find_calibration, load_calibration
from shelfsight.duplicates.clusters import DuplicateReport, find_duplicates
from shelfsight.duplicates.hashing import content_hashes
from shelfsight.duplicates.leakage import protocol_leakage
from shelfsight.duplicates.output import write_outputs
from shelfsight.embeddings import embed_catalog
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

SUMMARY = "summary.json"
SUMMARY_CLUSTERS = 12


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
                 "items": [{"id": i, "path": report.paths.get(i, ""), "label": report.labels.get(i, "")}
                           for i in c.ids]} for c in report.clusters[:SUMMARY_CLUSTERS]]
    return {"catalog": report.catalog, "model": model, "threshold": choice.value, "threshold_source": choice.source,
            "items": report.items, "pairs": len(report.pairs), "exact_pairs": report.exact_pairs,
            "clusters": len(report.clusters), "duplicated_items": report.duplicated_items,
            "largest_clusters": clusters, "leakage": leakage, "files": files}
