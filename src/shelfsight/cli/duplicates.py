"""``shelfsight duplicates``: exact and near-duplicate listings of a catalogue, their clusters, and the leakage
between each protocol's queries and gallery. The threshold comes from the model's calibration: the user's own
(``--calibrate``, on the catalogue's photos), else the one shipped for the offline backbones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shelfsight.cli.common import CacheDir, DataDir, console


def duplicates_command(
    catalog: Annotated[str, typer.Argument(help="Dataset name, image folder or manifest.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone whose embeddings judge similarity.")],
    threshold: Annotated[float | None, typer.Option(help="Cosine similarity at or above which two images "
                                                         "are near-duplicates.")] = None,
    target_precision: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Use the calibrated threshold reaching this precision (default 0.99).")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="Calibration result (default: yours from --calibrate, else the one shipped for the model).")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="First calibrate the threshold on this catalogue's photos (edited copies of a sample "
                            "against the rest; other photos of a copy's group as hard negatives) and keep it "
                            "for later runs with this model.")] = False,
    calibration_sample: Annotated[int | None, typer.Option(
        min=1, help="With --calibrate: photos that get edited copies (default: a fifth, at most 200).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", "-s", help="Split(s) to search (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for pairs.csv, clusters.csv, duplicates.html and "
                                                     "summary.json (default: runs/duplicates/CATALOG).")] = None,
    backend: Annotated[str, typer.Option(help="auto (exact up to 20,000 items, else Milvus Lite), exact or "
                                              "milvus-lite.")] = "auto",
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Find duplicate listings (same bytes, or embeddings at or above a calibrated similarity) and leakage."""
    from shelfsight.backbones import get_spec
    from shelfsight.catalog import load_catalog
    from shelfsight.duplicates.run import resolve_threshold, run_duplicates

    get_spec(model)
    if backend not in ("auto", "exact", "milvus-lite"):
        raise typer.BadParameter("use auto, exact or milvus-lite", param_hint="--backend")
    if calibrate and (threshold is not None or calibration is not None):
        raise typer.BadParameter("--calibrate makes the calibration; drop --threshold and --calibration",
                                 param_hint="--calibrate")
    if not calibrate:  # fail before loading anything when no threshold can be had
        choice = resolve_threshold(model, threshold, target_precision, calibration)
    items = load_catalog(catalog, data_dir=data_dir, splits=tuple(split) if split else None, cache_dir=cache_dir,
                         image_root=image_root)
    if calibrate:
        _calibrate(items, model, calibration_sample, quiet)
        choice = resolve_threshold(model, None, target_precision)
    folder = output or Path("runs") / "duplicates" / Path(catalog).name
    summary = run_duplicates(items, catalog, model, choice, folder, backend=backend, progress=not quiet)
    console.print(f"{summary['items']:,} items: {summary['pairs']:,} duplicate pairs ({summary['exact_pairs']:,} "
                  f"exact) in {summary['clusters']:,} clusters; cosine >= {choice.value:.4f} ({choice.source})",
                  highlight=False)
    _print_leakage(summary["leakage"])
    for name, path in summary["files"].items():
        console.print(f"{name}: {path}", highlight=False)


def _calibrate(items: Any, model: str, sample: int | None, quiet: bool) -> None:
    """Calibrate on the catalogue's own photos and say what it measured."""
    from shelfsight.duplicates import TRANSFORMS
    from shelfsight.duplicates.run import calibrate_own, own_settings

    settings = own_settings(items, sample)
    console.print(f"calibrating on {settings.sources} of {len(items):,} photos x {len(TRANSFORMS)} edits against "
                  f"{settings.sources + settings.distractors:,} photos...", highlight=False)
    result, path = calibrate_own(items, model, settings, progress=not quiet)
    embedding = result["methods"]["embedding"]
    hard = embedding["hard_negatives"]
    chosen = embedding["thresholds"]["0.99"]
    console.print(f"calibrated: cosine >= {chosen['threshold']:.4f} reaches precision 0.99 with recall "
                  f"{chosen['recall']:.3f} over {result['pairs']:,} pairs; {hard['pairs']:,} same-group pairs of "
                  f"different photos (hard negatives), {hard['flagged@p0.99']:,} of them above it; kept in {path}",
                  highlight=False)


def _print_leakage(leakage: list[dict[str, object]]) -> None:
    if not leakage:
        return
    table = Table(title="Leakage: queries with a duplicate in their gallery")
    for column in ("protocol", "queries", "leaking", "exact", "example"):
        table.add_column(column, justify="left" if column in ("protocol", "example") else "right")
    for entry in leakage:
        examples = entry["examples"]
        first = examples[0] if isinstance(examples, list) and examples else None
        table.add_row(str(entry["protocol"]), f"{entry['queries']:,}", f"{entry['leaking']:,}",
                      f"{entry['exact']:,}",
                      f"{first['query']} ~ {first['gallery']} ({first['similarity']:.3f})" if first else "")
    console.print(table)
