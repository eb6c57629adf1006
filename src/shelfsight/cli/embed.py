"""``shelfsight embed``: a catalogue through a backbone, in this process or on a Ray cluster, and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shelfsight.cli.common import CacheDir, DataDir, console

if TYPE_CHECKING:
    from shelfsight.catalog import Catalog
    from shelfsight.embeddings import Embeddings


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
    runtime: Annotated[str, typer.Option(help="auto (ONNX Runtime on a CPU where it agrees with PyTorch), torch, "
                                              "onnx or openvino.")] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute without reading or writing the cache.")] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="Items per cache chunk (the resume granularity).")] = 1024,
    limit: Annotated[int | None, typer.Option(min=1, help="Embed only the first N items.")] = None,
    output: Annotated[Path | None, typer.Option(
        help="Also write ids, image paths and vectors to this file: .parquet (what a bench `vectors` model reads; "
             "see docs/own-embeddings.md), .npz, or .npy with NAME.ids.txt.")] = None,
    download: Annotated[bool, typer.Option(help="Download a public dataset if absent (online only).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    engine: Annotated[str, typer.Option(help="local (this process and its workers) or ray (a Ray cluster).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="Ray: backbone actors (default: per GPU or CPU).")] = None,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="Ray: GPUs per backbone actor (e.g. 1).")] = 0.0,
) -> None:
    """Embed a catalogue with a backbone; cached, resumable, corrupt files skipped and reported."""
    from shelfsight.backbones import get_spec
    from shelfsight.catalog import load_catalog

    get_spec(model)  # a typo fails before a large catalogue is scanned
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise typer.BadParameter("use auto, fp32, bf16 or fp16", param_hint="--precision")
    if runtime not in ("auto", "torch", "onnx", "openvino"):
        raise typer.BadParameter("use auto, torch, onnx or openvino", param_hint="--runtime")
    catalog = load_catalog(dataset, data_dir=data_dir, splits=tuple(split) if split else None, cache_dir=cache_dir,
                           download=download, image_root=image_root)
    if limit:
        catalog = catalog.head(limit)
    if engine not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--engine")
    if engine == "ray":
        result, backbone_name = _embed_on_ray(
            catalog, model, random_init=random_init, weights=weights, no_cache=no_cache, address=address,
            actors=actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size, device=device, precision=precision,
            runtime=runtime,
            cache_dir=cache_dir, chunk_size=chunk_size, quiet=quiet)
    else:
        result, backbone_name = _embed_here(
            catalog, model, random_init=random_init, weights=weights, workers=workers, no_cache=no_cache,
            batch_size=batch_size, device=device, precision=precision, runtime=runtime, cache_dir=cache_dir,
            chunk_size=chunk_size, quiet=quiet)
    report = (result.write_skip_report((result.cache_folder or Path.cwd()) / f"skipped-{result.key[:12]}.csv")
              if result.skipped else None)
    if output:
        _export(output, catalog, backbone_name, result)
    print_embedding_summary(catalog.name, backbone_name, len(catalog), result, report, output)


def _export(output: Path, catalog: Catalog, model: str, result: Embeddings) -> None:
    """The vectors in the format a bench ``vectors`` model reads, with what made them in the file's metadata."""
    if output.suffix not in (".parquet", ".npz", ".npy"):
        raise typer.BadParameter("write .parquet, .npz or .npy", param_hint="--output")
    path_of = {item.item_id: str(item.image_path) for item in catalog.items}
    result.save(output, paths=[path_of[i] for i in result.ids],
                metadata={"model": model, "catalogue": catalog.name, "items": len(catalog),
                          "skipped": len(result.skipped)})


def _embed_on_ray(catalog: Catalog, model: str, *, random_init: bool, weights: Path | None, no_cache: bool,
                  address: str | None, actors: int | None, gpus_per_actor: float, batch_size: int | None,
                  device: str, precision: str, runtime: str, cache_dir: Path | None, chunk_size: int,
                  quiet: bool) -> tuple[Embeddings, str]:
    """The Ray engine: backbone actors on a cluster (a local one by default), results through the cache."""
    from shelfsight.embeddings.ray_engine import BackboneRecipe, RayOptions, embed_catalog_ray, shard_folder

    if no_cache:
        raise typer.BadParameter("the Ray engine writes its results through the cache", param_hint="--no-cache")
    recipe = BackboneRecipe(model, pretrained=not random_init, weights=str(weights) if weights else None)
    result = embed_catalog_ray(
        catalog, recipe, options=RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor),
        batch_size=batch_size, device=device, precision=precision, runtime=runtime,  # type: ignore[arg-type]
        cache_dir=cache_dir, chunk_size=chunk_size, progress=not quiet)
    console.print(f"Parquet shards for `shelfsight bulk-index --shards`: {shard_folder(result)}")
    return result, recipe.name


def _embed_here(catalog: Catalog, model: str, *, random_init: bool, weights: Path | None, workers: int | None,
                no_cache: bool, batch_size: int | None, device: str, precision: str, runtime: str,
                cache_dir: Path | None,
                chunk_size: int, quiet: bool) -> tuple[Embeddings, str]:
    """The local engine: this process runs the model, decoding worker processes feed it."""
    from shelfsight.backbones import load_backbone
    from shelfsight.embeddings import embed_catalog

    backbone = load_backbone(model, pretrained=not random_init, weights=weights)
    result = embed_catalog(
        catalog, backbone, batch_size=batch_size, num_workers=workers, device=device,
        precision=precision, runtime=runtime,  # type: ignore[arg-type]
        cache_dir=cache_dir, use_cache=not no_cache, chunk_size=chunk_size, progress=not quiet,
    )
    return result, backbone.spec.name


def print_embedding_summary(catalog_name: str, model: str, n_items: int, result: Embeddings,
                            report: Path | None, output: Path | None) -> None:
    cached = n_items - result.computed
    state = "hit" if result.computed == 0 else ("miss" if cached == 0 else f"partial ({cached} items cached)")
    table = Table(title=f"{model} on {catalog_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("items", str(n_items)), ("embedded", str(len(result.ids))), ("skipped", str(len(result.skipped))),
        ("dimension", str(result.dim)),
        ("device / precision / runtime", f"{result.device} / {result.precision} / {result.runtime or '-'}"),
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
