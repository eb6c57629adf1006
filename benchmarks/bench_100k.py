"""A 100,000-item bench end to end, from precomputed vectors, on a real Milvus server: time and memory per stage.

What it does (issue 32, part 6), in a fresh folder:
  1. writes a synthetic catalogue: --items items in --classes classes (~100 each), split per class 60% train,
     10% val, 30% test (the own-catalogue protocol: ``test-train`` retrieval, train/val/test classification),
     a manifest CSV (``id``, ``path``, ``label``, ``split``, ``coarse_label``) and one tiny placeholder PNG per
     item, each different (see "what the catalogue needs" below); and the matching vectors file (``name:
     vectors``; Parquet, as ``shelfsight embed --output`` writes, or --format npz): --dim unit vectors, each a
     class centre plus Gaussian noise, the centres of ten classes sharing a coarse direction, so near classes
     are confused and the metrics are neither 0 nor 1 (seeded);
  2. starts a Milvus 2.3.5 standalone server (``start_milvus_server``: loopback, its own network namespace,
     stopped in a ``finally``);
  3. runs the bench through its Python entry (``run_bench``, what ``shelfsight bench CONFIG`` calls) with
     ``index: {backend: milvus, uri: SERVER, type: --index-type}`` and three strategies: ``pretrained``
     (retrieval), ``linear`` (the probe) and ``toptune`` (a small search: --trials trials of 5 epochs, final
     training up to 30 epochs with patience 5; the paper's budget is 20 x 30 x 2);
and prints, per stage, the wall time and the peak resident memory of this process (the bench) and of the
server's process group, sampled every 0.2 s: catalogue + vectors written, server start, the plan (catalogue
load, vectors file read and checked, photo digests, cell keys), each cell, and the closing statistics (results
table, bootstrap intervals, comparisons). Then each cell's headline metrics.

What the catalogue needs for a vectors model: no photo is decoded, but (a) a manifest whose files mostly do not
exist is refused (``catalog.manifest``: at least half of the first 1,000 rows' files must exist: a wrong image
root is the usual cause), (b) every cell key holds a digest of every photo's bytes (``cell_identity.photos_
digest``: a missing file enters as missing), and (c) the default ``dedupe`` policy flags byte-identical photos:
identical placeholders would all be "duplicates". So each item gets a 4x4 PNG of its own colour.

    nice -n 10 .venv/bin/python benchmarks/bench_100k.py --output bench_100k.json    # ~26 min on 2 shared cores
    .venv/bin/python benchmarks/bench_100k.py --items 3000 --classes 30               # a smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import RssSampler  # noqa: E402 - the sibling benchmark's sampler

GB = 1e9
SPLITS = (("train", 0.6), ("val", 0.1), ("test", 0.3))


@dataclass
class Stage:
    name: str
    seconds: float
    bench_peak_gb: float
    server_peak_gb: float = float("nan")
    note: str = ""


@dataclass
class Meter:
    """Wall time and peak RSS of this process and of the server's group, phase by phase."""

    server_pgid: int = 0
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bench = RssSampler(lambda: [os.getpid()], every=0.2)
        self.server = RssSampler(self._server_pids, every=0.2)
        self._open("")

    def _server_pids(self) -> list[int]:
        from shelfsight.search.milvus_server import group_pids

        return group_pids(self.server_pgid) if self.server_pgid else []

    def _open(self, _: str) -> None:
        self.started = time.perf_counter()
        self.bench.peak, self.server.peak = self.bench.current(), self.server.current()

    def close(self, name: str, note: str = "") -> Stage:
        """End the running phase as stage ``name`` and start the next one."""
        stage = Stage(name, time.perf_counter() - self.started, max(self.bench.peak, self.bench.current()) / GB,
                      max(self.server.peak, self.server.current()) / GB if self.server_pgid else float("nan"), note)
        self.stages.append(stage)
        print(f"  {name}: {stage.seconds:.1f} s, bench peak {stage.bench_peak_gb:.2f} GB"
              + (f", server peak {stage.server_peak_gb:.2f} GB" if self.server_pgid else "")
              + (f" ({note})" if note else ""), flush=True)
        self._open(name)
        return stage

    def stop(self) -> None:
        self.bench.stop()
        self.server.stop()


def synthetic(items: int, classes: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around class centres. Ten classes share a coarse direction (sibling centres at cosine 0.5),
    and each item leans towards one random sibling by t = 0.6 u^2 (u uniform; past 0.5 for ~9% of items: those
    are closer to the sibling, as a mislabelled or ambiguous listing is), plus isotropic noise of norm ~``noise``.
    Isotropic noise alone leaves classification at 1.0 in 1,280-d (class means average it away); the lean gives
    errors a class mean cannot remove. Labels are ``arange(items) % classes``."""
    rng = np.random.default_rng(seed)
    groups = max(1, classes // 10)
    coarse = _unit_rows(rng.standard_normal((groups, dim), dtype=np.float32))
    centres = _unit_rows(coarse[np.arange(classes) % groups] + _unit_rows(rng.standard_normal((classes, dim),
                                                                                             dtype=np.float32)))
    labels = np.arange(items) % classes
    siblings = labels % groups + groups * rng.integers(0, max(1, classes // groups), items)
    siblings = np.where(siblings < classes, siblings, labels)
    lean = (0.6 * rng.random(items, dtype=np.float32) ** 2)[:, None]
    vectors = np.empty((items, dim), dtype=np.float32)
    for start in range(0, items, 10_000):  # in blocks: no items x dim float64 temporaries
        rows = slice(start, min(items, start + 10_000))
        block = (1 - lean[rows]) * centres[labels[rows]] + lean[rows] * centres[siblings[rows]] \
            + noise / np.sqrt(dim) * rng.standard_normal((rows.stop - rows.start, dim), dtype=np.float32)
        vectors[rows] = _unit_rows(block)
    return vectors, labels


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def split_of(items: int, classes: int) -> list[str]:
    """Per class, its first 60% of items train, the next 10% val, the rest test (items are dealt to classes)."""
    rank = np.arange(items) // classes  # the item's position within its class
    size = np.bincount(np.arange(items) % classes, minlength=classes)[np.arange(items) % classes]
    edges = np.cumsum([share for _, share in SPLITS])
    return [SPLITS[int(np.searchsorted(edges, (r + 0.5) / s))][0] for r, s in zip(rank, size, strict=True)]


def write_catalogue(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The manifest, its placeholder photos and the vectors file."""
    from PIL import Image

    from shelfsight.embeddings.vectors_file import write_vectors

    vectors, labels = synthetic(args.items, args.classes, args.dim, args.noise, args.seed)
    ids = [f"item-{i:07d}" for i in range(args.items)]
    paths = [f"photos/c{label:05d}/{item}.png" for item, label in zip(ids, labels, strict=True)]
    for label in range(args.classes):
        (folder / f"photos/c{label:05d}").mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(paths):  # a colour of its own per item: no two placeholders alike
        colour = (number & 255, (number >> 8) & 255, (number >> 16) & 255)
        Image.new("RGB", (4, 4), colour).save(folder / path)
    import pandas as pd

    manifest = folder / "manifest.csv"
    pd.DataFrame({"id": ids, "path": paths, "label": [f"class-{x:05d}" for x in labels],
                  "split": split_of(args.items, args.classes),
                  "coarse_label": [f"group-{x % max(1, args.classes // 10):04d}" for x in labels]}
                 ).to_csv(manifest, index=False)
    source = write_vectors(folder / f"vectors.{args.format}", ids, vectors,
                           metadata={"made_by": "benchmarks/bench_100k.py", "seed": args.seed, "noise": args.noise})
    return manifest, source


def bench_config(manifest: Path, vectors: Path, uri: str, args: argparse.Namespace) -> dict[str, Any]:
    index: dict[str, Any] = {"backend": "milvus", "uri": uri, "type": args.index_type,
                             "build_timeout": 1800.0}
    if args.recall_queries is not None:
        index["recall_queries"] = args.recall_queries
    return {
        "name": "bench-100k",
        "models": [{"name": "vectors", "source": str(vectors), "alias": "synthetic"}],
        "datasets": [{"name": "synth", "source": str(manifest)}],
        "strategies": ["pretrained", "linear", "toptune"],
        "toptune": {"trials": args.trials, "min_trials": min(3, args.trials), "trial_epochs": 5, "trial_repeats": 1,
                    "final_max_epochs": 30, "patience": 5},
        "index": index,
        "tracking": {"enabled": False},
    }


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from shelfsight.bench import load_config, run_bench
    from shelfsight.bench.results import Cell
    from shelfsight.search.milvus_server import start_milvus_server

    meter = Meter()
    manifest, vectors = write_catalogue(folder, args)
    meter.close("catalogue + vectors written", f"{args.items:,} items, {vectors.stat().st_size / GB:.2f} GB file")
    server = start_milvus_server(folder / "milvus", watch_parent=True,
                                 all_interfaces=os.environ.get("SHELFSIGHT_MILVUS_ALL_INTERFACES") == "1")
    try:
        meter.server_pgid = server.pid
        meter.close("server start", f"Milvus {server.version}")
        config = load_config(bench_config(manifest, vectors, server.uri, args))
        first = [True]

        def on_cell(cell: Cell) -> None:
            record = json.loads((folder / "run" / "cells" / f"{cell.cell_id}.json").read_text())
            seconds = record["costs"].get("cell_seconds", float("nan"))
            note = f"cell_seconds {seconds:.1f}"
            if first[0]:  # the first phase also held the plan (catalogue load, vectors read, photo digests, keys)
                first[0] = False
                note += f"; plan before it {time.perf_counter() - meter.started - seconds:.1f} s"
            meter.close(f"cell {cell.strategy}", note)

        summary = run_bench(config, folder / "run", progress=False, console=Console(width=140), on_cell=on_cell)
        meter.close("statistics (results table, intervals, comparisons)")
    finally:
        server.stop()
        meter.stop()
    return {"stages": [stage.__dict__ for stage in meter.stages], "cells": headline(folder / "run"),
            "failed": summary.failed, "seconds": summary.seconds}


def headline(run_dir: Path) -> dict[str, Any]:
    """Each cell's metrics of the main protocol and classification, and its recorded details of scale."""
    found: dict[str, Any] = {}
    for path in sorted((run_dir / "cells").glob("*.json")):
        record = json.loads(path.read_text())
        metrics = {protocol: {name: round(value, 4) for name, value in values.items()
                              if name.split("@")[0] in ("R", "mMP", "MAP", "index_recall", "accuracy", "macro_f1")
                              or name in ("MAP@R", "accuracy", "macro_f1")}
                   for protocol, values in record.get("metrics", {}).items()}
        details = record.get("details", {})
        scale = {protocol: {key: details[protocol].get(key) for key in ("queries", "gallery", "index_recall_queries")}
                 for protocol in record.get("metrics", {}) if isinstance(details.get(protocol), dict)
                 and "gallery" in details[protocol]}
        found[record["cell"]["strategy"]] = {"status": record.get("status"), "metrics": metrics, "scale": scale,
                                             "error": record.get("error")}
    return found


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--noise", type=float, default=3.0, help="isotropic noise norm (default 3.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("parquet", "npz"), default="parquet")
    parser.add_argument("--index-type", choices=("FLAT", "IVF_FLAT", "HNSW", "IVF_PQ"), default="HNSW")
    parser.add_argument("--recall-queries", type=int, help="index.recall_queries (default: the bench's 2,000)")
    parser.add_argument("--trials", type=int, default=3, help="top-tuning trials (default 3)")
    parser.add_argument("--dir", type=Path, help="work here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (catalogue, vectors, run)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.classes < 1 or args.items < 10 * args.classes:
        parser.error("--items must be at least 10 x --classes (every class needs train, val and test items)")
    return args


def main() -> None:
    args = parse()
    load = os.getloadavg()
    print(f"bench of {args.items:,} items ({args.classes:,} classes, {args.dim}-d, noise {args.noise}) on a Milvus "
          f"server, index {args.index_type}; {os.cpu_count()} CPUs, load average {load[0]:.1f} at start", flush=True)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-100k-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = run(folder, args)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    result |= {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "load_average_end": os.getloadavg()[0], "load_average_start": load[0]}
    print(json.dumps(result["cells"], indent=1))
    print(f"load average at the end {os.getloadavg()[0]:.1f}" + (f"; kept {folder}" if args.keep else ""))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
