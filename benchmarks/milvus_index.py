"""Milvus Lite at catalogue scale: insert rate, query latency and throughput, recall@10 of FLAT, IVF_FLAT and
the int8 types IVF_SQ8 and HNSW_SQ.

Data: --n clustered, L2-normalised vectors (--dim; one centre per 100 items plus --spread x unit
Gaussian noise, seeded: at 1.5 IVF loses a few neighbours, as on real embeddings) and --queries
held-out queries from the same clusters, in one fresh Milvus Lite ``.db``:
  1. insert rate: ``MilvusIndex.add`` in batches of --insert-batch rows (rows/s);
  2. ready: the FLAT index's flush + build + load; then ``rebuild`` to IVF_FLAT on the same rows;
  3. single queries: --queries one-vector searches, QPS and p50/p95 latency (one pass: at 100,000
     rows each Milvus Lite request costs ~80 ms of per-row Python bookkeeping, so a pass is ~90 s);
  4. batched: the same queries in batches of --batch, QPS, median of --repeats passes;
  5. recall@k of the single-query answers against ExactIndex.
IVF_FLAT and IVF_SQ8 are measured at each --nprobe on the same rows, HNSW_SQ once (M=16, ef=64).

    .venv/bin/python benchmarks/milvus_index.py            # 100,000 x 512, a few minutes on 2 cores
    .venv/bin/python benchmarks/milvus_index.py --n 20000  # smaller
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from shelfsight.search import ExactIndex, MilvusIndex, SearchResult, recall_against_exact


@dataclass
class Row:
    name: str
    params: str
    single_qps: float
    p50_ms: float
    p95_ms: float
    batched_qps: float
    recall: float


def clustered(n: int, queries: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gallery and held-out queries around n/100 random centres, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        noise = rng.standard_normal((count, dim)).astype(np.float32)
        points = centres[rng.integers(0, len(centres), count)] + spread * noise
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    return draw(n), draw(queries)


def timed_insert(index: MilvusIndex, ids: list[str], vectors: np.ndarray) -> float:
    started = time.perf_counter()
    index.add(ids, vectors)
    return len(ids) / (time.perf_counter() - started)


def single_queries(index: MilvusIndex, queries: np.ndarray, k: int) -> tuple[list[float], SearchResult]:
    """Latency of each one-vector search, and the answers stacked like one batched result."""
    latencies, indices, scores, ids = [], [], [], []
    for query in queries:
        started = time.perf_counter()
        result = index.search(query[None, :], k)
        latencies.append(time.perf_counter() - started)
        indices.append(result.indices)
        scores.append(result.scores)
        ids.extend(result.ids)
    return latencies, SearchResult(np.concatenate(indices), np.concatenate(scores), ids)


def batched_rate(index: MilvusIndex, queries: np.ndarray, k: int, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start:start + batch], k)
    return len(queries) / (time.perf_counter() - started)


def measure(index: MilvusIndex, name: str, params: str, queries: np.ndarray, exact: SearchResult,
            args: argparse.Namespace) -> Row:
    index.search(queries[:8], args.k)  # warm-up
    latencies, answers = single_queries(index, queries, args.k)
    batched = statistics.median(batched_rate(index, queries, args.k, args.batch) for _ in range(args.repeats))
    return Row(name, params, len(latencies) / sum(latencies), 1000 * float(np.percentile(latencies, 50)),
               1000 * float(np.percentile(latencies, 95)), batched, recall_against_exact(answers, exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--insert-batch", type=int, default=5000)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16])
    parser.add_argument("--spread", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gallery, queries = clustered(args.n, args.queries, args.dim, args.spread)
    ids = [f"item-{i}" for i in range(args.n)]
    exact_index = ExactIndex()
    exact_index.add(ids, gallery)
    exact = exact_index.search(queries, args.k)
    print(f"Milvus Lite {version('milvus-lite')}, pymilvus {version('pymilvus')}, {os.cpu_count()} CPUs: "
          f"{args.n:,} x {args.dim}-d clustered vectors, {args.queries:,} held-out queries, k={args.k}, "
          f"batches of {args.batch} (median of {args.repeats})")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as folder, \
            MilvusIndex.lite(Path(folder) / "bench.db", "bench", args.dim, insert_batch=args.insert_batch) as index:
        rate = timed_insert(index, ids, gallery)
        print(f"insert: {rate:,.0f} rows/s (batches of {args.insert_batch:,})")
        started = time.perf_counter()
        index.search(queries[:1], args.k)
        print(f"FLAT: flush + index build + load + first search {time.perf_counter() - started:.1f} s")
        rows.append(measure(index, "FLAT", "-", queries, exact, args))
        started = time.perf_counter()
        index.rebuild("IVF_FLAT", nlist=args.nlist)  # the same rows, re-indexed: no second insert
        print(f"IVF_FLAT (nlist={args.nlist}): release + drop + build + load {time.perf_counter() - started:.1f} s")
        for nprobe in args.nprobe:
            index.tune(nprobe=nprobe)
            rows.append(measure(index, "IVF_FLAT", f"nlist={args.nlist} nprobe={nprobe}", queries, exact, args))
        rows.extend(compressed(index, queries, exact, args))
    print_table(rows, args.k)


def compressed(index: MilvusIndex, queries: np.ndarray, exact: SearchResult, args: argparse.Namespace) -> list[Row]:
    """The int8 index types Milvus Lite builds (IVF_SQ8, HNSW_SQ) on the same rows, with their index file size."""
    rows = []
    for index_type, params in (("IVF_SQ8", {"nlist": args.nlist}), ("HNSW_SQ", {"m": 16, "ef_construction": 200})):
        started = time.perf_counter()
        index.rebuild(index_type, **params)
        disk = index.disk_bytes()
        size = f"index {disk.index / 1e6:.1f} MB" if disk else "index size unknown"
        print(f"{index_type}: release + drop + build + load {time.perf_counter() - started:.1f} s, {size}")
        for nprobe in args.nprobe:
            index.tune(nprobe=nprobe)
            label = f"nlist={args.nlist} nprobe={nprobe}" if index_type == "IVF_SQ8" else "M=16 ef=64"
            rows.append(measure(index, index_type, label, queries, exact, args))
            if index_type != "IVF_SQ8":
                break
    return rows


def print_table(rows: list[Row], k: int) -> None:
    header = (f"{'index':9s} {'params':22s} {'single QPS':>10s} {'p50 ms':>7s} {'p95 ms':>7s} "
              f"{'batched QPS':>11s} {f'recall@{k}':>9s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.name:9s} {r.params:22s} {r.single_qps:10.1f} {r.p50_ms:7.2f} {r.p95_ms:7.2f} "
              f"{r.batched_qps:11.1f} {r.recall:9.4f}")


if __name__ == "__main__":
    main()
