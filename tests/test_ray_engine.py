"""Extraction on a local Ray cluster: the same vectors, the same cache, and a killed worker changes nothing."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shelfsight.catalog import Catalog, load_catalog, load_image_folder
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.ray_start import start_ray
from shelfsight.embeddings.shards import read_shard

ray = pytest.importorskip("ray")
from shelfsight.embeddings.ray_engine import (  # noqa: E402
    BackboneRecipe,
    RayOptions,
    embed_catalog_ray,
    shard_folder,
    shard_paths,
)

pytestmark = pytest.mark.slow  # a local Ray cluster takes ~10 s to start

RECIPE = BackboneRecipe("efficientnet_lite0", preprocess={"input_size": 64})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local cluster bounded to two CPU workers, shut down after the module (started as the engine
    starts one: tried again when a cold first boot misses Ray's 30 s window)."""
    start_ray(ray, address=None, num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def grocery_subset(grocery_root: Path) -> Catalog:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",))
    return catalog.per_class(2).head(96)


def test_ray_extraction_equals_one_process_and_fills_the_same_cache(ray_cluster: None, grocery_subset: Catalog,
                                                                     tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    chunk = min(32, len(grocery_subset) // 3)  # three chunks: 32 of the 96 photos; 4 of the fixture's 12
    distributed = embed_catalog_ray(grocery_subset, RECIPE, options=RayOptions(actors=2), chunk_size=chunk,
                                    cache_dir=cache, progress=False)
    assert distributed.computed == len(grocery_subset) == len(distributed.ids)
    single = embed_catalog(grocery_subset, RECIPE.load(), chunk_size=chunk, use_cache=False, num_workers=0,
                           progress=False)
    assert distributed.key == single.key  # one cache key, whichever engine computed it
    assert distributed.ids == single.ids == grocery_subset.ids
    np.testing.assert_allclose(distributed.vectors, single.vectors, atol=1e-6)
    # the single-machine engine reads the chunks the Ray run wrote: nothing recomputed
    warm = embed_catalog(grocery_subset, RECIPE.load(), chunk_size=chunk, cache_dir=cache, num_workers=0,
                         progress=False)
    assert warm.computed == 0 and warm.ids == single.ids
    # and a second Ray run finds everything cached without starting any work
    again = embed_catalog_ray(grocery_subset, RECIPE, chunk_size=chunk, cache_dir=cache, progress=False)
    assert again.computed == 0
    assert distributed.runtime == single.runtime == "onnx"  # the same runtime, chosen and checked alike
    shards = shard_paths(shard_folder(distributed))
    assert len(shards) == 3
    ids, vectors = zip(*(read_shard(path) for path in shards), strict=True)
    assert [i for part in ids for i in part] == single.ids
    np.testing.assert_array_equal(np.concatenate(vectors), distributed.vectors)


def test_corrupt_files_are_skipped_and_reported_like_one_process(ray_cluster: None, messy_catalog: Path,
                                                                  tmp_path: Path) -> None:
    catalog = load_image_folder(messy_catalog)
    distributed = embed_catalog_ray(catalog, RECIPE, options=RayOptions(actors=1), chunk_size=8,
                                    cache_dir=tmp_path / "ray", progress=False)
    single = embed_catalog(catalog, RECIPE.load(), chunk_size=8, cache_dir=tmp_path / "one", num_workers=0,
                           progress=False)
    assert distributed.skipped, "the messy catalogue has broken files"
    assert [(s.item_id, s.reason) for s in distributed.skipped] == [(s.item_id, s.reason) for s in single.skipped]
    assert distributed.ids == single.ids
    assert len(distributed.ids) + len(distributed.skipped) == len(catalog)
    np.testing.assert_allclose(distributed.vectors, single.vectors, atol=1e-6)


def _kill_one_backbone_actor() -> int:
    """SIGKILL the process of one live backbone actor (as a crashed node or an OOM kill would).

    Ray titles actor processes ``ray::MapWorker(...)``; /proc finds them without the dashboard."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::MapWorker"):
            os.kill(int(entry.name), signal.SIGKILL)
            return int(entry.name)
    raise AssertionError("no live backbone actor process to kill")


def test_a_killed_worker_is_replaced_and_no_item_is_lost_or_duplicated(ray_cluster: None, grocery_subset: Catalog,
                                                                         tmp_path: Path) -> None:
    killed: list[int] = []
    lock = threading.Lock()

    def kill_once(chunk: int) -> None:
        with lock:
            if not killed:
                killed.append(_kill_one_backbone_actor())

    chunk = max(1, min(8, len(grocery_subset) // 12))  # twelve chunks: 8 of the 96 photos; 1 of the fixture's 12
    result = embed_catalog_ray(grocery_subset, RECIPE, options=RayOptions(actors=2), chunk_size=chunk,
                               cache_dir=tmp_path / "cache", progress=False, on_chunk=kill_once)
    assert killed, "the run finished before a worker could be killed"
    assert result.ids == grocery_subset.ids  # every id once, in catalogue order
    assert len(set(result.ids)) == len(result.ids) and not result.skipped
    single = embed_catalog(grocery_subset, RECIPE.load(), chunk_size=chunk, use_cache=False, num_workers=0,
                           progress=False)
    np.testing.assert_allclose(result.vectors, single.vectors, atol=1e-6)


def test_embed_command_runs_on_ray(ray_cluster: None, grocery_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shelfsight.cli import app

    args = ["embed", "--model", "efficientnet_lite0", "--dataset", "grocery-store", "--split", "val", "--limit", "24",
            "--data-dir", str(grocery_root), "--cache-dir", str(tmp_path), "--engine", "ray", "--actors", "1",
            "--chunk-size", "8", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "24" in result.output and "miss" in result.output
    again = CliRunner().invoke(app, args)
    assert "hit" in again.output
    bad = CliRunner().invoke(app, [*args[:-1], "--engine", "spark"])
    assert bad.exit_code != 0 and "use local or ray" in bad.output


def test_an_onnx_file_runs_on_ray_as_in_one_process(ray_cluster: None, grocery_subset: Catalog,
                                                    tmp_path: Path) -> None:
    """An `onnx:` backbone (lite0 exported by shelfsight, its preprocessing in a sidecar) rebuilt in the actors
    from its name: the vectors one process computes, bit for bit (the same ONNX Runtime graph)."""
    import yaml

    from shelfsight.backbones import load_backbone
    from shelfsight.backbones.onnx_model import sidecar_path
    from shelfsight.embeddings.export import export_onnx

    source = RECIPE.load()
    path = export_onnx(source, tmp_path / "lite0.onnx")
    declared = {k: list(v) if isinstance(v, tuple) else v for k, v in source.preprocess.as_dict().items()}
    sidecar_path(path).write_text(yaml.safe_dump(declared), encoding="utf-8")
    subset = grocery_subset.head(24)
    recipe = BackboneRecipe(f"onnx:{path}")
    distributed = embed_catalog_ray(subset, recipe, options=RayOptions(actors=1), cache_dir=tmp_path / "cache",
                                    progress=False)
    single = embed_catalog(subset, load_backbone(f"onnx:{path}"), use_cache=False, num_workers=0, progress=False)
    assert distributed.runtime == single.runtime == "onnx" and distributed.ids == single.ids
    np.testing.assert_array_equal(distributed.vectors, single.vectors)
