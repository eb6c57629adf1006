"""Catalogue sources: the user's folder and manifest, the Grocery Store Dataset, Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shelfsight.catalog import load_catalog, load_image_folder, load_manifest
from shelfsight.catalog.fashion_mnist import CLASSES, read_idx
from shelfsight.errors import CatalogError, DatasetNotFoundError

# ---------------------------------------------------------------- image folder


def test_image_folder_takes_class_from_first_level(messy_catalog: Path) -> None:
    catalog = load_image_folder(messy_catalog)
    assert set(catalog.classes) == {"shoes", "bags", "odd", "broken"}
    assert len([i for i in catalog if i.label == "shoes"]) == 3
    assert len([i for i in catalog if i.label == "broken"]) == 5  # broken files are items; extraction skips them
    ignored = dict(catalog.ignored)
    assert ignored["shoes/.DS_Store"] == "hidden file"
    assert "not an image file extension" in ignored["shoes/notes.txt"]
    assert all(i.split == "all" for i in catalog)
    assert catalog.items[0].item_id == "bags/bags_0.jpg"  # sorted, relative ids


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    from conftest import gradient

    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            gradient(seed=len(split)).save(tmp_path / split / label / "x.png")
    catalog = load_image_folder(tmp_path)
    assert catalog.splits == ("test", "train")
    query, gallery = catalog.query_gallery(["test"], ["train"])
    assert len(query) == 2 and len(gallery) == 2
    assert {i.label for i in query} == {"a", "b"}


def test_image_folder_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not a folder"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(CatalogError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(CatalogError, match="no image files"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------- manifest


def _write_manifest(folder: Path, rows: list[dict[str, str]], name: str = "catalogue.csv") -> Path:
    path = folder / name
    frame = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_manifest_csv_and_parquet_agree(messy_catalog: Path) -> None:
    rows = [
        {"path": "shoes/shoes_0.jpg", "label": "shoes", "product_id": "sku-1", "split": "train"},
        {"path": "shoes/shoes_1.jpg", "label": "shoes", "product_id": "sku-1", "split": "test"},
        {"path": "bags/bags_0.jpg", "label": "bags", "product_id": "", "split": "test"},
    ]
    csv_catalog = load_manifest(_write_manifest(messy_catalog, rows))
    parquet_catalog = load_manifest(_write_manifest(messy_catalog, rows, "catalogue.parquet"))
    assert csv_catalog.items == parquet_catalog.items
    first = csv_catalog.items[0]
    assert first.product_id == "sku-1" and first.split == "train"
    assert first.image_path == messy_catalog / "shoes" / "shoes_0.jpg"
    assert csv_catalog.items[2].product_id is None
    assert csv_catalog.select_splits("test").ids == ["shoes/shoes_1.jpg", "bags/bags_0.jpg"]


def test_manifest_column_aliases_and_image_root(tmp_path: Path, messy_catalog: Path) -> None:
    path = _write_manifest(tmp_path, [{"image": "shoes/shoes_0.jpg", "category": "shoes", "sku": "A"}])
    catalog = load_manifest(path, image_root=messy_catalog)
    assert catalog.items[0].product_id == "A"
    assert catalog.items[0].image_path.is_file()


def test_manifest_errors_name_file_line_and_column(tmp_path: Path, messy_catalog: Path) -> None:
    missing_column = _write_manifest(messy_catalog, [{"path": "shoes/shoes_0.jpg", "cat": "x"}], "a.csv")
    with pytest.raises(CatalogError, match=r"a\.csv: missing required column 'label'"):
        load_manifest(missing_column)
    empty_label = _write_manifest(
        messy_catalog, [{"path": "shoes/shoes_0.jpg", "label": "shoes"}, {"path": "bags/bags_0.jpg", "label": ""}],
        "b.csv")
    with pytest.raises(CatalogError, match=r"b\.csv, line 3: empty 'label'"):
        load_manifest(empty_label)
    duplicate = _write_manifest(
        messy_catalog, [{"path": "shoes/shoes_0.jpg", "label": "x"}, {"path": "shoes/shoes_0.jpg", "label": "y"}],
        "c.csv")
    with pytest.raises(CatalogError, match=r"line 3: duplicate id .*first seen on line 2"):
        load_manifest(duplicate)
    elsewhere = _write_manifest(tmp_path, [{"path": "shoes/shoes_0.jpg", "label": "x"}], "d.csv")
    with pytest.raises(CatalogError, match="none of the first 1 image paths exist.*--image-root"):
        load_manifest(elsewhere)
    with pytest.raises(CatalogError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")


def test_unknown_source_suggests_close_dataset_names(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="Did you mean 'grocery-store'"):
        load_catalog("grocery-stor")


# ---------------------------------------------------------------- Grocery Store (real files)


def test_grocery_store_real_counts_and_labels(grocery_root: Path) -> None:
    from conftest import grocery_expected

    expected = grocery_expected(grocery_root)  # the full dataset: 2640/296/2485/81, 81 fine and 43 coarse classes
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    counts = {split: len(catalog.select_splits(split)) for split in catalog.splits}
    assert counts == expected.counts
    assert len(catalog.classes) == expected.fine_classes
    assert len({i.coarse_label for i in catalog}) == expected.coarse_classes
    first = catalog.items[0]
    assert (first.label, first.coarse_label, first.split) == ("Golden-Delicious", "Apple", "train")
    banana = next(i for i in catalog if i.item_id.startswith("test/Fruit/Banana/"))
    assert banana.label == "Banana" and banana.coarse_label == "Banana"
    iconic = catalog.select_splits("iconic")
    assert all(i.image_path.is_file() for i in iconic)
    assert {i.label for i in iconic} == set(catalog.classes)


def test_grocery_store_accepts_the_dataset_folder_and_split_filter(grocery_root: Path) -> None:
    from conftest import grocery_expected

    catalog = load_catalog("grocery-store", data_dir=grocery_root / "grocery-store", splits=("val",))
    assert len(catalog) == grocery_expected(grocery_root).counts["val"] and catalog.splits == ("val",)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SHELFSIGHT_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_catalog("grocery-store", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "grocery-store" / "dataset") in message
    assert "git clone" in message and "SHELFSIGHT_DATA_DIR" in message


def test_malformed_grocery_listing_names_file_and_line(grocery_root: Path, tmp_path: Path) -> None:
    source = grocery_root / "grocery-store" / "dataset"
    target = tmp_path / "grocery-store" / "dataset"
    target.mkdir(parents=True)
    (target / "classes.csv").write_bytes((source / "classes.csv").read_bytes())
    (target / "train.txt").write_text("train/Fruit/Apple/a.jpg, 0, 0\ntrain/Fruit/Apple/b.jpg, zero, 0\n")
    with pytest.raises(CatalogError, match=r"train\.txt, line 2"):
        load_catalog("grocery-store", data_dir=tmp_path, splits=("train",))


# ---------------------------------------------------------------- Fashion-MNIST


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_user_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    catalog = load_catalog("fashion-mnist", data_dir=tmp_path / "data")
    assert {s: len(catalog.select_splits(s)) for s in catalog.splits} == {"train": 12, "test": 5}
    item = catalog.select_splits("test").items[3]
    assert item.item_id == "test/00003" and item.label == CLASSES[3]
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(item.image_path))
    expected = read_idx(folder / "t10k-images-idx3-ubyte.gz")[3]
    assert (pixels == expected).all()


def test_fashion_mnist_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(CatalogError, match="truncated IDX"):
        read_idx(path)


def test_fashion_mnist_debian_package_subset() -> None:
    from conftest import FASHION_DEBIAN

    if not (FASHION_DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    labels = read_idx(FASHION_DEBIAN / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    catalog = load_catalog("fashion-mnist", splits=("test",))
    assert len(catalog) == 10_000
    assert catalog.items[0].label == "Ankle boot"  # the first test image is an ankle boot (label 9)
