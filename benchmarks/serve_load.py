"""Load on the visual search service: concurrent clients against ``POST /search`` on loopback.

1. Index: the whole Grocery Store catalogue (train, val, test and the 81 iconic images: 5,502 real
   photos, no synthetic rows) with --model through ``build_index``, i.e. through the embedding cache
   a bench run of the same model already filled. ``--items N`` keeps the first N instead.
2. Serve: ``shelfsight serve`` in its own process on 127.0.0.1 (its encoder choice is printed).
3. Load: --clients threads, each with its own HTTP connection, post real test photos (round robin)
   for --duration seconds after --warmup requests; every non-200 answer counts as an error.
   Reported: requests/s, p50/p95/p99 latency seen by the clients, the service's own time per request.
4. Encoders, with the server stopped: median time to embed one photo (batch 1, the service's case)
   and a batch of 16, through PyTorch eager, PyTorch as batch extraction prepares it (batch norm
   folded, channels-last) and ONNX Runtime; the speed ratios and the largest difference.

    .venv/bin/python benchmarks/serve_load.py                       # 4 clients, 30 s
    .venv/bin/python benchmarks/serve_load.py --clients 8 --duration 60 --encoder torch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from shelfsight.backbones import load_backbone
from shelfsight.catalog import load_catalog
from shelfsight.serve import OnnxEncoder, TorchEncoder, build_index, ensure_onnx
from shelfsight.serve.encoder import EmbeddingModel, Pixels, median_ms


@dataclass
class LoadResult:
    clients: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_median_ms: float
    error_samples: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(index_dir: Path, encoder: str, log: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "shelfsight.cli", "serve", "--index-dir", str(index_dir), "--port", str(port),
               "--encoder", encoder, "--log-level", "warning"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"shelfsight serve exited with {process.returncode}:\n{log.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"shelfsight serve did not start within 300 s:\n{log.read_text()}")
                time.sleep(0.25)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_load(url: str, photos: list[tuple[str, bytes]], *, clients: int, duration: float, k: int,
             warmup: int) -> LoadResult:
    """``clients`` threads posting photos until the deadline; latencies measured per request by each client."""
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, payload in photos[:warmup]:
            http.post("/search", files={"image": (name, payload, "image/jpeg")}, data={"k": str(k)})
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(offset: int) -> None:
        mine, theirs, failed = [], [], []
        with httpx.Client(base_url=url, timeout=60) as http:
            start_line.wait()
            n = offset
            while time.perf_counter() < deadline[0]:
                name, payload = photos[n % len(photos)]
                n += clients
                started = time.perf_counter()
                try:
                    response = http.post("/search", files={"image": (name, payload, "image/jpeg")},
                                         data={"k": str(k)})
                    ok = response.status_code == 200 and len(response.json()["results"]) == k
                    if ok:
                        theirs.append(response.json()["took_ms"])
                    else:
                        failed.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    failed.append(f"{type(error).__name__}: {error}")
                mine.append((time.perf_counter() - started) * 1000.0)
        with lock:
            latencies.extend(mine)
            server_ms.extend(theirs)
            errors.extend(failed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = np.sort(np.array(latencies))
    return LoadResult(clients=clients, seconds=elapsed, requests=len(latencies), errors=len(errors),
                      rps=len(latencies) / elapsed, p50_ms=float(np.percentile(ordered, 50)),
                      p95_ms=float(np.percentile(ordered, 95)), p99_ms=float(np.percentile(ordered, 99)),
                      server_median_ms=statistics.median(server_ms) if server_ms else float("nan"),
                      error_samples=errors[:5])


def encoder_speeds(model: str, onnx_path: Path, photos: list[Path], repeats: int) -> dict[str, float]:
    """Median ms per call at batch 1 and 16 for eager, prepared PyTorch and ONNX Runtime, and their agreement."""
    import torch

    backbone = load_backbone(model)
    pixels = Pixels(backbone.preprocess)
    batch = np.stack([pixels(path) for path in photos[:16]])
    eager_model = EmbeddingModel(load_backbone(model).encoder.eval(), backbone.preprocess, channels_last=False).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return eager_model(torch.from_numpy(x)).numpy()

    prepared, onnx = TorchEncoder(backbone), OnnxEncoder(onnx_path)
    figures: dict[str, float] = {}
    for size in (1, 16):
        x = batch[:size]
        for name, encode in (("eager", eager), ("prepared", prepared), ("onnx", onnx)):
            figures[f"{name}_b{size}_ms"] = median_ms(encode, x, repeats=repeats)
        figures[f"onnx_vs_eager_b{size}"] = figures[f"eager_b{size}_ms"] / figures[f"onnx_b{size}_ms"]
        figures[f"onnx_vs_prepared_b{size}"] = figures[f"prepared_b{size}_ms"] / figures[f"onnx_b{size}_ms"]
    reference = prepared(batch)
    got = onnx(batch)
    figures["max_abs_diff"] = float(np.abs(got - reference).max())
    figures["min_cosine"] = float((got * reference).sum(axis=1).min())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data-dir", default=None, help="datasets root (default: $SHELFSIGHT_DATA_DIR)")
    parser.add_argument("--items", type=int, default=0, help="index only the first N items (default: all 5,502)")
    parser.add_argument("--index-dir", type=Path, default=None, help="reuse or build the index here (default: temp)")
    parser.add_argument("--clients", type=int, default=4, choices=range(1, 65), metavar="1..64")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (at most 600)")
    parser.add_argument("--warmup", type=int, default=8, help="sequential requests before the timed run")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--encoder", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per encoder measurement")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600] seconds")

    catalog = load_catalog("grocery-store", data_dir=args.data_dir)
    if args.items:
        catalog = catalog.head(args.items)
    queries = [item.image_path for item in catalog if item.split == "test"][::7]
    photos = [(path.name, path.read_bytes()) for path in queries]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        index_dir = args.index_dir or Path(scratch) / "index"
        started = time.perf_counter()
        report = build_index(args.model, catalog, index_dir, progress=True)
        print(f"index: {report.total:,} items ({report.added:,} added, {report.already_indexed:,} already there), "
              f"{report.dim}-d, {time.perf_counter() - started:.1f} s; {len(photos)} query photos")
        with serving(index_dir, args.encoder, Path(scratch) / "serve.log") as url:
            health = httpx.get(f"{url}/health").json()
            print(f"server: {health['items']:,} items, encoder {health['encoder']} "
                  f"({json.dumps(health['encoder_report'])})")
            load = run_load(url, photos, clients=args.clients, duration=args.duration, k=args.k, warmup=args.warmup)
        onnx_path = report.onnx or ensure_onnx(load_backbone(args.model), index_dir / "encoder.onnx")[0]
        speeds = encoder_speeds(args.model, onnx_path, queries, args.repeats)
    print(f"\nload: {load.clients} clients x {load.seconds:.1f} s on loopback, /search k={args.k}, "
          f"{health['items']:,} items, encoder {health['encoder']}, {os.cpu_count()} CPUs")
    print(f"  requests {load.requests}, errors {load.errors}, {load.rps:.1f} req/s")
    print(f"  latency p50 {load.p50_ms:.1f} ms, p95 {load.p95_ms:.1f} ms, p99 {load.p99_ms:.1f} ms "
          f"(service's own time per request: median {load.server_median_ms:.1f} ms)")
    for sample in load.error_samples:
        print(f"  error: {sample}")
    print("encoders (median ms per call):")
    for size in (1, 16):
        print(f"  batch {size:>2}: eager {speeds[f'eager_b{size}_ms']:.1f}, prepared (folded BN, channels-last) "
              f"{speeds[f'prepared_b{size}_ms']:.1f}, ONNX Runtime {speeds[f'onnx_b{size}_ms']:.1f} -> ONNX is "
              f"{speeds[f'onnx_vs_eager_b{size}']:.2f}x eager, {speeds[f'onnx_vs_prepared_b{size}']:.2f}x prepared")
    print(f"  agreement: max |onnx - torch| {speeds['max_abs_diff']:.2e}, min cosine {speeds['min_cosine']:.7f}")
    if args.output:
        args.output.write_text(json.dumps({"load": asdict(load), "encoders": speeds, "health": health}, indent=2))
    if load.errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
