"""``shelfsight bulk-index``: embedding shards streamed into a Milvus collection, for catalogues too large for
``shelfsight index`` (docs/scaling.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shelfsight.cli.common import BuildTimeout, DataDir, console


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
    index_dir: Annotated[Path | None, typer.Option(
        help="Also write a folder `shelfsight serve` serves (with --model): image paths from --dataset, an "
             "attributes field; without --uri the store is the folder's milvus.db.")] = None,
    model: Annotated[str | None, typer.Option(help="The backbone the shards came from (with --index-dir).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    build_timeout: BuildTimeout = 300.0,
) -> None:
    """Stream embedding shards into a Milvus collection in bounded batches; rerun to finish an interrupted load.

    With --index-dir and --model the collection is made servable: `shelfsight serve --index-dir DIR`.
    """
    from shelfsight.catalog import load_catalog
    from shelfsight.embeddings.shards import read_shard
    from shelfsight.search.bulk import bulk_index

    if index_dir is None and (uri is None) == (db is None):
        raise typer.BadParameter("give exactly one of --uri (a server) or --db (a Milvus Lite file)")
    if index_dir is not None and db is not None:
        raise typer.BadParameter("with --index-dir the Milvus Lite store is the folder's milvus.db: drop --db, or "
                                 "give --uri for a server", param_hint="--db")
    if (index_dir is None) != (model is None):
        raise typer.BadParameter("--index-dir and --model go together: the folder records the model",
                                 param_hint="--model")
    files = sorted(shards.glob("*.parquet")) if shards.is_dir() else [shards]
    if not files or not files[0].is_file():
        raise typer.BadParameter(f"no Parquet shards in {shards}", param_hint="--shards")
    dim = int(read_shard(files[0])[1].shape[1])
    catalog = load_catalog(dataset, data_dir=data_dir) if dataset else None
    params = {"nlist": nlist, "m": m, "ef_construction": ef_construction}
    served = _served(index_dir, model, dim, uri, collection, index_type, params, catalog)
    requests = {"build_timeout": build_timeout, "build_progress": not quiet}
    with _open_index(uri, db, token, collection, dim, index_type, params, overwrite, served, requests) as index:
        attributes = served.attributes_for if served is not None and index.has_attributes else None
        report = bulk_index(index, files, read=read_shard, catalog=catalog, batch_rows=batch_rows,
                            read_ahead=read_ahead, progress=not quiet, attributes_for=attributes)
        total = len(index)
    console.print(f"{report.inserted} rows inserted ({report.already_present} already present, "
                  f"{report.not_in_catalog} not in the catalogue) from {report.shards} shard(s) in "
                  f"{report.seconds:.1f} s ({report.rows_per_second:.0f} rows/s); {collection} holds {total} rows")
    if served is not None:
        served.finish(report.inserted)
        console.print(f"servable: shelfsight serve --index-dir {served.layout.folder}"
                      + ("" if attributes else " (read-only: the collection has no attributes field)"))


def _served(index_dir: Path | None, model: str | None, dim: int, uri: str | None, collection: str, index_type: str,
            params: dict[str, int], catalog: Any) -> Any:
    """The servable folder being written, or None for a bare (bench-only) bulk load."""
    if index_dir is None or model is None:
        return None
    from shelfsight.serve.bulk_serving import served_bulk
    from shelfsight.serve.manifest import MilvusTarget

    kind = index_type.upper()
    wanted = {"IVF_FLAT": ("nlist",), "HNSW": ("m", "ef_construction")}.get(kind, ())
    target = MilvusTarget(uri=uri, collection=collection, index_type=kind,
                          params={name: value for name, value in params.items() if name in wanted})
    return served_bulk(index_dir, model=model, dim=dim, target=target, catalog=catalog)


def _open_index(uri: str | None, db: Path | None, token: str, collection: str, dim: int, index_type: str,
                params: dict[str, int], overwrite: bool, served: Any, requests: dict[str, Any]) -> Any:
    """The collection to load: on the server, in the --db file, or in the index folder's Milvus Lite store."""
    from shelfsight.search import MilvusIndex

    options = {"index_type": index_type.upper(), **params, "overwrite": overwrite, "reuse": not overwrite,
               "attributes": served is not None, **requests}
    if uri:
        return MilvusIndex.server(uri, token, collection, dim, **options)
    return MilvusIndex.lite(db if db is not None else served.layout.milvus_lite, collection, dim, **options)
