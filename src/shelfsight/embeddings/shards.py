"""Embeddings as Parquet shards (``id``, ``vector``): the hand-off between extraction and bulk indexing.

Parquet because every engine reads it (Ray Data, Spark, pandas, DuckDB) and object stores serve it
by ranges; one shard per cache chunk keeps shards whole and retries idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shelfsight.files import atomic_write


def write_shard(path: str | os.PathLike[str], ids: Sequence[str], vectors: np.ndarray) -> Path:
    """Write one shard atomically; vectors as a fixed-size float32 list column."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"id": pa.array(list(ids), pa.string()), "vector": column})
    return atomic_write(target, lambda path: pq.write_table(table, path), mode=None)


def read_shard(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """(ids, float32 vectors of shape (N, D)) of one shard."""
    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size if isinstance(column.type, pa.FixedSizeListType) else len(column[0])
    vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    return [str(v) for v in table.column("id").to_pylist()], vectors


def export_shards(ids: Sequence[str], vectors: np.ndarray, folder: str | os.PathLike[str],
                  rows_per_shard: int = 1024) -> list[Path]:
    """Write embeddings computed on one machine as shards, so both engines feed the same bulk indexer."""
    return [write_shard(Path(folder) / f"chunk-{start // rows_per_shard:05d}.parquet",
                        ids[start:start + rows_per_shard], vectors[start:start + rows_per_shard])
            for start in range(0, len(ids), rows_per_shard)]
