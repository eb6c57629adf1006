"""How many bytes a Milvus Lite collection holds on disk: its vector index files and the whole collection.

Milvus Lite 3.2 keeps each collection in ``DB/collections/NAME/``: rows in Parquet segments under
``partitions/*/data/`` (the raw float vectors stay there whatever the index) and one index file per segment
under ``partitions/*/indexes/`` (a FAISS index written with ``write_index``: what search loads into memory).
A server keeps its files elsewhere (object storage), so there the sizes are unknown (None).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DiskBytes:
    """``index``: the vector index files; ``total``: everything of the collection (rows, index, logs)."""

    index: int
    total: int


def lite_collection_bytes(db_path: str | Path, collection: str) -> DiskBytes | None:
    """Sizes of a Milvus Lite collection's files, or None when the layout is not the one described above."""
    folder = Path(db_path) / "collections" / collection
    if not folder.is_dir():
        return None
    files = [path for path in folder.rglob("*") if path.is_file()]
    index = sum(path.stat().st_size for path in files if path.parent.name == "indexes")
    return DiskBytes(index=index, total=sum(path.stat().st_size for path in files))
