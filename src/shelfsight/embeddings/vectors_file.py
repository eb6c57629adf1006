"""Vectors files: the format ``shelfsight embed --output`` writes, and the reader that turns one into a
catalogue's embeddings for a ``vectors`` model (``backbones.vectors``).

Formats: Parquet (``id`` and/or ``path`` columns and a ``vector`` list column; what ``embed --output`` writes),
``.npz`` (``vectors`` with ``ids`` and/or ``paths``), ``.npy`` (the vectors; ids one per line in a text file).
Rows are float (16, 32 or 64 bits) or int8, of any dimension; they match catalogue items by id or by image path.

A file is checked whole before anything scores on it, each problem one error naming the file, the count and
the first ids: rows of mixed dimensions, duplicate ids, non-finite or zero vectors, and catalogue items the file
lacks (an error unless the model says ``missing: skip``; then they are skipped photos, never a silently smaller
set). Ids the catalogue lacks are ignored and counted. Vectors are L2-normalised on load, as extraction's are;
a row already of unit length (within 1e-6) is kept bit for bit, so a file written from shelfsight's own
embeddings reproduces them exactly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shelfsight.backbones import VectorsSource
from shelfsight.catalog.types import Catalog
from shelfsight.embeddings.cache import PERMANENT, SkippedItem, cache_key
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

ID_COLUMNS, PATH_COLUMNS, VECTOR_COLUMNS = ("id", "item_id"), ("path", "image_path"), ("vector", "embedding")
METADATA_KEY = b"shelfsight"
UNIT_TOLERANCE = 1e-6
"""A row whose norm is within this of 1 is already normalised: kept as it is."""
SHOWN = 5
READ_BUFFER_BYTES = 1 << 20
"""Bytes a Parquet read buffers at a time (Arrow's streamed read)."""
READ_ROWS = 4_096
"""Rows of a Parquet file decoded at a time: Arrow holds about six times a block while decoding it (100k x 1,280:
0.12 GB over the vectors at 4,096 rows, 0.5 GB at 16,384; ``benchmarks/vectors_read.py``)."""
NOT_IN_FILE = "not in the vectors file"


class VectorsFileError(ShelfsightError):
    """A vectors file that cannot be used as it is: the message names the file, the problem and the first ids."""


@dataclass
class VectorRows:
    """A vectors file as read: the key of each row (an id or a resolved path), the vectors, what the keys are."""

    keys: list[str]
    vectors: np.ndarray
    key_kind: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlignedVectors:
    """A catalogue's vectors from a file: catalogue order, skipped items left out, and notes for the report."""

    ids: list[str]
    vectors: np.ndarray
    skipped: list[SkippedItem]
    key: str
    notes: dict[str, Any]


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:SHOWN])
    return f"{shown}{', ...' if len(keys) > SHOWN else ''}"


# ── reading ─────────────────────────────────────────────────────────────────────────────────────────


def read_rows(source: VectorsSource) -> VectorRows:
    """The file's rows, keyed as ``source.key`` says, its dimensions checked (one per file)."""
    path = source.path
    try:
        if path.suffix == ".parquet":
            rows = _read_parquet(path, source.key)
        elif path.suffix == ".npz":
            rows = _read_npz(path, source.key)
        else:
            rows = _read_npy(path, source.ids, source.key)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        hint = "; rows of mixed dimensions make an object array: give every row one dimension" \
            if "Object arrays" in str(exc) else ""
        raise VectorsFileError(f"{path}: cannot read it as a vectors file ({type(exc).__name__}: {exc}){hint}") \
            from None
    if rows.key_kind == "path":
        rows.keys = [_resolved(k, path.parent) for k in rows.keys]
    if rows.vectors.ndim != 2 or rows.vectors.shape[1] == 0:
        raise VectorsFileError(f"{path}: vectors must be one row per item with at least one dimension; got shape "
                               f"{rows.vectors.shape}")
    if len(rows.keys) != len(rows.vectors):
        raise VectorsFileError(f"{path}: {len(rows.keys)} ids for {len(rows.vectors)} vectors; give one id per row")
    return rows


def _key_column(names: Sequence[str], key: str, path: Path) -> tuple[str, str]:
    """The column that keys rows and what it holds (``id`` or ``path``)."""
    wanted = {"id": ID_COLUMNS, "path": PATH_COLUMNS, "auto": (*ID_COLUMNS, *PATH_COLUMNS)}[key]
    for name in wanted:
        if name in names:
            return name, "id" if name in ID_COLUMNS else "path"
    raise VectorsFileError(f"{path}: no {' or '.join(wanted)} column to match rows with catalogue items "
                           f"(it has {', '.join(names) or 'none'})")


def _read_parquet(path: Path, key: str) -> VectorRows:
    rows = _parquet_rows(path, key)
    release_arrow_pages()  # after the reader and its last block are gone
    return rows


def _parquet_rows(path: Path, key: str) -> VectorRows:
    # Streamed: without pre-buffering, a block's pages are read as it is decoded, not the whole column chunk at once.
    with pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES) as file:
        names = file.schema_arrow.names
        column, kind = _key_column(names, key, path)
        vector_name = next((n for n in VECTOR_COLUMNS if n in names), None)
        if vector_name is None:
            raise VectorsFileError(f"{path}: no vector column ({' or '.join(VECTOR_COLUMNS)}); it has "
                                   f"{', '.join(names)}")
        keys = [str(v) for v in file.read(columns=[column]).column(0).to_pylist()]
        vectors = _vector_column(file, vector_name, keys, path)
        raw = (file.schema_arrow.metadata or {}).get(METADATA_KEY)
    return VectorRows(keys, vectors, kind, json.loads(raw) if raw else {})


def release_arrow_pages() -> None:
    """Arrow's allocator keeps the pages of a read after they are freed: 1.3 GB of a whole-table read of a 0.5 GB
    file (100k x 1,280) stayed resident until given back (``benchmarks/vectors_read.py``)."""
    pa.default_memory_pool().release_unused()


def _vector_column(file: pq.ParquetFile, name: str, keys: list[str], path: Path) -> np.ndarray:
    """A list column as an (N, D) array, read in blocks into one array: the file's vectors are held once, not as
    Arrow's table, its combined copy and numpy's view of it. Rows of another length than the usual are refused."""
    arrow_type = file.schema_arrow.field(name).type
    is_list = pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or \
        pa.types.is_large_list(arrow_type)
    if not is_list or not (pa.types.is_floating(arrow_type.value_type) or pa.types.is_integer(arrow_type.value_type)):
        raise VectorsFileError(f"{path}: the vector column must hold lists of numbers, not {arrow_type}")
    lengths = np.zeros(len(keys), dtype=np.int64)
    out: np.ndarray | None = None
    start = 0
    for batch in file.iter_batches(batch_size=READ_ROWS, columns=[name], use_threads=False):
        block = batch.column(0)
        counts = pc.list_value_length(block).fill_null(0).to_numpy(zero_copy_only=False)
        lengths[start:start + len(block)] = counts
        if out is None:
            dim = int(counts[0]) if len(counts) else 0
            out = np.zeros((len(keys), dim), dtype=arrow_type.value_type.to_pandas_dtype())
        if (counts == out.shape[1]).all():  # else _check_dims below names the odd rows
            flat = block.flatten()
            if flat.null_count and out.dtype.kind != "f":
                raise VectorsFileError(f"{path}: {flat.null_count} empty (null) value(s) in integer vectors; fill "
                                       "or drop those rows")
            out[start:start + len(block)] = flat.to_numpy(zero_copy_only=False).reshape(len(block), out.shape[1])
        start += len(block)
    _check_dims(lengths, keys, path)
    return out if out is not None else np.zeros((0, 0), np.float32)


def _check_dims(lengths: np.ndarray, keys: list[str], path: Path) -> None:
    if not len(lengths):
        return
    counts = Counter(lengths.tolist())
    common = counts.most_common(1)[0][0]
    odd = [keys[i] for i in np.flatnonzero(lengths != common)]
    if odd:
        sizes = ", ".join(f"{n} row(s) of {d}" for d, n in sorted(counts.items()))
        raise VectorsFileError(f"{path}: vectors of mixed dimensions ({sizes}); {len(odd)} row(s) differ from the "
                               f"usual {common}: {_first(odd)}. Every row must have one dimension")


def _read_npz(path: Path, key: str) -> VectorRows:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        vector_name = next((n for n in ("vectors", *VECTOR_COLUMNS) if n in names), None)
        if vector_name is None:
            raise VectorsFileError(f"{path}: no `vectors` array (it has {', '.join(names)})")
        wanted = {"id": ("ids", *ID_COLUMNS), "path": ("paths", *PATH_COLUMNS)}
        order = ("id", "path") if key == "auto" else (key,)
        for kind in order:
            name = next((n for n in wanted[kind] if n in names), None)
            if name is not None:
                return VectorRows([str(k) for k in archive[name]], np.asarray(archive[vector_name]), kind)
    raise VectorsFileError(f"{path}: no {' or '.join(order)} array to match rows with catalogue items "
                           f"(it has {', '.join(names)})")


def _read_npy(path: Path, ids: Path | None, key: str) -> VectorRows:
    if ids is None:
        raise VectorsFileError(f"{path}: a .npy file needs its ids file")
    keys = [line.rstrip("\r\n") for line in ids.read_text(encoding="utf-8").splitlines() if line.strip()]
    return VectorRows(keys, np.load(path, allow_pickle=False), "path" if key == "path" else "id")


def _resolved(path: str, base: Path) -> str:
    """An image path as rows and catalogue items are compared: absolute (a relative one from the file's folder)."""
    candidate = Path(path).expanduser()
    return os.path.normpath(candidate if candidate.is_absolute() else base / candidate)


# ── checking and aligning ─────────────────────────────────────────────────────────────────────────────


BLOCK_ROWS = 16_384
"""Rows checked and normalised at a time: float64 temporaries of a block, not of the whole file (issue 32's 100k x
1,280 file took 4.6 GB over its 0.5 GB to read whole; a row's result does not depend on the block it is in)."""


def check_rows(rows: VectorRows, path: Path) -> None:
    """Duplicate keys, then non-finite and zero vectors: each refused with the count and the first ids."""
    counts = Counter(rows.keys)
    repeated = [k for k, n in counts.items() if n > 1]
    if repeated:
        raise VectorsFileError(f"{path}: {len(repeated)} {rows.key_kind}(s) appear more than once: "
                               f"{_first(repeated)}. Keep one row per item")
    bad, zero = np.zeros(len(rows.vectors), dtype=bool), np.zeros(len(rows.vectors), dtype=bool)
    for start in range(0, len(rows.vectors), BLOCK_ROWS):
        values = rows.vectors[start:start + BLOCK_ROWS].astype(np.float64, copy=False)
        bad[start:start + len(values)] = ~np.isfinite(values).all(axis=1)
        zero[start:start + len(values)] = ~values.any(axis=1)
    if bad.any():
        named = [rows.keys[i] for i in np.flatnonzero(bad)]
        raise VectorsFileError(f"{path}: {len(named)} vector(s) hold NaN or infinite values: {_first(named)}. "
                               "Fix or drop those rows")
    if zero.any():
        named = [rows.keys[i] for i in np.flatnonzero(zero)]
        raise VectorsFileError(f"{path}: {len(named)} vector(s) are all zeros (no direction to compare): "
                               f"{_first(named)}. Fix or drop those rows")


def normalised(vectors: np.ndarray, rows: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
    """Unit-length float32 rows of ``vectors`` (or of ``vectors[rows]``), and how many were rescaled (rows
    already of unit length are kept as they are)."""
    picked = np.arange(len(vectors)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(picked), vectors.shape[1]), dtype=np.float32)
    rescaled = 0
    for start in range(0, len(picked), BLOCK_ROWS):
        part = vectors[picked[start:start + BLOCK_ROWS]]
        values = part.astype(np.float64)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        unit = np.abs(norms[:, 0] - 1.0) <= UNIT_TOLERANCE
        block = (values / norms).astype(np.float32)
        if part.dtype == np.float32:
            block[unit] = part[unit]
        else:
            unit[:] = False
        out[start:start + len(part)] = block
        rescaled += int((~unit).sum())
    return out, rescaled


def align(catalog: Catalog, rows: VectorRows, source: VectorsSource) -> AlignedVectors:
    """The catalogue's vectors in its order. Items the file lacks: an error, or skipped with ``missing: skip``."""
    position = {k: i for i, k in enumerate(rows.keys)}
    keys = [item.item_id if rows.key_kind == "id" else _resolved(str(item.image_path), Path.cwd())
            for item in catalog.items]
    found = [position.get(k) for k in keys]
    missing = [item for item, row in zip(catalog.items, found, strict=True) if row is None]
    if missing and source.missing == "error":
        raise VectorsFileError(
            f"{source.path}: {len(missing)} of the {len(catalog)} items of {catalog.name} are not in the file "
            f"(matched by {rows.key_kind}; first: {_first([m.item_id for m in missing])}). Add them, or set "
            "`missing: skip` on the model entry to score without them (they are then listed as skipped photos)")
    used = [row for row in found if row is not None]
    vectors, rescaled = normalised(rows.vectors, used)
    skipped = [SkippedItem(m.item_id, str(m.image_path), f"{NOT_IN_FILE} {source.path.name}", PERMANENT)
               for m in missing]
    ids = [item.item_id for item, row in zip(catalog.items, found, strict=True) if row is not None]
    notes = {"file": str(source.path), "sha256": source.digest, "rows": len(rows.keys),
             "dim": int(rows.vectors.shape[1]), "dtype": str(rows.vectors.dtype), "matched_by": rows.key_kind,
             "extra_ids_ignored": len(rows.keys) - len(set(used)), "missing_skipped": len(missing),
             "l2_normalised_on_load": True, "rows_rescaled": rescaled,
             **({"made_by": rows.metadata} if rows.metadata else {})}
    key = cache_key({"vectors": source.identity(), "items": ids})
    return AlignedVectors(ids, vectors, skipped, key, notes)


_READ: dict[str, VectorRows] = {}


def read_for_catalog(catalog: Catalog, source: VectorsSource) -> AlignedVectors:
    """Read (once per process and file content), check, and align a vectors file with ``catalog``."""
    memo = f"{source.digest}:{source.key}"
    if memo not in _READ:
        rows = read_rows(source)
        check_rows(rows, source.path)
        _READ.clear()  # one file in memory at a time: they can be large
        _READ[memo] = rows
    return align(catalog, _READ[memo], source)


# ── writing: what ``shelfsight embed --output`` makes ───────────────────────────────────────────────────


def write_vectors(path: str | os.PathLike[str], ids: Sequence[str], vectors: np.ndarray,
                  paths: Sequence[str] | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """``ids`` (and image ``paths``) with their vectors, in the format the suffix names: ``.parquet`` (``id``,
    ``path``, a fixed-size float32 ``vector`` column, ``metadata`` in the schema), ``.npz`` (``ids``, ``paths``,
    ``vectors``) or ``.npy`` (vectors; ids beside it in ``NAME.ids.txt``). Written atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors) or (paths is not None and len(paths) != len(ids)):
        raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    if target.suffix == ".parquet":
        columns = {"id": pa.array(list(ids), pa.string()),
                   **({"path": pa.array([str(p) for p in paths], pa.string())} if paths is not None else {}),
                   "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}
        table = pa.table(columns).replace_schema_metadata(
            {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True, default=str).encode()})
        return atomic_write(target, lambda temporary: pq.write_table(table, temporary))
    if target.suffix == ".npz":
        arrays = {"ids": np.array(list(ids), dtype=str), "vectors": vectors,
                  **({"paths": np.array([str(p) for p in paths], dtype=str)} if paths is not None else {})}
        return atomic_write(target, lambda temporary: _save_npz(temporary, arrays), suffix=".npz")
    if target.suffix == ".npy":
        ids_file = target.with_suffix(".ids.txt")
        atomic_write(ids_file, lambda temporary: temporary.write_text("".join(f"{i}\n" for i in ids),
                                                                      encoding="utf-8"))
        return atomic_write(target, lambda temporary: _save_npy(temporary, vectors), suffix=".npy")
    raise ValueError(f"{target}: write vectors as .parquet, .npz or .npy")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, vectors)
