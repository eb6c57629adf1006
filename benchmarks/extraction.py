"""Extraction throughput: `shelfsight embed` end to end vs the model's pure forward pass.

Measured side by side in one run, on real Grocery Store photos with efficientnet_lite0:
  1. pure forward: the prepared model (the same one extraction uses) on pre-decoded, pre-resized
     uint8 batches already in memory, at the same batch size;
  2. end to end: `embed_catalog` on the same images from disk (decode, resize, batch, forward,
     normalise, write the cache), with a fresh cache each time;
  3. cold vs warm cache: the same call twice on one cache folder.
Medians over --repeats runs. Targets: end-to-end / forward >= 0.85, warm >= 50x faster than cold.

    SHELFSIGHT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/extraction.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from shelfsight.backbones import build_pixel_transform, load_backbone, normalize_pixels
from shelfsight.catalog import decode_image, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.extract import prepare_for_inference


def pure_forward_rate(model: torch.nn.Module, batches: list[torch.Tensor], preprocess) -> float:  # type: ignore[no-untyped-def]
    """Images/s of normalise + forward on batches already decoded and resized."""
    with torch.inference_mode():
        model(normalize_pixels(batches[0], preprocess).contiguous(memory_format=torch.channels_last))
        started = time.perf_counter()
        for batch in batches:
            features = model(normalize_pixels(batch, preprocess).contiguous(memory_format=torch.channels_last))
            torch.nn.functional.normalize(features, dim=1)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    catalog = load_catalog("grocery-store", splits=("test",))
    step = max(1, len(catalog) // args.images)
    catalog = catalog.subset([item.item_id for item in catalog.items[::step][: args.images]])
    backbone = load_backbone(args.model)
    model, fused = prepare_for_inference(backbone.encoder, torch.device("cpu"))
    pixel_transform = build_pixel_transform(backbone.preprocess)
    draft = backbone.preprocess.resize_size
    decoded = [pixel_transform(decode_image(item.image_path, draft_size=draft)) for item in catalog]
    batches = [torch.stack(decoded[i:i + args.batch_size]) for i in range(0, len(decoded), args.batch_size)]
    print(f"{args.model} on {len(catalog)} Grocery Store test photos, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, batch norm folded: {fused}")

    forward, end_to_end, cold, warm = [], [], [], []
    for repeat in range(args.repeats):
        forward.append(pure_forward_rate(model, batches, backbone.preprocess))
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            result = embed_catalog(catalog, backbone, batch_size=args.batch_size, num_workers=args.workers,
                                   cache_dir=cache, progress=False)
            cold.append(time.perf_counter() - started)
            end_to_end.append(result.images_per_second)
            started = time.perf_counter()
            again = embed_catalog(catalog, backbone, batch_size=args.batch_size, num_workers=args.workers,
                                  cache_dir=cache, progress=False)
            warm.append(time.perf_counter() - started)
            assert again.computed == 0 and again.ids == result.ids
        print(f"  run {repeat + 1}: forward {forward[-1]:.1f} img/s, end to end {end_to_end[-1]:.1f} img/s, "
              f"cold {cold[-1]:.2f} s, warm {warm[-1]:.3f} s")

    f, e = statistics.median(forward), statistics.median(end_to_end)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"pure forward (pre-decoded tensors): {f:.1f} images/s (median)")
    print(f"shelfsight embed end to end:        {e:.1f} images/s (median)")
    print(f"ratio end-to-end / forward:         {e / f:.3f}  (target >= 0.85)")
    print(f"cold cache: {c:.2f} s, warm cache: {w:.3f} s, warm speed-up {c / w:.0f}x  (target >= 50x)")


if __name__ == "__main__":
    main()
