"""``shelfsight index`` and ``shelfsight serve``: build the collection a service searches, and serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shelfsight.cli.common import CacheDir, DataDir, console

IndexDir = Annotated[Path, typer.Option("--index-dir", help="Index folder: manifest, Milvus Lite store, uploads.")]


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
