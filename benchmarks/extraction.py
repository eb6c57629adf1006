"""Extraction: runtimes side by side, end to end against pure forward, decode per core, cold/warm, incremental.

Measured in one run, on real Grocery Store photos (default efficientnet_lite0 at 224 px):
  1. pure forward of each runtime (PyTorch eager prepared as extraction prepares it, ONNX Runtime and
     OpenVINO at fp32 on the project's export) on the same uint8 batches already in memory, at batch 1, 16 and
     32, interleaved round by round so that load on the machine hits every runtime alike; their agreement with
     PyTorch on those photos;
  2. decode + resize (JPEG draft) per core, the rate one decoding worker can feed;
  3. end to end: ``embed_catalog`` with the runtime ``auto`` chooses, on the same photos from disk, fresh
     cache, against that runtime's pure forward at the same batch size (target >= 0.85);
  4. cold against warm: the same call twice on one cache (target: warm >= 50x faster);
  5. incremental: a 300-photo catalogue embedded, 10 photos added, embedded again (seconds, photos computed).
Medians over --repeats. Thread counts are printed; ``--threads`` sets the runtimes' threads (default: the
cores the one decoding worker leaves).

    SHELFSIGHT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/extraction.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shelfsight.backbones import Backbone, build_pixel_transform, load_backbone
from shelfsight.catalog import Catalog, decode_image, load_catalog, load_image_folder
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.export import ensure_onnx
from shelfsight.embeddings.runtime_choice import default_threads
from shelfsight.embeddings.runtimes import OnnxRuntime, OpenVinoRuntime, Runtime, TorchRuntime, check_agreement

BATCHES = (1, 16, 32)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def runtimes(backbone: Backbone, threads: int) -> list[Runtime]:
    torch.set_num_threads(threads)
    path, _ = ensure_onnx(backbone)
    found: list[Runtime] = [TorchRuntime(backbone, torch.device("cpu"), "fp32"), OnnxRuntime(path, threads=threads)]
    try:
        found.append(OpenVinoRuntime(path, threads=threads))
    except Exception as error:  # noqa: BLE001 - OpenVINO is optional
        print(f"openvino not measured: {error}")
    return found


def pure_forward(found: list[Runtime], pixels: torch.Tensor, repeats: int) -> dict[tuple[str, int], float]:
    """Images/s of each runtime at each batch size: the same batches, interleaved, median over rounds."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for runtime in found:
        runtime(pixels[:2])  # warm-up
    for _ in range(repeats):
        for batch in BATCHES:
            usable = len(pixels) - len(pixels) % batch
            chunks = [pixels[i:i + batch] for i in range(0, usable, batch)]
            for runtime in found:
                seconds.setdefault((runtime.name, batch), []).append(
                    timed(lambda r=runtime, cs=chunks: [r(c) for c in cs]) / usable)
    return {key: 1.0 / statistics.median(values) for key, values in seconds.items()}


def decode_rate(catalog: Catalog, backbone: Backbone) -> float:
    transform = build_pixel_transform(backbone.preprocess)
    draft = backbone.preprocess.resize_size
    elapsed = timed(lambda: [transform(decode_image(item.image_path, draft_size=draft)) for item in catalog])
    return len(catalog) / elapsed


def incremental(catalog: Catalog, backbone: Backbone, workers: int) -> tuple[float, int, float, int]:
    """(seconds, computed) for a 300-photo folder, then for the same folder with 10 photos added."""
    with tempfile.TemporaryDirectory() as scratch:
        shop = Path(scratch) / "shop"
        items = catalog.items[:310]
        for k, item in enumerate(items[:300]):
            (shop / item.label).mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.image_path, shop / item.label / f"{k:04d}.jpg")
        cache = Path(scratch) / "cache"
        first = embed_catalog(load_image_folder(shop), backbone, cache_dir=cache, num_workers=workers, progress=False)
        for k, item in enumerate(items[300:], 300):
            (shop / item.label).mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.image_path, shop / item.label / f"{k:04d}.jpg")
        started = time.perf_counter()
        second = embed_catalog(load_image_folder(shop), backbone, cache_dir=cache, num_workers=workers,
                               progress=False)
        return first.seconds, first.computed, time.perf_counter() - started, second.computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = args.threads or default_threads(args.workers)

    full = load_catalog("grocery-store", splits=("test",))
    step = max(1, len(full) // args.images)
    catalog = full.subset([item.item_id for item in full.items[::step][: args.images]])
    backbone = load_backbone(args.model)
    transform = build_pixel_transform(backbone.preprocess)
    pixels = torch.stack([transform(decode_image(i.image_path, draft_size=backbone.preprocess.resize_size))
                          for i in catalog.items[:128]])
    print(f"{args.model} on {len(catalog)} Grocery Store test photos; {os.cpu_count()} cores, {args.workers} "
          f"decoding worker(s), {threads} runtime thread(s); load average {os.getloadavg()[0]:.2f}")

    found = runtimes(backbone, threads)
    for runtime in found[1:]:
        print(f"{runtime.name} agreement with torch {check_agreement(runtime, found[0], pixels[:32]).describe()}")
    rates = pure_forward(found, pixels, args.repeats)
    print("pure forward, images/s (same batches, interleaved):")
    for batch in BATCHES:
        line = ", ".join(f"{r.name} {rates[r.name, batch]:.1f}" for r in found)
        ratios = ", ".join(f"{r.name}/torch {rates[r.name, batch] / rates['torch', batch]:.2f}x" for r in found[1:])
        print(f"  batch {batch:>2}: {line}  ({ratios})")
    print(f"decode + resize: {decode_rate(catalog.head(200), backbone):.0f} images/s on one core")

    ends, colds, warms = [], [], []
    chosen = ""
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold = embed_catalog(catalog, backbone, batch_size=args.batch_size, num_workers=args.workers,
                                 threads=threads, cache_dir=cache, progress=False)
            warm_seconds = timed(lambda c=cache: embed_catalog(catalog, backbone, batch_size=args.batch_size,  # type: ignore[misc]
                                                               num_workers=args.workers, cache_dir=c,
                                                               progress=False))
            chosen = cold.runtime
            ends.append(cold.images_per_second)
            colds.append(cold.seconds)
            warms.append(warm_seconds)
    end = statistics.median(ends)
    forward = rates[chosen, args.batch_size] if (chosen, args.batch_size) in rates else float("nan")
    print(f"end to end ({chosen}, chosen by auto), batch {args.batch_size}: {end:.1f} images/s; "
          f"pure forward {forward:.1f}; ratio {end / forward:.2f} (target >= 0.85)")
    cold_s, warm_s = statistics.median(colds), statistics.median(warms)
    print(f"cold {cold_s:.2f} s, warm {warm_s:.3f} s: warm is {cold_s / warm_s:.0f}x faster (target >= 50x)")
    first_s, first_n, second_s, second_n = incremental(full, backbone, args.workers)
    print(f"incremental: 300 photos embedded in {first_s:.1f} s ({first_n} computed); 10 added: {second_s:.2f} s "
          f"for the whole call, {second_n} computed")


if __name__ == "__main__":
    main()
