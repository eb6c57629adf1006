"""The ``shelfsight`` command: parse, call the public API, print. No logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from shelfsight import paths
from shelfsight.errors import ShelfsightError

if TYPE_CHECKING:
    from shelfsight.embeddings import Embeddings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Benchmark, adapt and serve image embeddings for e-commerce catalogues.")
console = Console()
if not console.is_terminal:  # logs and pipes: wide enough for the leaderboard's columns
    console = Console(width=160)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Datasets root (default: $SHELFSIGHT_DATA_DIR).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Cache root (default: $SHELFSIGHT_CACHE_DIR).")]


@app.command("models")
def models_command(
    family: Annotated[str | None, typer.Option(help="supervised, self-supervised or contrastive")] = None,
) -> None:
    """List the registered backbones, and whether their weights are available offline."""
    from shelfsight.backbones import list_specs, weights_status

    table = Table(title="Registered backbones (any timm:/open_clip:/hf:/torchhub: name works too)")
    for column in ("name", "family", "library", "checkpoint", "params (M)", "dim", "input", "licence", "weights"):
        table.add_column(column, justify="right" if column in ("params (M)", "dim", "input") else "left")
    for spec in list_specs(family):
        status = weights_status(spec)
        colour = {"packaged": "green", "cached": "green", "local": "green"}.get(status, "yellow")
        table.add_row(
            spec.name + (" *" if spec.in_paper else ""), spec.family, spec.library, spec.checkpoint,
            f"{spec.params_m:.1f}" if spec.params_m else "?", str(spec.embed_dim or "?"),
            str(spec.preprocess.input_size), spec.licence, f"[{colour}]{status}[/]",
        )
    console.print(table)
    console.print("* evaluated in the paper. weights: packaged/cached = available offline; download = needs the hub.")


@app.command("datasets")
def datasets_command(data_dir: DataDir = None) -> None:
    """List the datasets shelfsight reads, and whether each is present."""
    from shelfsight.catalog import DATASETS, load_catalog

    table = Table(title=f"Datasets ({paths.describe_data_dir(data_dir)})")
    for column in ("name", "present", "splits", "licence", "description"):
        table.add_column(column)
    for entry in DATASETS.values():
        try:
            catalog = load_catalog(entry.name, data_dir=data_dir, splits=(entry.splits[-1],))
            present = f"[green]yes[/] ({catalog.description.split(':')[0]})"
        except ShelfsightError:
            present = "[yellow]no[/]"
        table.add_row(entry.name, present, ", ".join(entry.splits), entry.licence, entry.description)
    console.print(table)


@app.command("embed")
def embed_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone name (see `shelfsight models`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name, image folder or manifest.")],
    split: Annotated[list[str] | None, typer.Option("--split", "-s", help="Split(s) to embed (repeatable).")] = None,
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file/folder instead of the hub.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random weights (the floor).")] = False,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: 16 on CPU, 128 on GPU.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute without reading or writing the cache.")] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="Items per cache chunk (the resume granularity).")] = 1024,
    limit: Annotated[int | None, typer.Option(min=1, help="Embed only the first N items.")] = None,
    output: Annotated[Path | None, typer.Option(help="Also write ids and vectors to this .npz file.")] = None,
    download: Annotated[bool, typer.Option(help="Download a public dataset if absent (online only).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Embed a catalogue with a backbone; cached, resumable, corrupt files skipped and reported."""
    from shelfsight.backbones import get_spec, load_backbone
    from shelfsight.catalog import load_catalog
    from shelfsight.embeddings import embed_catalog

    get_spec(model)  # a typo fails before a large catalogue is scanned
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise typer.BadParameter("use auto, fp32, bf16 or fp16", param_hint="--precision")
    catalog = load_catalog(dataset, data_dir=data_dir, splits=tuple(split) if split else None, cache_dir=cache_dir,
                           download=download, image_root=image_root)
    if limit:
        catalog = catalog.head(limit)
    backbone = load_backbone(model, pretrained=not random_init, weights=weights)
    result = embed_catalog(
        catalog, backbone, batch_size=batch_size, num_workers=workers, device=device,
        precision=precision,  # type: ignore[arg-type]
        cache_dir=cache_dir, use_cache=not no_cache, chunk_size=chunk_size, progress=not quiet,
    )
    report = result.write_skip_report((result.cache_folder or Path.cwd()) / "skipped.csv") if result.skipped else None
    if output:
        result.save(output)
    print_embedding_summary(catalog.name, backbone.spec.name, len(catalog), result, report, output)


def print_embedding_summary(catalog_name: str, model: str, n_items: int, result: Embeddings,
                            report: Path | None, output: Path | None) -> None:
    cached = n_items - result.computed
    state = "hit" if result.computed == 0 else ("miss" if cached == 0 else f"partial ({cached} items cached)")
    table = Table(title=f"{model} on {catalog_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("items", str(n_items)), ("embedded", str(len(result.ids))), ("skipped", str(len(result.skipped))),
        ("dimension", str(result.dim)), ("device / precision", f"{result.device} / {result.precision}"),
        ("cache", state), ("time", f"{result.seconds:.2f} s"),
    ]
    if result.computed:
        rows.append(("throughput", f"{result.images_per_second:.1f} images/s"))
    if result.cache_folder:
        rows.append(("cache folder", str(result.cache_folder)))
    if report:
        rows.append(("skip report", str(report)))
    if output:
        rows.append(("output", str(output)))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("bench")
def bench_command(
    config: Annotated[Path, typer.Argument(help="Experiment YAML: models x datasets x strategies.")],
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<config name>).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: SQLite in the run folder).")] = None,
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run every cell of an experiment; finished cells are skipped, so an interrupted run resumes."""
    from shelfsight.bench import load_config, print_leaderboard, run_bench

    settings = load_config(config)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": str(data_dir)})
    target = run_dir or Path("runs") / settings.name
    summary = run_bench(settings, target, tracking_uri=tracking_uri, progress=not quiet, console=console)
    console.print(f"{len(summary.computed)} computed, {len(summary.skipped)} already done, "
                  f"{len(summary.failed)} failed · {target / 'results.csv'}")
    if summary.table is not None and len(summary.table):
        print_leaderboard(target, console=console)
    if summary.failed:
        raise typer.Exit(1)


@app.command("leaderboard")
def leaderboard_command(run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")]) -> None:
    """Print the run's leaderboard and write RUN/leaderboard.md."""
    from shelfsight.bench import print_leaderboard

    path = print_leaderboard(run_dir, console=console)
    console.print(f"written: {path}")


@app.command("demo")
def demo_command(
    data_dir: DataDir = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/demo).")] = None,
) -> None:
    """Benchmark real pretrained backbones (EfficientNet-Lite) on the real datasets at hand."""
    from shelfsight.demo import run_demo

    run_demo(data_dir=data_dir, run_dir=run_dir, console=console)


def main() -> None:
    """Entry point: a ShelfsightError is a message for the user, not a stack trace."""
    try:
        app()
    except ShelfsightError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
