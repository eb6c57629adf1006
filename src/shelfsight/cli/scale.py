"""``shelfsight bulk-index``: embedding shards streamed into a Milvus collection, for catalogues too large for
``shelfsight index`` (docs/scaling.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shelfsight.cli.common import DataDir, console


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
