"""A vectors file is checked and normalised in blocks of rows (``embeddings.vectors_file.BLOCK_ROWS``), so reading
one needs float64 temporaries of a block, not of the file (issue 32's 100k x 1,280 file: 4.6 GB over its 0.5 GB
before, 3.1 GB after); the result is the one a whole-array computation gives, bit for bit. A Parquet file is read
in blocks into one array too (``benchmarks/vectors_read.py``), with the same errors as a whole read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shelfsight.embeddings import vectors_file
from shelfsight.embeddings.vectors_file import VectorRows, VectorsFileError, check_rows, normalised, write_vectors


def test_blocks_give_the_whole_array_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors_file, "BLOCK_ROWS", 7)  # 50 rows: 8 blocks, the last one short
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(50, 5)).astype(np.float32)
    raw[::4] /= np.linalg.norm(raw[::4].astype(np.float64), axis=1, keepdims=True)  # some rows already unit
    rows = rng.permutation(50)[:45]
    wide = raw[rows].astype(np.float64)
    want = (wide / np.linalg.norm(wide, axis=1, keepdims=True)).astype(np.float32)
    unit = np.abs(np.linalg.norm(wide, axis=1) - 1.0) <= 1e-6
    want[unit] = raw[rows][unit]  # kept bit for bit
    got, rescaled = normalised(raw, rows.tolist())
    assert np.array_equal(got, want) and rescaled == int((~unit).sum()) and 0 < rescaled < 45
    assert normalised(raw, [])[0].shape == (0, 5)


def test_bad_rows_are_named_across_blocks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(vectors_file, "BLOCK_ROWS", 4)
    values = np.ones((10, 3), np.float32)
    values[2, 1], values[9, 0] = np.nan, np.inf  # blocks 1 and 3
    with pytest.raises(VectorsFileError, match=r"2 vector\(s\) hold NaN or infinite values: 'i2', 'i9'"):
        check_rows(VectorRows([f"i{k}" for k in range(10)], values, "id"), tmp_path / "v.npz")
    values = np.ones((10, 3), np.float32)
    values[[5, 8]] = 0.0
    with pytest.raises(VectorsFileError, match=r"2 vector\(s\) are all zeros .*'i5', 'i8'"):
        check_rows(VectorRows([f"i{k}" for k in range(10)], values, "id"), tmp_path / "v.npz")


def _read(path: Path) -> VectorRows:
    return vectors_file.read_rows(vectors_file.VectorsSource(path, digest="test"))


@pytest.mark.parametrize("kind", ["fixed float32", "list float64", "list int8"])
def test_a_parquet_file_read_in_blocks_equals_its_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     kind: str) -> None:
    monkeypatch.setattr(vectors_file, "READ_ROWS", 6)  # 20 rows in row groups of 8: blocks cross row groups
    values = np.random.default_rng(1).integers(-100, 100, size=(20, 4))
    ids = [f"i{k}" for k in range(20)]
    path = tmp_path / "v.parquet"
    if kind == "fixed float32":
        write_vectors(path, ids, values.astype(np.float32), metadata={"model": "m"})
    else:
        dtype = {"list float64": pa.float64(), "list int8": pa.int8()}[kind]
        pq.write_table(pa.table({"id": ids, "vector": pa.array(values.tolist(), pa.list_(dtype))}), path,
                       row_group_size=8)
    rows = _read(path)
    want = {"fixed float32": np.float32, "list float64": np.float64, "list int8": np.int8}[kind]
    assert rows.keys == ids and rows.vectors.dtype == want and np.array_equal(rows.vectors, values)
    assert rows.metadata == ({"model": "m"} if kind == "fixed float32" else {})


@pytest.mark.parametrize("case", ["null row", "short row", "null in int", "strings"])
def test_a_bad_parquet_row_is_named_across_blocks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  case: str) -> None:
    monkeypatch.setattr(vectors_file, "READ_ROWS", 4)
    rows: list[list[float | None] | None] = [[1.0, 0.0]] * 10
    kind = pa.list_(pa.float32())
    message = r"vectors of mixed dimensions \(1 row\(s\) of 0, 9 row\(s\) of 2\); 1 row\(s\) differ .*'i7'"
    if case == "null row":
        rows = [*rows[:7], None, *rows[8:]]  # (a fixed-size list with a null row does not read back from Parquet)
    elif case == "short row":
        rows = [*rows[:7], [1.0, 0.0, 0.0], *rows[8:]]
        message = r"\(9 row\(s\) of 2, 1 row\(s\) of 3\); 1 row\(s\) differ from the usual 2: 'i7'"
    elif case == "null in int":
        rows = [*rows[:7], [1, None], *rows[8:]]
        kind, message = pa.list_(pa.int8()), r"1 empty \(null\) value\(s\) in integer vectors"
    path = tmp_path / "v.parquet"
    vector = pa.array([["a", "b"]] * 10) if case == "strings" else pa.array(rows, kind)
    if case == "strings":
        message = "the vector column must hold lists of numbers, not list<element: string>"
    pq.write_table(pa.table({"id": [f"i{k}" for k in range(10)], "vector": vector}), path)
    with pytest.raises(VectorsFileError, match=message) as error:
        _read(path)
    assert str(path) in str(error.value)
