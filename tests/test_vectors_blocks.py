"""A vectors file is checked and normalised in blocks of rows (``embeddings.vectors_file.BLOCK_ROWS``), so reading
one needs float64 temporaries of a block, not of the file (issue 32's 100k x 1,280 file: 4.6 GB over its 0.5 GB
before, 3.1 GB after); the result is the one a whole-array computation gives, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelfsight.embeddings import vectors_file
from shelfsight.embeddings.vectors_file import VectorRows, VectorsFileError, check_rows, normalised


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
