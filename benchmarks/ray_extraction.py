"""Ray extraction vs one process, and the arithmetic for scaling out.

Measured side by side in one run, on real Grocery Store photos:
  1. one process: `embed_catalog` (DataLoader decode workers + the model in the main process);
  2. Ray: `embed_catalog_ray` on a local cluster bounded to --cpus, with --actors backbone actors;
  3. the parts that decide scaling: the driver-side decode rate of one core (decode + resize only)
     and the forward rate of one actor on pre-decoded batches.
Each engine gets a fresh cache, so every image is computed; medians over --repeats.

Scaling out, extraction is bounded by min(actors x per-actor forward rate, decode cores x per-core
decode rate, storage read rate); the script prints that bound for the GPU counts given.

    SHELFSIGHT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/ray_extraction.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from shelfsight.backbones import build_pixel_transform, normalize_pixels
from shelfsight.catalog import decode_image, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.ray_engine import BackboneRecipe, RayOptions, embed_catalog_ray
from shelfsight.embeddings.runtimes import prepare_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-rate", type=float, default=2500.0,
                        help="assumed images/s of one GPU actor, for the N-GPU estimate (state yours)")
    parser.add_argument("--gpus", type=int, nargs="*", default=[1, 8, 64])
    args = parser.parse_args()

    import ray

    catalog = load_catalog("grocery-store", splits=("test",))
    step = max(1, len(catalog) // args.images)
    catalog = catalog.subset([item.item_id for item in catalog.items[::step][: args.images]])
    recipe = BackboneRecipe(args.model)
    backbone = recipe.load()
    print(f"{args.model} on {len(catalog)} Grocery Store test photos; local Ray cluster of {args.cpus} CPUs, "
          f"{args.actors} backbone actor(s); torch threads in this process: {torch.get_num_threads()}")

    single_rates, ray_rates = [], []
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                result = embed_catalog(catalog, backbone, cache_dir=cache, progress=False)
                single_rates.append(result.computed / result.seconds)
            with tempfile.TemporaryDirectory() as cache:
                started = time.perf_counter()
                result = embed_catalog_ray(catalog, recipe, options=RayOptions(actors=args.actors),
                                           cache_dir=cache, progress=False)
                ray_rates.append(result.computed / (time.perf_counter() - started))
    finally:
        ray.shutdown()
    decode_rate, forward_rate = _component_rates(catalog, backbone, images=min(160, len(catalog)))

    single, distributed = statistics.median(single_rates), statistics.median(ray_rates)
    print(f"one process        {single:8.1f} images/s   (runs: {', '.join(f'{r:.1f}' for r in single_rates)})")
    print(f"Ray, {args.actors} actor(s)    {distributed:8.1f} images/s   "
          f"(runs: {', '.join(f'{r:.1f}' for r in ray_rates)})")
    print(f"Ray / one process  {distributed / single:8.2f}x")
    print(f"decode + resize, one core      {decode_rate:8.1f} images/s")
    print(f"forward, one CPU thread        {forward_rate:8.1f} images/s")
    print("\nscaling arithmetic (throughput = min(actors x forward rate, decode cores x decode rate)):")
    for gpus in args.gpus:
        cores_needed = gpus * args.gpu_rate / decode_rate
        print(f"  {gpus:3d} GPU actor(s) at {args.gpu_rate:.0f} images/s each: {gpus * args.gpu_rate:10.0f} images/s "
              f"if >= {cores_needed:6.0f} decode cores feed them ({decode_rate:.0f} images/s per core measured here)")


def _component_rates(catalog, backbone, images: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Images/s of decode + resize on one core, and of the forward pass on one thread."""
    transform = build_pixel_transform(backbone.preprocess)
    items = catalog.items[:images]
    started = time.perf_counter()
    pixels = [transform(decode_image(item.image_path, draft_size=backbone.preprocess.resize_size)) for item in items]
    decode_rate = len(items) / (time.perf_counter() - started)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = prepare_for_inference(backbone.encoder, torch.device("cpu"))
        batches = [torch.stack(pixels[i:i + 16]) for i in range(0, len(pixels), 16)]
        with torch.inference_mode():
            model(normalize_pixels(batches[0], backbone.preprocess).contiguous(memory_format=torch.channels_last))
            started = time.perf_counter()
            for batch in batches:
                model(normalize_pixels(batch, backbone.preprocess).contiguous(memory_format=torch.channels_last))
        forward_rate = len(pixels) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return decode_rate, forward_rate


if __name__ == "__main__":
    main()
