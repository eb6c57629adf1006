"""Calibrate near-duplicate detection on real photos, compare it with perceptual hashes, and measure the leakage
between a dataset's queries and gallery at the calibrated threshold.

N catalogue photos (--sources) each get every transformation of ``shelfsight.duplicates.TRANSFORMS`` (crops,
rescales, JPEG qualities, colour jitter, flip, rotations, a price sticker, letterbox, a screenshot frame); each
copy is compared with a pool of the sources and --distractors other photos. Per transformation: average
precision and the recall at the pooled threshold reaching each target precision, for the embedding, pHash and
dHash. The result (with the thresholds and the pooled precision-recall curve) is written to --output and to the
calibration path the CLI reads (``<cache>/duplicates/calibration-MODEL-KEY.json``, as ``shelfsight duplicates
--calibrate`` does: both call ``calibrate_and_store``); ``--ship`` also writes the compact copy that ships with the
package (``src/shelfsight/duplicates/calibrations/``), which the CLI falls back to when the cache has none.

    SHELFSIGHT_DATA_DIR=/data .venv/bin/python benchmarks/duplicates.py --model efficientnet_lite0 --sources 200 --ship
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shelfsight import embed_catalog, load_backbone, load_catalog
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.duplicates import (
    SHIPPED,
    CalibrationSettings,
    calibrate_and_store,
    calibrated_threshold,
    save_calibration,
    shippable,
)
from shelfsight.duplicates.leakage import protocol_leakage


def table(result: dict[str, Any], precision: float) -> str:
    """Markdown: per transformation, AP and recall at the pooled threshold for ``precision``, per method."""
    key = f"{precision:g}"
    methods = sorted(result["methods"], key=lambda name: name != "embedding")
    head = "| transformation | " + " | ".join(f"{m} recall@p{key} | {m} AP" for m in methods) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(methods))]
    for name in result["transforms"]:
        cells = []
        for method in methods:
            row = result["methods"][method]["transforms"][name]
            cells += [f"{row[f'recall@p{key}']:.3f}", f"{row['average_precision']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pooled = [result["methods"][m]["thresholds"][key] for m in methods]
    lines.append("| **all (pooled)** | " + " | ".join(
        f"{p['recall']:.3f} (t={p['threshold']:.4f}) | {result['methods'][m]['average_precision']:.3f}"
        for m, p in zip(methods, pooled, strict=True)) + " |")
    return "\n".join(lines)


def leakage(catalog: Catalog, dataset: str, model: str, result: dict[str, Any],
            precision: float) -> list[dict[str, Any]]:
    """Each protocol's leakage at the embedding's calibrated threshold for ``precision``."""
    embeddings = embed_catalog(catalog, load_backbone(model), progress=False)
    threshold = calibrated_threshold(result, precision, identity=result["model_identity"])
    paths = {i.item_id: str(i.image_path) for i in catalog}
    return [protocol_leakage(p, catalog, embeddings, threshold).as_dict(paths) for p in protocols_for(dataset, catalog)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--dataset", default="grocery-store")
    parser.add_argument("--split", default="train", help="the split the sources and distractors are drawn from")
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--distractors", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", type=float, default=0.99)
    parser.add_argument("--workdir", type=Path, default=Path("runs/duplicates-calibration"))
    parser.add_argument("--output", type=Path, default=None, help="default: WORKDIR/calibration-MODEL.json")
    parser.add_argument("--no-leakage", action="store_true", help="skip embedding the whole dataset for leakage")
    parser.add_argument("--ship", action="store_true", help="also write the compact copy shipped with the package")
    args = parser.parse_args()
    catalog = load_catalog(args.dataset)
    settings = CalibrationSettings(sources=args.sources, distractors=args.distractors, seed=args.seed, split=args.split,
                                   precisions=tuple(sorted({args.precision, 0.99, 0.95, 0.9}, reverse=True)))
    result, stored = calibrate_and_store(catalog, load_backbone(args.model), args.workdir, settings, progress=True)
    if not args.no_leakage:
        result["leakage"] = leakage(catalog, args.dataset, args.model, result, args.precision)
        save_calibration(result, stored)
    output = args.output or args.workdir / f"calibration-{args.model}.json"
    save_calibration(result, output)
    if args.ship:
        print(f"shipped: {save_calibration(shippable(result), SHIPPED / stored.name)}")
    print(table(result, args.precision))
    for entry in result.get("leakage", []):
        print(f"leakage {entry['protocol']}: {entry['leaking']} of {entry['queries']} queries "
              f"({entry['exact']} exact) at cosine >= {entry['threshold']:.4f}")
        print(json.dumps(entry["examples"][:3], indent=1))
    print(f"written: {output} and {stored} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
