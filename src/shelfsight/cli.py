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


datasets_app = typer.Typer(help="List the datasets shelfsight reads; `check NAME` verifies one.")
app.add_typer(datasets_app, name="datasets")


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
    from shelfsight.protocols import PROTOCOLS

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
                      "; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.get(entry.name, ())), entry.licence)
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
) -> None:
    """Verify a download: images per split against the official counts, missing or unreadable files."""
    from shelfsight.catalog.check import check_dataset

    report = check_dataset(name, data_dir=data_dir or ctx.obj, cache_dir=cache_dir, decode=not no_decode,
                           workers=workers, progress=console.is_terminal)
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
    for line in report.warnings():
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for line in report.problems():
        console.print(f"[bold red]problem:[/] {line}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"[green]{name}: every listed image is present{' and decodes' if report.decoded else ''}.[/]")


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
    engine: Annotated[str, typer.Option(help="local (this process and its workers) or ray (a Ray cluster).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="Ray: backbone actors (default: per GPU or CPU).")] = None,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="Ray: GPUs per backbone actor (e.g. 1).")] = 0.0,
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
    if engine not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--engine")
    if engine == "ray":
        from shelfsight.embeddings.ray_engine import BackboneRecipe, RayOptions, embed_catalog_ray

        if no_cache:
            raise typer.BadParameter("the Ray engine writes its results through the cache", param_hint="--no-cache")
        recipe = BackboneRecipe(model, pretrained=not random_init, weights=str(weights) if weights else None)
        result = embed_catalog_ray(
            catalog, recipe, options=RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor),
            batch_size=batch_size, device=device, precision=precision,  # type: ignore[arg-type]
            cache_dir=cache_dir, chunk_size=chunk_size, progress=not quiet)
        backbone_name = recipe.name
    else:
        backbone = load_backbone(model, pretrained=not random_init, weights=weights)
        backbone_name = backbone.spec.name
        result = embed_catalog(
            catalog, backbone, batch_size=batch_size, num_workers=workers, device=device,
            precision=precision,  # type: ignore[arg-type]
            cache_dir=cache_dir, use_cache=not no_cache, chunk_size=chunk_size, progress=not quiet,
        )
    report = result.write_skip_report((result.cache_folder or Path.cwd()) / "skipped.csv") if result.skipped else None
    if output:
        result.save(output)
    print_embedding_summary(catalog.name, backbone_name, len(catalog), result, report, output)


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


@app.command("finetune")
def finetune_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone to fine-tune (see `shelfsight models`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name, image folder or manifest.")],
    output: Annotated[Path | None, typer.Option(help="Save folder (default: CACHE/finetuned/<name>).")] = None,
    settings: Annotated[Path | None, typer.Option("--config", help="YAML of fine-tuning settings "
                                                  "(FinetuneConfig fields, or a bench config's finetune:).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Per process and step.")] = None,
    accum_steps: Annotated[int | None, typer.Option(min=1, help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of the backbone.")] = None,
    layer_decay: Annotated[float | None, typer.Option(help="Layer-wise lr decay, e.g. 0.75.")] = None,
    loss: Annotated[str | None, typer.Option(help="ce, arcface or proxy_anchor.")] = None,
    input_size: Annotated[int | None, typer.Option(min=1, help="Training crop (default: the backbone's).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes per process.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Start from random weights.")] = False,
    data_dir: DataDir = None,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and a finished model; "
                                          "train from scratch.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Fine-tune a backbone end to end; resumable. Several GPUs or nodes: launch it with torchrun."""
    import os

    from shelfsight.adapt import finetune, load_finetune_config
    from shelfsight.backbones import finetuned_name, get_spec, load_backbone
    from shelfsight.backbones.finetuned import default_output
    from shelfsight.catalog import load_catalog

    get_spec(model)  # a typo fails before the catalogue is scanned
    config = load_finetune_config(settings, epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr,
                                  layer_decay=layer_decay, loss=loss, input_size=input_size, seed=seed,
                                  device=device, num_workers=workers)
    catalog = load_catalog(dataset, data_dir=data_dir, image_root=image_root)
    name = finetuned_name(model, catalog.name)
    backbone = load_backbone(model, pretrained=not random_init)
    result = finetune(catalog, backbone, dataset=catalog.name, output=output or default_output(name), config=config,
                      name=name, resume=not restart, progress=not quiet, console=console)
    if os.environ.get("RANK", "0") != "0":
        return
    table = Table(title=f"{result.name}", show_header=False)
    for row in (("folder", str(result.folder)), ("epochs", f"{result.epochs} (best {result.best_epoch + 1})"),
                ("best val accuracy", f"{result.best_val_accuracy:.4f}"),
                ("training", f"{result.costs['tune_seconds']:.0f} s · {result.costs['train_images_per_s']:.1f} img/s"),
                ("device", f"{result.device} x {result.world_size}")):
        table.add_row(*row)
    console.print(table)
    target = result.name if output is None else finetuned_name(model, str(result.folder))
    console.print(f"use it as a backbone: shelfsight embed --model '{target}' --dataset {dataset}")


@app.command("bench")
def bench_command(
    config: Annotated[Path, typer.Argument(help="Experiment YAML: models x datasets x strategies.")],
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<config name>).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: SQLite in the run folder).")] = None,
    data_dir: DataDir = None,
    recompute: Annotated[list[str] | None, typer.Option(
        "--recompute", help="Glob of cell ids to compute again whatever is stored (repeatable), e.g. '*toptune*'.",
    )] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run every cell of an experiment. A stored cell is reused only when its inputs (weights, preprocessing,
    catalogue, strategy settings, index, seed) are unchanged, so an interrupted run resumes and a changed
    config recomputes exactly what it changed."""
    from shelfsight.bench import load_config, print_leaderboard, run_bench

    settings = load_config(config)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": str(data_dir)})
    target = run_dir or Path("runs") / settings.name
    summary = run_bench(settings, target, tracking_uri=tracking_uri, progress=not quiet, console=console,
                        recompute=recompute or ())
    console.print(f"{len(summary.computed)} computed, {len(summary.reused)} reused, "
                  f"{len(summary.failed)} failed · {target / 'results.csv'}")
    if summary.table is not None and len(summary.table):
        print_leaderboard(target, console=console)
    if summary.failed:
        raise typer.Exit(1)


@app.command("compare")
def compare_command(
    run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")],
    a: Annotated[str, typer.Argument(help="First cell, MODEL:STRATEGY (e.g. efficientnet_lite2:pretrained).")],
    b: Annotated[str, typer.Argument(help="Second cell, MODEL:STRATEGY.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset (needed when the cells ran on several).")] = None,
    protocol: Annotated[str | None, typer.Option(help="Protocol, or 'classification' (default: the first "
                                                      "retrieval protocol).")] = None,
    metric: Annotated[str | None, typer.Option(help="Metric (default: mMP@5, or accuracy).")] = None,
    permutations: Annotated[int, typer.Option(help="Permutations of the paired test.")] = 10000,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the interval.")] = 1000,
) -> None:
    """A - B on the same queries: the difference, its 95% interval and the paired test's p-value."""
    from shelfsight.bench.compare import compare

    found = compare(run_dir, a, b, metric=metric, protocol=protocol, dataset=dataset, n_permutations=permutations,
                    n_resamples=resamples)
    r = found.result
    table = Table(title=f"{found.dataset} · {found.protocol} · {found.metric}", show_header=False)
    for row in (("A", f"{found.a}: {found.mean_a:.4f}"), ("B", f"{found.b}: {found.mean_b:.4f}"),
                ("A - B", f"{r.difference:+.4f}"), ("95% interval", f"{r.low:+.4f} to {r.high:+.4f}"),
                ("p-value", f"{r.p_value:.4g} ({r.method})"), ("queries", f"{r.n_queries}"),
                ("seeds", f"A {r.seeds_a}, B {r.seeds_b}"),
                ("verdict", "significant at 0.05 (p < 0.05 and the interval excludes 0)" if found.significant()
                 else "tied within noise (p >= 0.05 or the interval holds 0)")):
        table.add_row(*row)
    console.print(table)


@app.command("leaderboard")
def leaderboard_command(run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")]) -> None:
    """Print the run's leaderboard and write RUN/leaderboard.md."""
    from shelfsight.bench import print_leaderboard

    path = print_leaderboard(run_dir, console=console)
    console.print(f"written: {path}")


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN/report).")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML report in a browser.")] = False,
    mlflow: Annotated[bool, typer.Option(help="Log the report to the run's MLflow experiment.")] = True,
) -> None:
    """Write RUN/report/report.html (self-contained, opens offline) and report.md from the stored results."""
    from shelfsight.report import write_report

    files = write_report(run_dir, out, log_mlflow=mlflow)
    console.print(f"report: {files.html}\nsummary: {files.markdown}", highlight=False)
    if files.mlflow_error:
        console.print(f"[yellow]MLflow logging failed: {files.mlflow_error}[/]")
    if open_browser:
        import webbrowser

        webbrowser.open(files.html.resolve().as_uri())


@app.command("demo")
def demo_command(
    data_dir: DataDir = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/demo).")] = None,
) -> None:
    """Benchmark real pretrained backbones (EfficientNet-Lite) on the real datasets at hand."""
    from shelfsight.demo import run_demo

    run_demo(data_dir=data_dir, run_dir=run_dir, console=console)


IndexDir = Annotated[Path, typer.Option("--index-dir", help="Index folder: manifest, Milvus Lite store, uploads.")]


@app.command("index")
def index_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone name (see `shelfsight models`).")],
    catalog: Annotated[str, typer.Option("--catalog", "-c", help="Dataset name, image folder or manifest.")],
    head: Annotated[Path | None, typer.Option(help="A saved top-tuned head folder: enables /tag.")] = None,
    index_dir: IndexDir = Path("shelfsight-index"),
    split: Annotated[list[str] | None, typer.Option("--split", "-s", help="Split(s) to index (repeatable).")] = None,
    vectors: Annotated[str, typer.Option(help="Store 'backbone' or top-tuned 'head' vectors.")] = "backbone",
    uri: Annotated[str | None, typer.Option(help="Milvus server URI (default: Milvus Lite).")] = None,
    token: Annotated[str, typer.Option(envvar="MILVUS_TOKEN", help="Milvus server token.")] = "",
    collection: Annotated[str, typer.Option(help="Milvus collection name.")] = "catalogue",
    index_type: Annotated[str, typer.Option(help="FLAT, IVF_FLAT or HNSW.")] = "FLAT",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild: drops the collection and uploads.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Export the ONNX Runtime encoder now.")] = True,
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file/folder instead of the hub.")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: 16 on CPU, 128 on GPU.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Build or extend the Milvus collection that `shelfsight serve` searches (items already there are kept)."""
    from shelfsight.backbones import get_spec
    from shelfsight.catalog import load_catalog
    from shelfsight.serve import build_index

    get_spec(model)
    if vectors not in ("backbone", "head"):
        raise typer.BadParameter("use backbone or head", param_hint="--vectors")
    source = load_catalog(catalog, data_dir=data_dir, splits=tuple(split) if split else None, cache_dir=cache_dir,
                          image_root=image_root)
    report = build_index(model, source, index_dir, head=head, vectors=vectors,  # type: ignore[arg-type]
                         weights=weights, uri=uri, token=token, collection=collection, index_type=index_type,
                         overwrite=overwrite, export_onnx=onnx, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=workers, progress=not quiet)
    console.print(f"{report.added} added, {report.already_indexed} already indexed, {len(report.skipped)} skipped "
                  f"(unreadable), {report.total} items in {report.folder} ({report.vectors} vectors, {report.dim}-d, "
                  f"{report.seconds:.1f} s)" + (f"; ONNX encoder {report.onnx}" if report.onnx else ""))
    if report.outside_root:
        console.print(f"[yellow]{report.outside_root} item(s) lie outside {source.root}: searchable, images not served")


@app.command("serve")
def serve_command(
    index_dir: IndexDir = Path("shelfsight-index"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    encoder: Annotated[str, typer.Option(help="auto (the faster that agrees), torch or onnx.")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest accepted upload (413 above).")] = 10.0,
    token: Annotated[str, typer.Option(envvar="MILVUS_TOKEN", help="Milvus server token.")] = "",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve visual search, tagging and catalogue changes over an index folder, with a web page at /."""
    from shelfsight.serve import ServeSettings, run_server

    if encoder not in ("auto", "torch", "onnx"):
        raise typer.BadParameter("use auto, torch or onnx", param_hint="--encoder")
    settings = ServeSettings(index_dir=index_dir, encoder=encoder,  # type: ignore[arg-type]
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024), token=token)
    console.print(f"serving {index_dir} on http://{host}:{port}/ (API docs at /docs)")
    run_server(settings, host=host, port=port, log_level=log_level)


@app.command("bulk-index")
def bulk_index_command(
    shards: Annotated[Path, typer.Option(help="A folder of Parquet shards (id, vector), e.g. a cache's shards/.")],
    collection: Annotated[str, typer.Option(help="Milvus collection to create or extend.")],
    uri: Annotated[str | None, typer.Option(help="Milvus server URI, e.g. http://127.0.0.1:19530.")] = None,
    db: Annotated[Path | None, typer.Option(help="Milvus Lite database file (.db) instead of a server.")] = None,
    token: Annotated[str, typer.Option(help="Milvus token (user:password), if the server needs one.")] = "",
    dataset: Annotated[str | None, typer.Option(help="Catalogue giving labels and splits by id.")] = None,
    data_dir: DataDir = None,
    index_type: Annotated[str, typer.Option(help="FLAT, IVF_FLAT, HNSW, or DISKANN (server only).")] = "HNSW",
    nlist: Annotated[int, typer.Option(min=1, help="IVF_FLAT: clusters.")] = 1024,
    m: Annotated[int, typer.Option(min=1, help="HNSW: links per node.")] = 16,
    ef_construction: Annotated[int, typer.Option(min=1, help="HNSW: build beam.")] = 200,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per insert request.")] = 5000,
    read_ahead: Annotated[int, typer.Option(min=1, help="Shards read ahead of the writer (bounds memory).")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Drop an existing collection first.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Stream embedding shards into a Milvus collection in bounded batches; rerun to finish an interrupted load."""
    from shelfsight.catalog import load_catalog
    from shelfsight.embeddings.shards import read_shard
    from shelfsight.search import MilvusIndex
    from shelfsight.search.bulk import bulk_index

    if (uri is None) == (db is None):
        raise typer.BadParameter("give exactly one of --uri (a server) or --db (a Milvus Lite file)")
    files = sorted(shards.glob("*.parquet")) if shards.is_dir() else [shards]
    if not files or not files[0].is_file():
        raise typer.BadParameter(f"no Parquet shards in {shards}", param_hint="--shards")
    dim = int(read_shard(files[0])[1].shape[1])
    catalog = load_catalog(dataset, data_dir=data_dir) if dataset else None
    options = {"index_type": index_type.upper(), "nlist": nlist, "m": m, "ef_construction": ef_construction,
               "overwrite": overwrite, "reuse": not overwrite}
    index = (MilvusIndex.server(uri, token, collection, dim, **options) if uri  # type: ignore[arg-type]
             else MilvusIndex.lite(db, collection, dim, **options))  # type: ignore[arg-type]
    with index:
        report = bulk_index(index, files, catalog=catalog, batch_rows=batch_rows, read_ahead=read_ahead,
                            progress=not quiet)
        total = len(index)
    console.print(f"{report.inserted} rows inserted ({report.already_present} already present, "
                  f"{report.not_in_catalog} not in the catalogue) from {report.shards} shard(s) in "
                  f"{report.seconds:.1f} s ({report.rows_per_second:.0f} rows/s); {collection} holds {total} rows")


def main() -> None:
    """Entry point: a ShelfsightError is a message for the user, not a stack trace."""
    try:
        app()
    except ShelfsightError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
