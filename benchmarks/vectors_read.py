"""Memory of reading a vectors file: what stays resident after ``read_rows``, with and without giving Arrow's
freed pages back to the system.

Writes an --n x --dim float32 Parquet file (``write_vectors``, as ``shelfsight embed --output`` does; default
100,000 x 1,280: 0.5 GB, issue 32's 100k bench), then reads it in two freshly spawned processes, side by side:

  released  ``read_rows`` as the product runs it (Arrow's pool releases its unused pages after the read);
  kept      the same read with that release turned into a no-op: what a process held before.

Each prints its resident set before the read, after it, and its peak (ru_maxrss); the ratio of what stays resident
over the vectors' own bytes is the figure to read.

    .venv/bin/python benchmarks/vectors_read.py                  # 100k x 1,280, ~1 min
    .venv/bin/python benchmarks/vectors_read.py --n 20000        # quick run
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

GB = 1e9


def _resident() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / GB


def _read(path: str, release: bool) -> dict[str, float]:
    from shelfsight.backbones import VectorsSource
    from shelfsight.embeddings import vectors_file

    if not release:
        vectors_file.release_arrow_pages = lambda: None
    before = _resident()
    rows = vectors_file.read_rows(VectorsSource(Path(path), digest="(not checked here)"))
    return {"before": before, "after": _resident(), "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "vectors": rows.vectors.nbytes / GB}


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
        print(f"{'method':<9} {'before GB':>9} {'after GB':>9} {'kept over vectors':>18} {'peak GB':>8}")
        context = multiprocessing.get_context("spawn")
        for name, release in (("released", True), ("kept", False)):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                row = pool.submit(_read, str(path), release).result()
            kept = (row["after"] - row["before"]) / row["vectors"]
            print(f"{name:<9} {row['before']:>9.2f} {row['after']:>9.2f} {kept:>17.2f}x {row['peak']:>8.2f}")


if __name__ == "__main__":
    main()
