"""Load on the visual search service: concurrent clients against ``POST /search`` on loopback, with and
without micro-batching, and the encoder's own batched rate in the same run.

1. Index: the whole Grocery Store catalogue (train, val, test and the 81 iconic images: 5,502 real
   photos, no synthetic rows) with --model through ``build_index``, i.e. through the embedding cache
   a bench run of the same model already filled. ``--items N`` keeps the first N instead.
2. For each mode (micro-batching on: ``--max-batch`` and ``--max-wait-ms``; off: ``--max-batch 1``), serve
   with ``shelfsight serve`` in its own process on 127.0.0.1, then for each --concurrency level run that
   many client threads, each with its own HTTP connection, posting real test photos (round robin) for
   --duration seconds after --warmup requests; every non-200 answer counts as an error.
   Reported: requests/s, p50/p95/p99 latency seen by the clients, the service's own time per request,
   the batches the service formed (from ``/health``), and the CPU both sides used during the timed run:
   the server process's CPU seconds per request (from /proc, its threads and any child processes) and
   the load-generating client's (this process, whose threads share the same cores).
3. Encoders, with the server stopped: median time to embed one photo (batch 1) and a batch of
   --max-batch, through PyTorch eager, PyTorch as batch extraction prepares it (batch norm folded,
   channels-last) and ONNX Runtime; the served encoder's batched rate (images/s at --max-batch) is the
   ceiling micro-batching is measured against (target: concurrency 8 >= 0.8x that rate). The served
   encoder's CPU seconds per image are measured too, so the closing lines also compare CPU with CPU: the
   encoder's CPU per image against the CPU per request (server and client together, and the server alone):
   the ratio the wall-clock one would reach with every core busy on this work, however busy the machine.

4. Where the server's CPU goes (``--breakdown``), measured in this process after the load, each stage alone
   on the same photos and index: decoding one photo, the encoder's CPU per image at batch 1 and 2 (what the
   micro-batches of a few clients hold), and one search of 1 and 2 vectors against the served collection
   (Milvus Lite in this process, or the server's process group's CPU with ``--milvus server``).

``--milvus server`` starts a real Milvus server (PyPI's ``milvus`` wheel, ``shelfsight milvus start``'s code) on
loopback, builds the same index on it and serves with ``--uri``; its process group's CPU is counted beside the
service's, so the CPU per request is the whole cost on this machine.

    .venv/bin/python benchmarks/serve_load.py                          # 1/4/8 clients, 20 s each, both modes
    .venv/bin/python benchmarks/serve_load.py --concurrency 8 --duration 60 --modes batched
    .venv/bin/python benchmarks/serve_load.py --modes batched --concurrency 4 8 --milvus lite server --breakdown
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from shelfsight.backbones import load_backbone
from shelfsight.catalog import load_catalog
from shelfsight.search.milvus_server import MilvusServer, group_pids, start_milvus_server
from shelfsight.serve import IndexLayout, OnnxEncoder, TorchEncoder, build_index, ensure_onnx, read_manifest
from shelfsight.serve.compression import serving_blas_thread
from shelfsight.serve.decode import BoundedDecoder
from shelfsight.serve.encoder import EmbeddingModel, median_ms
from shelfsight.serve.indexer import open_collection


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
    client_cpu_s: float = float("nan")
    """CPU seconds of this process (the client threads) during the timed run."""
    server_cpu_s: float = float("nan")
    """CPU seconds of the server process (all its threads, and child processes) during the timed run."""
    milvus_cpu_s: float = 0.0
    """CPU seconds of a Milvus server's processes during the timed run (0 with Milvus Lite, which runs inside)."""
    error_samples: list[str] = field(default_factory=list)

    @property
    def client_cpu_ms(self) -> float:
        return 1000.0 * self.client_cpu_s / self.requests if self.requests else float("nan")

    @property
    def server_cpu_ms(self) -> float:
        """The service's and its Milvus server's CPU per request: the whole cost of answering on this machine."""
        return 1000.0 * (self.server_cpu_s + self.milvus_cpu_s) / self.requests if self.requests else float("nan")

    @property
    def milvus_cpu_ms(self) -> float:
        return 1000.0 * self.milvus_cpu_s / self.requests if self.requests else float("nan")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (only ``pid`` without /proc)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                for child in handle.read().split():
                    found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its living descendants so far (NaN without /proc)."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            if member == pid:
                return float("nan")
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def group_cpu_seconds(pgid: int | None) -> float:
    """User + system CPU seconds of the living processes of a process group (a Milvus server); 0 for None."""
    if pgid is None:
        return 0.0
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for member in group_pids(pgid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) so far."""
    times = os.times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(index_dir: Path, encoder: str, log: Path, *options: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "shelfsight.cli", "serve", "--index-dir", str(index_dir), "--port", str(port),
               "--encoder", encoder, "--log-level", "warning", *options]
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
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_load(url: str, photos: list[tuple[str, bytes]], *, clients: int, duration: float, k: int,
             warmup: int, server_pid: int | None = None, milvus_group: int | None = None) -> LoadResult:
    """``clients`` threads posting photos until the deadline; latencies measured per request by each client,
    and the CPU seconds this process (the clients) and the server process (``server_pid``) used meanwhile."""
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
                    answer = response.json() if response.status_code == 200 else None  # parsed once: client CPU
                    if answer is not None and len(answer["results"]) == k:
                        theirs.append(answer["took_ms"])
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
    server_before = cpu_seconds(server_pid) if server_pid is not None else float("nan")
    milvus_before = group_cpu_seconds(milvus_group)
    client_before = own_cpu_seconds()
    began = time.perf_counter()
    deadline[0] = began + duration
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    client_cpu = own_cpu_seconds() - client_before
    server_cpu = cpu_seconds(server_pid) - server_before if server_pid is not None else float("nan")
    milvus_cpu = group_cpu_seconds(milvus_group) - milvus_before
    ordered = np.sort(np.array(latencies))
    return LoadResult(clients=clients, seconds=elapsed, requests=len(latencies), errors=len(errors),
                      rps=len(latencies) / elapsed, p50_ms=float(np.percentile(ordered, 50)),
                      p95_ms=float(np.percentile(ordered, 95)), p99_ms=float(np.percentile(ordered, 99)),
                      server_median_ms=statistics.median(server_ms) if server_ms else float("nan"),
                      client_cpu_s=client_cpu, server_cpu_s=server_cpu, milvus_cpu_s=milvus_cpu,
                      error_samples=errors[:5])


def timed_with_cpu(encode: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median wall ms per call, as ``median_ms``; mean CPU ms per call of this process, intra-op threads included)
    over the same timed calls, after 3 untimed ones."""
    for _ in range(3):
        encode(pixels)
    times = []
    cpu_before = own_cpu_seconds()
    for _ in range(repeats):
        started = time.perf_counter()
        encode(pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0, (own_cpu_seconds() - cpu_before) * 1000.0 / repeats


def encoder_speeds(model: str, onnx_path: Path, photos: list[Path], repeats: int, batch_size: int) -> dict[str, float]:
    """Median ms per call at batch 1 and ``batch_size`` for eager, prepared PyTorch and ONNX Runtime, and their
    agreement; for prepared PyTorch and ONNX Runtime also the CPU ms per call (``<name>_b<size>_cpu_ms``)."""
    import torch

    backbone = load_backbone(model)
    pixels = BoundedDecoder(backbone.preprocess)
    batch = np.stack([pixels(path) for path in photos[:batch_size]])
    eager_model = EmbeddingModel(load_backbone(model).encoder.eval(), backbone.preprocess, channels_last=False).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return eager_model(torch.from_numpy(x)).numpy()

    prepared, onnx = TorchEncoder(backbone), OnnxEncoder(onnx_path)
    figures: dict[str, float] = {}
    for size in (1, batch_size):
        x = batch[:size]
        figures[f"eager_b{size}_ms"], _ = timed_with_cpu(eager, x, 3)
        for name, encode in (("prepared", prepared), ("onnx", onnx)):
            figures[f"{name}_b{size}_ms"], figures[f"{name}_b{size}_cpu_ms"] = timed_with_cpu(encode, x, repeats)
        figures[f"onnx_vs_eager_b{size}"] = figures[f"eager_b{size}_ms"] / figures[f"onnx_b{size}_ms"]
        figures[f"onnx_vs_prepared_b{size}"] = figures[f"prepared_b{size}_ms"] / figures[f"onnx_b{size}_ms"]
    for size in sorted({2, 4, 8} - {batch_size}):  # the served encoder's rate between the two ends
        if size < batch_size:
            figures[f"onnx_b{size}_ms"] = median_ms(onnx, batch[:size], repeats=repeats)
            figures[f"prepared_b{size}_ms"] = median_ms(prepared, batch[:size], repeats=max(3, repeats // 4))
    reference = prepared(batch)
    got = onnx(batch)
    figures["max_abs_diff"] = float(np.abs(got - reference).max())
    figures["min_cosine"] = float((got * reference).sum(axis=1).min())
    return figures


MODES = {"batched": None, "unbatched": ("--max-batch", "1")}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data-dir", default=None, help="datasets root (default: $SHELFSIGHT_DATA_DIR)")
    parser.add_argument("--items", type=int, default=0, help="index only the first N items (default: all 5,502)")
    parser.add_argument("--index-dir", type=Path, default=None, help="reuse or build the index here (default: temp)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="client counts to run")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run (at most 600)")
    parser.add_argument("--warmup", type=int, default=8, help="sequential requests before each timed run")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--encoder", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--max-batch", type=int, default=16, help="micro-batch size of the batched mode")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="micro-batch wait of the batched mode")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per encoder measurement")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--milvus", nargs="+", default=["lite"], choices=("lite", "server"),
                        help="serve from Milvus Lite and/or a Milvus server started here (PyPI's milvus wheel)")
    parser.add_argument("--breakdown", action="store_true", help="measure each stage's CPU alone afterwards")
    args = parser.parse_args()
    if not 0 < args.duration <= 600 or not all(1 <= c <= 64 for c in args.concurrency):
        parser.error("--duration must be in (0, 600] seconds and --concurrency in 1..64")
    return args


@dataclass
class Target:
    """One engine to serve from: Milvus Lite in the index folder, or a Milvus server (``milvus``)."""

    engine: str
    index_dir: Path
    milvus: MilvusServer | None = None

    @property
    def group(self) -> int | None:
        return self.milvus.pid if self.milvus else None


def run_modes(args: argparse.Namespace, target: Target, photos: list[tuple[str, bytes]],
              scratch: Path) -> tuple[dict[str, list[LoadResult]], dict[str, dict[str, object]]]:
    """Each mode served in its own process, each concurrency level run against it; keys ``MODE/ENGINE``."""
    loads: dict[str, list[LoadResult]] = {}
    health: dict[str, dict[str, object]] = {}
    for mode in args.modes:
        options = MODES[mode] or ("--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms))
        label = f"{mode}/{target.engine}"
        with serving(target.index_dir, args.encoder, scratch / f"serve-{mode}-{target.engine}.log",
                     *options) as (url, pid):
            first = httpx.get(f"{url}/health").json()
            print(f"server ({label}): {first['items']:,} items, encoder {first['encoder']} "
                  f"({json.dumps(first['encoder_report'])})", flush=True)
            loads[label] = []
            for clients in args.concurrency:
                load = run_load(url, photos, clients=clients, duration=args.duration, k=args.k, warmup=args.warmup,
                                server_pid=pid, milvus_group=target.group)
                loads[label].append(load)
                print(f"  {label:>16} x{clients}: {load.rps:6.1f} req/s, p50 {load.p50_ms:6.1f} ms, p95 "
                      f"{load.p95_ms:6.1f} ms, p99 {load.p99_ms:6.1f} ms, errors {load.errors}; CPU per request: "
                      f"server {load.server_cpu_ms:.1f} ms (Milvus server {load.milvus_cpu_ms:.1f}), client "
                      f"{load.client_cpu_ms:.1f} ms", flush=True)
            health[label] = httpx.get(f"{url}/health").json()
    return loads, health


def report(args: argparse.Namespace, loads: dict[str, list[LoadResult]], health: dict[str, dict[str, object]],
           speeds: dict[str, float], encoder: str) -> float:
    """Print the table and the targets; returns the served encoder's batched rate (images/s)."""
    size = args.max_batch
    key = "onnx" if encoder == "onnx" else "prepared"
    batched = batched_rate(speeds, key, size)
    single_rate = 1 / (speeds[f"{key}_b1_ms"] / 1000.0)
    print(f"\n/search k={args.k} on loopback, {args.duration:.0f} s per run, encoder {encoder}, {os.cpu_count()} CPUs")
    print("| mode/engine | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms | service median ms "
          "| server CPU ms/req | of which Milvus server | client CPU ms/req | server cores | client cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, results in loads.items():
        for r in results:
            cores = (r.server_cpu_s + r.milvus_cpu_s) / r.seconds
            print(f"| {mode} | {r.clients} | {r.requests} | {r.errors} | {r.rps:.1f} | {r.p50_ms:.0f} | "
                  f"{r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.server_median_ms:.0f} | {r.server_cpu_ms:.1f} | "
                  f"{r.milvus_cpu_ms:.1f} | {r.client_cpu_ms:.1f} | {cores:.2f} | {r.client_cpu_s / r.seconds:.2f} |")
        print(f"  {mode} batches formed: {json.dumps(health[mode]['batching'])}")
        for sample in (e for r in results for e in r.error_samples):
            print(f"  error: {sample}")
    print(f"encoder {encoder} alone: {single_rate:.1f} images/s at batch 1, "
          f"{batched:.1f} images/s at batch {size}")
    sizes = sorted(int(name[len(key) + 2:-3]) for name in speeds
                   if name.startswith(f"{key}_b") and not name.endswith("_cpu_ms"))
    print("  images/s by batch size: " + ", ".join(f"{b}: {b / (speeds[f'{key}_b{b}_ms'] / 1000.0):.1f}"
                                                     for b in sizes))
    for mode, results in loads.items():
        by_clients = {r.clients: r for r in results}
        if 8 in by_clients:
            print(f"  {mode}: concurrency 8 = {by_clients[8].rps / batched:.2f}x the batched rate (target >= 0.8)")
        if 4 in by_clients:
            print(f"  {mode}: p95 at concurrency 4 = {by_clients[4].p95_ms:.0f} ms (target < 250 ms, quiet machine)")
    cpu_lines(loads, speeds, key, size)
    print("encoders (median ms per call):")
    for b in (1, size):
        print(f"  batch {b:>2}: eager {speeds[f'eager_b{b}_ms']:.1f}, prepared (folded BN, channels-last) "
              f"{speeds[f'prepared_b{b}_ms']:.1f}, ONNX Runtime {speeds[f'onnx_b{b}_ms']:.1f}")
    print(f"  agreement: max |onnx - torch| {speeds['max_abs_diff']:.2e}, min cosine {speeds['min_cosine']:.7f}")
    return batched


def cpu_lines(loads: dict[str, list[LoadResult]], speeds: dict[str, float], key: str, size: int) -> None:
    """What the batched-rate ratio depends on, CPU against CPU. The encoder alone has every core for embedding;
    under load the same cores also parse HTTP, decode photos, search Milvus and run this client. The ratio of the
    encoder's CPU per image to the CPU per request is what the issue's ratio would be with every core busy on this
    work: it does not depend on how busy the machine was, the wall-clock ratio does."""
    encoder_cpu = speeds.get(f"{key}_b{size}_cpu_ms", float("nan")) / size
    cores = os.cpu_count() or 1
    rate = batched_rate(speeds, key, size)
    print(f"CPU per request against the encoder's CPU per image ({encoder_cpu:.1f} ms at batch {size}):")
    for mode, results in loads.items():
        for r in results:
            if r.clients != max(x.clients for x in results):  # the busiest run
                continue
            both = r.server_cpu_ms + r.client_cpu_ms
            print(f"  {mode} x{r.clients}: server {r.server_cpu_ms:.1f} ms/request "
                  f"({r.server_cpu_ms / encoder_cpu:.2f}x the encoder's per image; target <= 1.6x), client "
                  f"{r.client_cpu_ms:.1f} ms/request ({r.client_cpu_ms / both:.0%} of the CPU both used); cores "
                  f"used: server {(r.server_cpu_s + r.milvus_cpu_s) / r.seconds:.2f} + client "
                  f"{r.client_cpu_s / r.seconds:.2f} of {cores}")
            print(f"    CPU-normalised ratio (encoder CPU per image / CPU per request): {encoder_cpu / both:.2f} with "
                  f"the client's CPU, {encoder_cpu / r.server_cpu_ms:.2f} server alone; wall-clock: "
                  f"{r.rps / rate:.2f}x the batched rate")


def batched_rate(speeds: dict[str, float], key: str, size: int) -> float:
    """The served encoder's images/s at batch ``size``."""
    return size / (speeds[f"{key}_b{size}_ms"] / 1000.0)


def cpu_breakdown(target: Target, backbone_name: str, encoder: str, onnx_path: Path, queries: list[Path],
                  repeats: int) -> dict[str, float]:
    """CPU ms of each stage alone, in this process (and the Milvus server's group): one photo decoded, the
    served encoder per image at batch 1 and 2, one search of 1 and 2 vectors on the served collection."""
    backbone = load_backbone(backbone_name)
    decode = BoundedDecoder(backbone.preprocess)
    pixels = np.stack([decode(path) for path in queries[:2]])
    encode = OnnxEncoder(onnx_path) if encoder == "onnx" else TorchEncoder(backbone)
    vectors = encode(pixels)
    figures: dict[str, float] = {}
    figures["decode"] = timed_with_cpu(lambda _: decode(queries[0]), pixels, repeats)[1]
    for size in (1, 2):
        figures[f"encoder_b{size}"] = timed_with_cpu(encode, pixels[:size], repeats)[1] / size
    layout = IndexLayout.at(target.index_dir)
    with serving_blas_thread(), open_collection(layout, read_manifest(layout), require_attributes=False,
                                                consistency="Session") as index:  # as the service searches
        for size in (1, 2):
            before = group_cpu_seconds(target.group)
            own = timed_with_cpu(lambda x: index.search(x, 10), vectors[:size], repeats)[1]
            # the server's CPU over the same calls: 3 untimed + ``repeats`` timed ones
            figures[f"search_b{size}"] = own + 1000.0 * (group_cpu_seconds(target.group) - before) / (repeats + 3)
    return figures


def breakdown_lines(label: str, load: LoadResult, health: dict[str, object], figures: dict[str, float]) -> None:
    """Server CPU per request split by stage, at the micro-batch sizes this run formed."""
    batching = health["batching"]
    assert isinstance(batching, dict)
    per_encode = batching["encoder"]["items"] / max(batching["encoder"]["batches"], 1)
    per_search = batching["milvus"]["items"] / max(batching["milvus"]["batches"], 1)
    encoder = figures["encoder_b1"] + (min(per_encode, 2.0) - 1.0) * (figures["encoder_b2"] - figures["encoder_b1"])
    search_call = figures["search_b1"] + (min(per_search, 2.0) - 1.0) * (figures["search_b2"] - figures["search_b1"])
    stages = {"decode and preprocess (one photo)": figures["decode"],
              f"encoder per image (batches of {per_encode:.2f})": encoder,
              f"search per request (one call per {per_search:.2f} requests)": search_call / per_search}
    rest = load.server_cpu_ms - sum(stages.values())
    print(f"where the server's CPU goes, {label} x{load.clients} ({load.server_cpu_ms:.1f} ms per request; each "
          "stage measured alone in this process, interpolated to the batch sizes the run formed):")
    for name, ms in stages.items():
        print(f"  {name}: {ms:.1f} ms ({ms / load.server_cpu_ms:.0%})")
    if rest >= 0:
        print(f"  the rest (HTTP, multipart, JSON, threads, queues): {rest:.1f} ms ({rest / load.server_cpu_ms:.0%})")
    else:  # a stage alone cost more than under load: the machine was busier for it; its proportions still read
        print(f"  the stages alone sum to {-rest:.1f} ms more than the load run measured: the machine was busier "
              "while they were measured; read them as proportions, and rerun on a quiet machine")


@contextlib.contextmanager
def target_for(engine: str, args: argparse.Namespace, scratch: Path) -> Iterator[Target]:
    """The index folder for ``engine``: built (or reused) in this process, on a started server for ``server``."""
    if engine == "lite":
        index_dir = args.index_dir or scratch / "index"
        yield Target("lite", index_dir, None)
        return
    milvus = start_milvus_server(scratch / "milvus-data")
    print(f"Milvus server {milvus.version} at {milvus.uri} (process group {milvus.pid})", flush=True)
    try:
        yield Target("server", scratch / "index-server", milvus)
    finally:
        milvus.stop()


def main() -> None:
    args = parse_arguments()
    catalog = load_catalog("grocery-store", data_dir=args.data_dir)
    if args.items:
        catalog = catalog.head(args.items)
    queries = [item.image_path for item in catalog if item.split == "test"][::7]
    photos = [(path.name, path.read_bytes()) for path in queries]
    loads: dict[str, list[LoadResult]] = {}
    health: dict[str, dict[str, object]] = {}
    breakdowns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        for engine in args.milvus:
            with target_for(engine, args, Path(scratch)) as target:
                started = time.perf_counter()
                built = build_index(args.model, catalog, target.index_dir, progress=True,
                                    uri=target.milvus.uri if target.milvus else None)
                print(f"index ({engine}): {built.total:,} items ({built.added:,} added, {built.already_indexed:,} "
                      f"already there), {built.dim}-d, {time.perf_counter() - started:.1f} s; {len(photos)} query "
                      "photos", flush=True)
                engine_loads, engine_health = run_modes(args, target, photos, Path(scratch))
                loads.update(engine_loads)
                health.update(engine_health)
                onnx_path = built.onnx or ensure_onnx(load_backbone(args.model), target.index_dir / "encoder.onnx")[0]
                if args.breakdown:
                    served = str(next(iter(engine_health.values()))["encoder"])
                    breakdowns[engine] = cpu_breakdown(target, args.model, served, onnx_path, queries, args.repeats)
        speeds = encoder_speeds(args.model, onnx_path, queries, args.repeats, args.max_batch)
    encoder = str(next(iter(health.values()))["encoder"])
    rate = report(args, loads, health, speeds, encoder)
    for label, results in loads.items():
        figures = breakdowns.get(label.split("/")[1])
        if figures:
            breakdown_lines(label, max(results, key=lambda r: r.clients), health[label], figures)
    if args.output:
        args.output.write_text(json.dumps({"loads": {m: [asdict(r) for r in rs] for m, rs in loads.items()},
                                           "encoders": speeds, "batched_rate": rate, "health": health,
                                           "breakdown": breakdowns}, indent=2))
    if any(r.errors for rs in loads.values() for r in rs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
