"""``shelfsight models`` and ``shelfsight datasets``: the backbones and datasets shelfsight knows, and which
are at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shelfsight import paths
from shelfsight.cli.common import CacheDir, DataDir, Group, ImageRoot, console


def models_command(
    family: Annotated[str | None, typer.Option(help="supervised, self-supervised or contrastive")] = None,
) -> None:
    """List the registered backbones, and whether their weights are available offline."""
    from shelfsight.backbones import list_specs, weights_status

    table = Table(title="Registered backbones (any timm:/open_clip:/hf:/torchhub: name works too)")
    for column in ("name", "family", "library", "checkpoint", "params (M)", "dim", "input", "text", "licence",
                   "weights"):
        table.add_column(column, justify="right" if column in ("params (M)", "dim", "input") else "left")
    for spec in list_specs(family):
        status = weights_status(spec)
        colour = {"packaged": "green", "cached": "green", "local": "green"}.get(status, "yellow")
        table.add_row(
            spec.name + (" *" if spec.in_paper else ""), spec.family, spec.library, spec.checkpoint,
            f"{spec.params_m:.1f}" if spec.params_m else "?", str(spec.embed_dim or "?"),
            str(spec.preprocess.input_size), {True: "yes", False: "-", None: "?"}[spec.has_text_tower],
            spec.licence, f"[{colour}]{status}[/]",
        )
    console.print(table)
    console.print("* evaluated in the paper. text: a text tower for zero-shot tagging and text search (? = known once "
                  "loaded). weights: packaged/cached = available offline; download = needs the hub.")


datasets_app = typer.Typer(help="List the datasets shelfsight reads; `check NAME` verifies one.")


@datasets_app.callback(invoke_without_command=True)
def datasets_command(ctx: typer.Context, data_dir: DataDir = None) -> None:
    """List the datasets shelfsight reads, whether each is present, and how to get it."""
    ctx.obj = data_dir
    if ctx.invoked_subcommand is None:
        _list_datasets(data_dir)


@datasets_app.command("list")
def datasets_list_command(ctx: typer.Context, data_dir: DataDir = None) -> None:
    """List the datasets shelfsight reads, whether each is present, and how to get it."""
    _list_datasets(data_dir or ctx.obj)


def _list_datasets(data_dir: Path | None) -> None:
    from shelfsight.catalog import DATASETS

    root = paths.data_dir(data_dir)
    table = Table(title=f"Datasets ({paths.describe_data_dir(data_dir)})")
    for column in ("name", "present", "images", "splits", "retrieval protocol", "licence"):
        table.add_column(column, justify="right" if column == "images" else "left")
    absent = []
    for entry in DATASETS.values():
        found = entry.locate(root) if entry.locate else None
        if found is None:
            absent.append(entry)
        total = entry.expected_total
        table.add_row(entry.name, f"[green]yes[/] {found}" if found else "[yellow]no[/]",
                      f"{total:,}" if total else "?", ", ".join(entry.splits),
                      "; ".join(f"{p.name}: {p.description}" for p in entry.protocols), entry.licence)
    console.print(table)
    for entry in absent:
        console.print(f"[bold]{entry.name}[/]: {entry.how_to_get}", highlight=False)
    console.print("Also: hf:<saved folder or hub name>[?image=COL&label=COL&...], an image folder, or a CSV/Parquet "
                  "manifest. Verify a download with `shelfsight datasets check NAME`.", highlight=False)


@datasets_app.command("check")
def datasets_check_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A dataset name (or any folder, manifest or hf: source).")],
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Only check that the files exist.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding threads (default: CPUs, at most 8).")] = None,
    model: Annotated[str | None, typer.Option(help="Also count near-duplicate leakage with this backbone's "
                                                   "embeddings (see docs/duplicates.md).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Near-duplicate cosine for --model (default: its "
                                                         "calibrated threshold for precision 0.99).")] = None,
    image_root: ImageRoot = None,
    group: Group = None,
) -> None:
    """Verify a download: images per split against the official counts, missing or unreadable files, and queries
    with a duplicate in their gallery."""
    from shelfsight.catalog.check import check_dataset
    from shelfsight.duplicates.check import with_leakage

    checked = check_dataset(name, data_dir=data_dir or ctx.obj, cache_dir=cache_dir, decode=not no_decode,
                            workers=workers, progress=console.is_terminal, image_root=image_root, group=group)
    report = with_leakage(checked, model=model, threshold=threshold, progress=console.is_terminal)
    table = Table(title=f"{name} ({report.root or 'not found'})")
    for column in ("split", "images", "official", "labels", "products", ""):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in report.splits:
        mark = {True: "[green]ok[/]", False: "[red]differs[/]" if report.counts_verified else "[yellow]differs[/]",
                None: ""}[split.matches]
        table.add_row(split.split, f"{split.images:,}", f"{split.expected:,}" if split.expected else "-",
                      f"{split.labels:,}", f"{split.products:,}" if split.products else "-", mark)
    console.print(table)
    for size in report.protocols:
        shape = "leave-one-out" if size.leave_one_out else f"against {size.gallery:,} gallery items"
        console.print(f"protocol {size.name}: {size.queries:,} queries, {shape}", highlight=False)
    for line in report.notes:
        console.print(line, highlight=False)
    for line in report.warnings():
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for line in report.problems():
        console.print(f"[bold red]problem:[/] {line}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"[green]{name}: every listed image is present{' and decodes' if report.decoded else ''}.[/]")
