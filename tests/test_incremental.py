"""The per-photo cache: a changed catalogue computes exactly its new photos, nothing for the rest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog import load_catalog, load_image_folder
from shelfsight.embeddings import embed_catalog

OPTIONS = {"num_workers": 0, "batch_size": 8, "chunk_size": 16, "progress": False}


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone("efficientnet_lite0", preprocess={"input_size": 64})


def _copy_photos(grocery_root: Path, target: Path, count: int) -> list[Path]:
    """``count`` real photos copied into an image folder (two classes by file order)."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    copies = []
    for k, item in enumerate(catalog.items[:count]):
        folder = target / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy2(item.image_path, folder / f"p{k:03d}.jpg")))
    return copies


def test_adding_removing_and_touching_photos_computes_only_what_changed(grocery_root: Path, backbone: Backbone,
                                                                        tmp_path: Path) -> None:
    photos = _copy_photos(grocery_root, tmp_path / "staging", 40)
    shop = tmp_path / "shop"
    for photo in photos[:30]:
        (shop / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo, shop / photo.parent.name / photo.name)
    first = embed_catalog(load_image_folder(shop), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert first.computed == 30
    for photo in photos[30:]:  # ten new listings
        shutil.copy2(photo, shop / photo.parent.name / photo.name)
    grown = embed_catalog(load_image_folder(shop), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert grown.computed == 10 and len(grown.ids) == 40
    for photo in sorted(shop.glob("*/*.jpg"))[:5]:  # five removed
        photo.unlink()
    shrunk = embed_catalog(load_image_folder(shop), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert shrunk.computed == 0 and len(shrunk.ids) == 35
    for photo in shop.glob("*/*.jpg"):  # touched: new mtimes, same bytes
        os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 5_000_000_000))
    touched = embed_catalog(load_image_folder(shop), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert touched.computed == 0 and touched.key == shrunk.key
    fresh = embed_catalog(load_image_folder(shop), backbone, use_cache=False, **OPTIONS)  # type: ignore[arg-type]
    assert touched.ids == fresh.ids
    assert np.array_equal(touched.vectors, fresh.vectors)  # the cached vectors are the ones a cold run computes


def test_moved_or_renamed_photos_and_a_manifest_elsewhere_are_not_re_embedded(grocery_root: Path,
                                                                              backbone: Backbone,
                                                                              tmp_path: Path) -> None:
    _copy_photos(grocery_root, tmp_path / "shop", 20)
    before = embed_catalog(load_image_folder(tmp_path / "shop"), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert before.computed == 20
    moved = tmp_path / "elsewhere" / "renamed-shop"
    moved.parent.mkdir()
    (tmp_path / "shop").rename(moved)
    for k, photo in enumerate(sorted(moved.glob("a/*.jpg"))):
        photo.rename(photo.with_name(f"renamed-{k}.jpg"))
    after = embed_catalog(load_image_folder(moved), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert after.computed == 0 and len(after.ids) == 20
    rows = [{"path": str(p.relative_to(moved)), "label": p.parent.name} for p in sorted(moved.glob("*/*.jpg"))]
    manifest = tmp_path / "listing" / "catalogue.csv"
    manifest.parent.mkdir()
    pd.DataFrame(rows).to_csv(manifest, index=False)
    listed = embed_catalog(load_catalog(str(manifest), image_root=moved), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert listed.computed == 0 and len(listed.ids) == 20
    by_vector = {tuple(v[:8]) for v in before.vectors}
    assert {tuple(v[:8]) for v in listed.vectors} == by_vector


def test_identical_photos_under_two_ids_are_computed_once(grocery_root: Path, backbone: Backbone,
                                                          tmp_path: Path) -> None:
    (photo,) = _copy_photos(grocery_root, tmp_path / "shop", 1)
    shutil.copy2(photo, photo.with_name("reposted.jpg"))
    result = embed_catalog(load_image_folder(tmp_path / "shop"), backbone, **OPTIONS)  # type: ignore[arg-type]
    assert result.computed == 1 and len(result.ids) == 2
    assert np.array_equal(result.vectors[0], result.vectors[1])


def test_index_on_an_extended_catalogue_embeds_and_inserts_only_the_new_photos(grocery_root: Path,
                                                                              tmp_path: Path) -> None:
    from shelfsight.search import MilvusIndex
    from shelfsight.serve import build_index
    from shelfsight.serve.manifest import IndexLayout

    photos = _copy_photos(grocery_root, tmp_path / "staging", 24)
    shop = tmp_path / "shop"
    for photo in photos[:18]:
        (shop / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo, shop / photo.parent.name / photo.name)
    options = {"num_workers": 0, "progress": False, "export_onnx": False,
               "preprocess": {"input_size": 64}}
    first = build_index("efficientnet_lite0", load_image_folder(shop), tmp_path / "index", **options)  # type: ignore[arg-type]
    assert (first.added, first.embedded, first.total) == (18, 18, 18)
    for photo in photos[18:]:
        shutil.copy2(photo, shop / photo.parent.name / photo.name)
    removed = sorted(shop.glob("*/*.jpg"))[:4]
    for photo in removed:
        photo.unlink()
    kept = build_index("efficientnet_lite0", load_image_folder(shop), tmp_path / "index", **options)  # type: ignore[arg-type]
    assert (kept.added, kept.embedded, kept.removed, kept.already_indexed, kept.total) == (6, 6, 0, 14, 24)
    synced = build_index("efficientnet_lite0", load_image_folder(shop), tmp_path / "index", sync=True,
                         **options)  # type: ignore[arg-type]
    assert (synced.added, synced.embedded, synced.removed, synced.total) == (0, 0, 4, 20)
    layout = IndexLayout.at(tmp_path / "index")
    with MilvusIndex.lite(layout.milvus_lite, "catalogue", synced.dim, reuse=True) as index:
        stored = index.stored_ids()
    assert stored == {p.relative_to(shop).as_posix() for p in shop.glob("*/*.jpg")}
