"""Memory of reading a Parquet vectors file: the product's read in blocks against a whole-table read.

Writes an --n x --dim float32 Parquet file (``write_vectors``, as ``shelfsight embed --output`` does; default
100,000 x 1,280: 0.5 GB, issue 32's 100k bench), then reads it in two freshly spawned processes, side by side:

  blocks  ``read_rows`` as the product runs it: the key column, then the vector column in blocks of
          ``READ_ROWS`` rows copied into one array, and Arrow's freed pages given back to the system;
  whole   the read it replaced: ``pq.read_table``, ``combine_chunks``, a numpy view of the flattened values,
          nothing given back.

Each prints its resident set before the read, after it, and its peak (VmHWM); what stays resident and the
peak, over what the process held before, as multiples of the vectors' own bytes, are the figures to read.

    .venv/bin/python benchmarks/vectors_read.py                  # 100k x 1,280, ~1 min
    .venv/bin/python benchmarks/vectors_read.py --n 20000        # quick run
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

GB = 1e9


def _resident() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / GB


def _peak() -> float:
    """The process's high-water resident set (VmHWM: ru_maxrss would carry the forking parent's over exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / GB


def _whole(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _read(path: str, method: str) -> dict[str, float]:
    from shelfsight.backbones import VectorsSource
    from shelfsight.embeddings import vectors_file

    before, start = _resident(), time.perf_counter()
    if method == "blocks":
        vectors = vectors_file.read_rows(VectorsSource(Path(path), digest="(not checked here)")).vectors
    else:
        vectors = _whole(Path(path))
    return {"seconds": time.perf_counter() - start, "before": before, "after": _resident(), "peak": _peak(),
            "vectors": vectors.nbytes / GB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1_280)
    args = parser.parse_args()
    from shelfsight.embeddings.vectors_file import write_vectors

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.parquet"
        vectors = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
        write_vectors(path, [f"item-{i}" for i in range(args.n)], vectors)
        del vectors
        print(f"{args.n:,} x {args.dim:,} float32 ({path.stat().st_size / GB:.2f} GB on disk)")
        print(f"{'method':<7} {'read s':>6} {'before GB':>9} {'after GB':>9} {'peak GB':>8} "
              f"{'resident over vectors':>22} {'peak over vectors':>18}")
        context = multiprocessing.get_context("spawn")
        for method in ("blocks", "whole"):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                row = pool.submit(_read, str(path), method).result()
            kept, peak = ((row[k] - row["before"]) / row["vectors"] for k in ("after", "peak"))
            print(f"{method:<7} {row['seconds']:>6.2f} {row['before']:>9.2f} {row['after']:>9.2f} "
                  f"{row['peak']:>8.2f} {kept:>21.2f}x {peak:>17.2f}x")


if __name__ == "__main__":
    main()
