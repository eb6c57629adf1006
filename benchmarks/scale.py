"""Milvus Lite against a real Milvus server as the gallery grows: insert rate, index build, search time at k=10 and
k=100, recall against exact search, and peak memory, for FLAT, IVF_FLAT, HNSW and IVF_PQ.

Data: N clustered, L2-normalised vectors of --dim (1,280: EfficientNet-Lite0's embedding; one centre per 100
items plus --spread x unit Gaussian noise, seeded) and --queries held-out queries from the same clusters.
Each (engine, size) runs in a fresh worker process, so memory is not carried from one to the next:
  1. insert: ``MilvusIndex.add`` in batches of 5,000 rows, then the flush and FLAT load that make them
     searchable (rows/s over both);
  2. per index type: ``rebuild`` (release, drop, build, load) timed as the build; then the --queries
     queries in one ``search`` call at k=10 and at k=100 (after an 8-query warm-up), recall@k of each
     against ``ExactIndex``;
  3. memory: the peak resident set sampled every 0.1 s during the type's build and searches (the insert's
     peak included): for Milvus Lite, which runs inside the worker, the worker's RSS (it also holds the
     vectors and the exact answers: the "data" column of the header line); for the server, the sum over its
     process group (``start_milvus_server``: the launcher and Milvus), which holds nothing of the benchmark.
IVF types use nlist = sqrt(N), nprobe 16; HNSW M=16, efConstruction 200, ef max(64, k); IVF_PQ m=32 sub-vectors
of 8 bits. A type an engine cannot build is a row saying so (Milvus Lite 3.2.2 has no IVF_PQ).

    nice -n 10 .venv/bin/python benchmarks/scale.py                    # 10k, 30k, 100k: an hour or more on 2 cores
    nice -n 10 .venv/bin/python benchmarks/scale.py --sizes 10000 30000   # ~30 min on 2 loaded cores
    .venv/bin/python benchmarks/scale.py --quick                       # 10k, 200 queries: a smoke run
    nice -n 10 .venv/bin/python benchmarks/scale.py --with-300k        # adds 300k: an hour or more
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.search import ExactIndex, MilvusIndex, SearchResult, recall_against_exact
from shelfsight.search.milvus_server import group_pids

TYPES = ("FLAT", "IVF_FLAT", "HNSW", "IVF_PQ")
ENGINES = ("lite", "server")
PARAMS: dict[str, dict[str, int | None]] = {
    "FLAT": {}, "IVF_FLAT": {"nlist": None, "nprobe": 16}, "HNSW": {"m": 16, "ef_construction": 200, "ef": 64},
    "IVF_PQ": {"nlist": None, "nprobe": 16, "pq_m": 32, "nbits": 8}}


@dataclass
class Row:
    engine: str
    size: int
    index: str
    insert_rows_s: float = float("nan")
    build_s: float = float("nan")
    k10_s: float = float("nan")
    k100_s: float = float("nan")
    recall10: float = float("nan")
    recall100: float = float("nan")
    peak_gb: float = float("nan")
    data_gb: float = float("nan")
    note: str = ""


def clustered(n: int, queries: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gallery and held-out queries around n/100 random centres, L2-normalised (as benchmarks/milvus_index.py)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        points = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 20_000):  # in blocks: no n x dim float64 temporaries
            size = min(20_000, count - start)
            block = centres[rng.integers(0, len(centres), size)] + spread * rng.standard_normal(
                (size, dim), dtype=np.float32)
            points[start:start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return points

    return draw(n), draw(queries)


class RssSampler:
    """The peak resident set of some processes (re-listed at every sample), sampled on a thread."""

    def __init__(self, pids: Callable[[], list[int]], every: float = 0.1) -> None:
        self.pids, self.every, self.peak = pids, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def current(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) * 1024 for line in status.splitlines()
                           if line.startswith("VmRSS:")), 0)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.every)

    @contextmanager
    def phase(self) -> Iterator[list[int]]:
        """Yields a one-item list that holds the peak seen during the block once it ends."""
        self.peak = self.current()
        box = [0]
        try:
            yield box
        finally:
            box[0] = max(self.peak, self.current())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def open_engine(engine: str, where: str, size: int, dim: int) -> MilvusIndex:
    """A fresh collection on Milvus Lite (a new .db in ``where``) or on the server at URI ``where``."""
    common: dict[str, Any] = {"index_type": "FLAT", "insert_batch": 5000, "timeout": 1800.0, "build_timeout": 3600.0}
    if engine == "lite":
        return MilvusIndex.lite(Path(where) / "scale.db", f"scale_{size}", dim, **common)
    return MilvusIndex.server(where, "", f"scale_{size}", dim, overwrite=True, **common)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure_type(index: MilvusIndex, kind: str, queries: np.ndarray, exact: dict[int, SearchResult],
                 sampler: RssSampler, row: Row) -> Row:
    """Build ``kind`` on the inserted rows, search at k=10 and k=100, recall against exact."""
    params: dict[str, Any] = dict(PARAMS[kind])
    if "nlist" in params:
        params["nlist"] = round(row.size ** 0.5)  # as the bench's automatic nlist
    build = {name: value for name, value in params.items() if name in ("nlist", "m", "ef_construction")}
    with sampler.phase() as peak:
        try:
            index.config = replace(index.config, pq_m=params.get("pq_m", index.config.pq_m),
                                   nbits=params.get("nbits", index.config.nbits))
            row.build_s = timed(lambda: index.rebuild(kind, **build))
        except Exception as error:  # noqa: BLE001 - an engine that cannot build a type is a result
            row.note = f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"
            return row
        index.tune(nprobe=params.get("nprobe"), ef=params.get("ef"))
        index.search(queries[:8], 100)  # warm-up
        for k in (10, 100):
            started = time.perf_counter()
            answer = index.search(queries, k)
            setattr(row, f"k{k}_s", time.perf_counter() - started)
            setattr(row, f"recall{k}", recall_against_exact(answer, exact[k]))
    row.peak_gb = max(row.peak_gb, peak[0] / 1e9)
    return row


def worker(engine: str, where: str, pgid: int, size: int, args: argparse.Namespace) -> list[Row]:
    """One engine at one size: insert once, then each index type on the same rows."""
    gallery, queries = clustered(size, args.queries, args.dim, args.spread)
    ids = [f"item-{i}" for i in range(size)]
    reference = ExactIndex()
    reference.add(ids, gallery)
    exact = {k: reference.search(queries, k) for k in (10, 100)}
    del reference
    sampler = RssSampler((lambda: [os.getpid()]) if engine == "lite" else (lambda: group_pids(pgid)))
    data = RssSampler(lambda: [os.getpid()], every=3600).current() if engine == "lite" else 0
    index = open_engine(engine, where, size, args.dim)
    with sampler.phase() as inserted:
        seconds = timed(lambda: (index.add(ids, gallery), index.search(queries[:1], 1)))
    rows = []
    for kind in args.types:
        row = Row(engine, size, kind, insert_rows_s=size / seconds, peak_gb=inserted[0] / 1e9, data_gb=data / 1e9)
        rows.append(measure_type(index, kind, queries, exact, sampler, row))
        print(json.dumps(asdict(rows[-1])), file=sys.stderr, flush=True)  # progress, in case a later type hangs
    index.drop()
    sampler.stop()
    return rows


def run_worker(engine: str, where: str, pgid: int, size: int, args: argparse.Namespace) -> list[Row]:
    """:func:`worker` in a fresh process (its memory is its own), rows back as JSON lines."""
    command = [sys.executable, __file__, "--worker", engine, where, str(pgid), "--sizes", str(size),
               "--queries", str(args.queries), "--dim", str(args.dim), "--spread", str(args.spread),
               "--types", *args.types]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    rows = [Row(**json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        rows.append(Row(engine, size, "-", note=f"worker exited with {done.returncode}"))
    return rows


def print_table(rows: list[Row], queries: int) -> None:
    header = (f"{'engine':7s} {'rows':>7s} {'index':9s} {'insert/s':>8s} {'build s':>8s} "
              f"{f'{queries} q k=10 s':>13s} {'k=100 s':>8s} {'R@10':>6s} {'R@100':>6s} {'peak GB':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.note:
            print(f"{r.engine:7s} {r.size:7,d} {r.index:9s} {r.note}")
            continue
        print(f"{r.engine:7s} {r.size:7,d} {r.index:9s} {r.insert_rows_s:8,.0f} {r.build_s:8.1f} {r.k10_s:13.2f} "
              f"{r.k100_s:8.2f} {r.recall10:6.3f} {r.recall100:6.3f} {r.peak_gb:8.2f}")
    lite = [r for r in rows if r.engine == "lite" and r.data_gb == r.data_gb]
    for size in sorted({r.size for r in lite}):
        data = next(r.data_gb for r in lite if r.size == size)
        print(f"lite {size:,}: its peak includes {data:.2f} GB the worker held before opening Milvus Lite "
              "(vectors, exact answers, interpreter)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--with-300k", action="store_true", help="add 300,000 rows (an hour or more on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="10,000 rows and 200 queries: a smoke run")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--types", nargs="+", default=list(TYPES), help=f"index types (default {' '.join(TYPES)})")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--spread", type=float, default=1.5)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "WHERE", "PGID"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = [10_000], 200
    if args.with_300k and 300_000 not in args.sizes:
        args.sizes.append(300_000)
    return args


def main() -> None:
    args = parse()
    if args.worker:
        engine, where, pgid = args.worker
        for row in worker(engine, where, int(pgid), args.sizes[0], args):
            print(json.dumps(asdict(row)), flush=True)
        return
    load = os.getloadavg()
    print(f"Milvus Lite {version('milvus-lite')} (in the worker process) vs Milvus server {version('milvus')} "
          f"(standalone, local disk), pymilvus {version('pymilvus')}; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} at start; {args.dim}-d clustered vectors, {args.queries:,} held-out queries", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as folder:
        server = None
        if "server" in args.engines:
            from shelfsight.search.milvus_server import start_milvus_server

            # as tests/milvus_server.py starts it: loopback only, unless the host cannot make a namespace
            server = start_milvus_server(Path(folder) / "server", watch_parent=True,
                                         all_interfaces=os.environ.get("SHELFSIGHT_MILVUS_ALL_INTERFACES") == "1")
        try:
            for size in sorted(args.sizes):
                for engine in args.engines:
                    where = folder if engine == "lite" else server.uri  # type: ignore[union-attr]
                    rows += run_worker(engine, where, server.pid if server else 0, size, args)
        finally:
            if server is not None:
                server.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print_table(rows, args.queries)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
