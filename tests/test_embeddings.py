"""Extraction: skip-and-report, cache hit/miss, resume after an interruption, real weights."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import gradient
from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog import load_catalog, load_image_folder
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.cache import NON_FINITE, SkippedItem, make_chunk


@pytest.fixture(scope="module")
def small_backbone() -> Backbone:
    """Real EfficientNet-Lite0 weights at a small input size: fast, and still a real network."""
    return load_backbone("efficientnet_lite0", preprocess={"input_size": 64})


class Interrupted(Exception):
    pass


def test_broken_files_are_skipped_and_counts_reconcile(messy_catalog: Path, small_backbone: Backbone,
                                                       tmp_path: Path) -> None:
    catalog = load_image_folder(messy_catalog)
    result = embed_catalog(catalog, small_backbone, batch_size=4, num_workers=1, progress=False)
    assert len(result.ids) + len(result.skipped) == len(catalog)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "not_an_image.jpg", "corrupt.png", "bomb.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert "truncated" in reasons["truncated.jpg"]
    assert "too large" in reasons["bomb.png"]
    assert len(result.ids) == 12  # 6 good + 6 awkward-but-valid images
    assert result.vectors.shape == (12, 1280) and result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    report = result.write_skip_report(tmp_path / "skipped.csv")
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["path"]).name for r in rows} == set(reasons)
    assert all(r["reason"] for r in rows)


def test_warm_cache_reads_instead_of_recomputing(grocery_root: Path, small_backbone: Backbone) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).head(40)
    cold = embed_catalog(catalog, small_backbone, batch_size=8, num_workers=0, chunk_size=16, progress=False)
    warm = embed_catalog(catalog, small_backbone, batch_size=8, num_workers=0, chunk_size=16, progress=False)
    assert cold.computed == len(catalog) > 16 and warm.computed == 0  # 40 on the full dataset, 32 on the fixture
    assert warm.key == cold.key and warm.ids == cold.ids == catalog.ids
    assert np.array_equal(warm.vectors, cold.vectors)


def test_cache_key_follows_preprocessing_and_file_content(messy_catalog: Path, small_backbone: Backbone) -> None:
    catalog = load_image_folder(messy_catalog).select_splits("all").subset(
        [f"shoes/shoes_{k}.jpg" for k in range(3)])
    first = embed_catalog(catalog, small_backbone, num_workers=0, progress=False)
    other_crop = load_backbone("efficientnet_lite0", preprocess={"input_size": 64, "crop_pct": 1.0})
    recropped = embed_catalog(catalog, other_crop, num_workers=0, progress=False)
    assert recropped.key != first.key and recropped.computed == 3
    replaced = messy_catalog / "shoes" / "shoes_1.jpg"
    Image.open(messy_catalog / "bags" / "bags_0.jpg").save(replaced, quality=90)
    os.utime(replaced, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    changed = embed_catalog(load_image_folder(messy_catalog).subset(catalog.ids), small_backbone, num_workers=0,
                            progress=False)
    assert changed.key != first.key and changed.computed == 1  # only the replaced photo: the others are unchanged
    assert not np.allclose(changed.vectors[1], first.vectors[1])


def test_interrupted_run_resumes_with_identical_result(grocery_root: Path, small_backbone: Backbone,
                                                       tmp_path: Path) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).head(48)
    options = {"batch_size": 8, "num_workers": 1, "chunk_size": 16, "progress": False}
    reference = embed_catalog(catalog, small_backbone, cache_dir=tmp_path / "reference", **options)

    def stop_after_first_chunk(index: int) -> None:
        raise Interrupted(index)

    with pytest.raises(Interrupted):
        embed_catalog(catalog, small_backbone, cache_dir=tmp_path / "resumed", on_chunk=stop_after_first_chunk,
                      **options)
    resumed = embed_catalog(catalog, small_backbone, cache_dir=tmp_path / "resumed", **options)
    assert len(catalog) > 16  # two chunks or more: 48 photos on the full dataset, 32 on the fixture
    assert resumed.computed == len(catalog) - 16  # only the chunks that were not written
    assert resumed.ids == reference.ids
    assert np.array_equal(resumed.vectors, reference.vectors)


def test_worker_processes_give_the_same_vectors(grocery_root: Path, small_backbone: Backbone) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).head(12)
    in_process = embed_catalog(catalog, small_backbone, num_workers=0, use_cache=False, progress=False)
    with_workers = embed_catalog(catalog, small_backbone, num_workers=2, use_cache=False, progress=False)
    assert np.array_equal(in_process.vectors, with_workers.vectors)


def test_real_weights_flipped_photo_is_closer_than_another_product(grocery_photos: list[Path],
                                                                   tmp_path: Path) -> None:
    """The packaged ImageNet weights are real: a mirrored photo stays near its original."""
    folder = tmp_path / "photos"
    for index, photo in enumerate(grocery_photos):
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.parent.name / f"{index:02d}.jpg")
    banana = grocery_photos[0]
    (folder / "flipped").mkdir()
    ImageOps.mirror(Image.open(banana)).save(folder / "flipped" / "banana_flipped.jpg", quality=95)
    catalog = load_image_folder(folder)
    result = embed_catalog(catalog, load_backbone("efficientnet_lite0"), num_workers=0, progress=False)
    vectors = dict(zip(result.ids, result.vectors, strict=True))
    original = vectors["Banana/00.jpg"]
    flipped_similarity = float(original @ vectors["flipped/banana_flipped.jpg"])
    others = [float(original @ v) for k, v in vectors.items() if not k.startswith(("Banana/", "flipped/"))]
    assert flipped_similarity > max(others)
    assert flipped_similarity > 0.8
    random_init = embed_catalog(catalog, load_backbone("efficientnet_lite0", pretrained=False), num_workers=0,
                                progress=False)
    assert random_init.key != result.key


def _cache_chunks(cache: Path) -> list[Path]:
    return sorted(cache.glob("vectors/*/*/part-*.npz"))


@pytest.mark.slow
def test_killed_process_resumes_where_it_stopped(grocery_root: Path, tmp_path: Path) -> None:
    """A real SIGKILL mid-run: whole chunks survive, the rerun computes the rest, nothing differs."""
    command = [sys.executable, "-m", "shelfsight.cli", "embed", "--model", "efficientnet_lite0", "--dataset",
               "grocery-store", "--split", "test", "--limit", "160", "--chunk-size", "16", "--batch-size", "8",
               "--workers", "1", "--quiet", "--data-dir", str(grocery_root)]
    environment = {**os.environ, "SHELFSIGHT_CACHE_DIR": str(tmp_path / "killed")}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_cache_chunks(tmp_path / "killed")) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    survivors = len(_cache_chunks(tmp_path / "killed"))
    assert 2 <= survivors < 10
    assert not list((tmp_path / "killed").glob("vectors/*/*/.part-*"))  # no half-written part left
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"partial ({survivors * 16} items cached)" in finished.stdout
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("test",)).head(160)
    backbone = load_backbone("efficientnet_lite0")
    resumed = embed_catalog(catalog, backbone, cache_dir=tmp_path / "killed", chunk_size=16, progress=False)
    fresh = embed_catalog(catalog, backbone, cache_dir=tmp_path / "fresh", chunk_size=16, batch_size=8,
                          num_workers=1, progress=False)
    assert resumed.computed == 0
    assert np.array_equal(resumed.vectors, fresh.vectors)


def test_manifest_with_broken_files_is_skipped_and_reported(messy_catalog: Path, small_backbone: Backbone,
                                                            tmp_path: Path) -> None:
    """The manifest source meets the same broken files, plus a row whose file is missing."""
    import pandas as pd

    from shelfsight.catalog import load_manifest

    files = sorted(p for p in messy_catalog.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    rows = [{"path": str(p.relative_to(messy_catalog)), "label": p.parent.name} for p in files]
    rows.append({"path": "shoes/deleted_since.jpg", "label": "shoes"})
    pd.DataFrame(rows).to_csv(messy_catalog / "catalogue.csv", index=False)
    catalog = load_manifest(messy_catalog / "catalogue.csv")
    result = embed_catalog(catalog, small_backbone, num_workers=0, progress=False)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons["deleted_since.jpg"] == "file not found"
    assert {"truncated.jpg", "empty.jpg", "not_an_image.jpg", "corrupt.png", "bomb.png"} <= set(reasons)
    assert len(result.ids) == 12 and len(result.ids) + len(result.skipped) == len(catalog) == 18


# ── non-finite embeddings are skipped items, never vectors ──────────────────────────────────────────


class _NonFiniteFor(torch.nn.Module):
    """An encoder that breaks on some images: NaN features for bright ones, infinite ones for dark ones."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.inner(pixels)
        brightness = pixels.mean(dim=(1, 2, 3))[:, None]  # normalised to [-1, 1] for EfficientNet-Lite
        features = torch.where(brightness > 0.5, torch.full_like(features, float("nan")), features)
        return torch.where(brightness < -0.5, torch.full_like(features, float("inf")), features)


def _light_and_dark_catalogue(root: Path) -> Path:
    for k in range(5):
        (root / "goods").mkdir(parents=True, exist_ok=True)
        gradient(80, 60, seed=k).save(root / "goods" / f"g{k}.jpg", quality=90)
    (root / "glare").mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "glare" / "white.png")
    Image.new("RGB", (64, 64), "white").save(root / "glare" / "white2.png")
    (root / "night").mkdir()
    Image.new("RGB", (64, 64), "black").save(root / "night" / "black.png")
    (root / "night" / "empty.jpg").write_bytes(b"")
    return root


def test_non_finite_embeddings_become_skipped_items(tmp_path: Path, small_backbone: Backbone) -> None:
    catalog = load_image_folder(_light_and_dark_catalogue(tmp_path / "catalogue"))
    broken = dataclasses.replace(small_backbone, encoder=_NonFiniteFor(small_backbone.encoder))
    options = {"batch_size": 2, "num_workers": 0, "chunk_size": 4, "progress": False}
    result = embed_catalog(catalog, broken, **options)  # type: ignore[arg-type]
    reasons = {s.item_id: s.reason for s in result.skipped}
    assert reasons == {"glare/white.png": NON_FINITE, "glare/white2.png": NON_FINITE,
                       "night/black.png": NON_FINITE, "night/empty.jpg": "empty file"}
    assert {s.item_id: Path(s.path) for s in result.skipped}["glare/white.png"] == tmp_path / "catalogue" / \
        "glare" / "white.png"
    assert result.ids == [f"goods/g{k}.jpg" for k in range(5)]
    assert result.vectors.shape == (5, 1280) and np.isfinite(result.vectors).all()
    assert len(result.ids) + len(result.skipped) == len(catalog)
    warm = embed_catalog(catalog, broken, **options)  # type: ignore[arg-type]
    assert warm.computed == 0 and warm.skipped == result.skipped and np.array_equal(warm.vectors, result.vectors)
    for chunk in sorted(result.cache_folder.glob("part-*.npz")):  # type: ignore[union-attr]
        with np.load(chunk) as stored:
            assert np.isfinite(stored["vectors"]).all()  # never written to the cache either


def test_a_cached_non_finite_vector_is_refused_on_reading(messy_catalog: Path, small_backbone: Backbone) -> None:
    """A chunk cached before extraction refused non-finite vectors still never yields one."""
    catalog = load_image_folder(messy_catalog).select_splits("all").subset(
        [f"shoes/shoes_{k}.jpg" for k in range(3)])
    first = embed_catalog(catalog, small_backbone, num_workers=0, progress=False)
    (part,) = sorted(first.cache_folder.glob("part-*.npz"))  # type: ignore[union-attr]
    with np.load(part) as stored:
        digests, poisoned, failed = stored["digests"], stored["vectors"].copy(), stored["failed"]
    poisoned[1, 7] = np.nan
    np.savez(part, digests=digests, vectors=poisoned, failed=failed)
    again = embed_catalog(catalog, small_backbone, num_workers=0, progress=False)
    assert again.computed == 0
    assert again.ids == ["shoes/shoes_0.jpg", "shoes/shoes_2.jpg"]
    assert again.skipped == [SkippedItem("shoes/shoes_1.jpg", str(messy_catalog.resolve() / "shoes" / "shoes_1.jpg"),
                                         NON_FINITE)]
    assert np.array_equal(again.vectors, first.vectors[[0, 2]])


def test_make_chunk_moves_non_finite_rows_to_skipped() -> None:
    vectors = np.array([[1.0, 0.0], [np.inf, 0.0], [0.0, 1.0], [np.nan, np.nan]], np.float32)
    earlier = SkippedItem("a", "/a.jpg", "empty file")
    chunk = make_chunk(["d", "c", "b", "e"], ["/d", "/c", "/b", "/e"], vectors, [earlier])
    assert chunk.ids == ["d", "b"] and np.array_equal(chunk.vectors, vectors[[0, 2]])
    assert chunk.skipped == [earlier, SkippedItem("c", "/c", NON_FINITE), SkippedItem("e", "/e", NON_FINITE)]
    with pytest.raises(ValueError, match="do not line up"):
        make_chunk(["x"], ["/x"], vectors, [])
