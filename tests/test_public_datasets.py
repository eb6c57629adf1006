"""The six public datasets of the paper, read from small replicas of their official on-disk layouts.

Each replica has a few generated images per class and the metadata files in their exact official
formats (Cars196's .mat written with scipy.io.savemat). The tests check labels, splits, protocols,
what `shelfsight datasets check` reports, and the errors for a missing file and a malformed line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from typer.testing import CliRunner

from conftest import gradient
from shelfsight.catalog import DATASETS, classification_for, load_catalog, protocols_for
from shelfsight.catalog.check import check_dataset
from shelfsight.cli import app
from shelfsight.errors import CatalogError, DatasetNotFoundError

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient(24, 16, seed=seed).save(path, quality=85)


# ---------------------------------------------------------------- replicas of the official layouts

SOP_ROWS = {  # split -> (class_id, super_class_id, path), as in Ebay_{split}.txt
    "train": [(1, 1, "bicycle_final/111085122871_0.JPG"), (1, 1, "bicycle_final/111085122871_1.JPG"),
              (2, 2, "chair_final/111265328556_0.JPG"), (2, 2, "chair_final/111265328556_1.JPG")],
    "test": [(11319, 1, "bicycle_final/251227185592_0.JPG"), (11319, 1, "bicycle_final/251227185592_1.JPG"),
             (11320, 1, "bicycle_final/251227185593_0.JPG"), (11320, 1, "bicycle_final/251227185593_1.JPG"),
             (11321, 2, "chair_final/261414391023_0.JPG"), (11321, 2, "chair_final/261414391023_1.JPG"),
             (11321, 2, "chair_final/261414391023_2.JPG")],
}


def make_sop(data_root: Path) -> Path:
    root = data_root / "Stanford_Online_Products"
    image_id = 0
    for split, rows in SOP_ROWS.items():
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, rel in rows:
            image_id += 1
            lines.append(f"{image_id} {class_id} {super_id} {rel}")
            _jpeg(root / rel, image_id)
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


CAR_IMAGES = [(1, 0), (1, 0), (1, 1), (2, 0), (2, 1), (99, 0), (99, 1), (99, 1), (100, 0), (196, 1)]
"""(official class, test flag) per image: classes 1-2 belong to the metric-learning train half, 99+ to its test half."""
CAR_NAMES = [f"Make{i} Model{i} {2000 + i % 13}" for i in range(1, 197)]
CAR_NAMES[0], CAR_NAMES[98] = "AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"


def make_cars_car_ims(data_root: Path) -> Path:
    """The car_ims.tgz + cars_annos.mat release."""
    root = data_root / "cars196"
    records = []
    for index, (cls, test) in enumerate(CAR_IMAGES, start=1):
        rel = f"car_ims/{index:06d}.jpg"
        _jpeg(root / rel, index)
        records.append((rel, 10, 12, 200, 150, cls, test))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.array(records, dtype=[(f, object) for f in fields]).reshape(1, -1)
    class_names = np.array(CAR_NAMES, dtype=object).reshape(1, -1)
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def make_cars_devkit(data_root: Path) -> Path:
    """torchvision's stanford_cars/ folder: devkit .mat files, cars_train/ and cars_test/."""
    root = data_root / "stanford_cars"
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    per_split: dict[int, list[tuple[object, ...]]] = {0: [], 1: []}
    for index, (cls, test) in enumerate(CAR_IMAGES, start=1):
        fname = f"{len(per_split[test]) + 1:05d}.jpg"
        _jpeg(root / ("cars_test" if test else "cars_train") / fname, index)
        per_split[test].append((10, 12, 200, 150, cls, fname))
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for test, path in ((0, root / "devkit" / "cars_train_annos.mat"), (1, root / "cars_test_annos_withlabels.mat")):
        records = np.array(per_split[test], dtype=[(f, object) for f in fields]).reshape(1, -1)
        savemat(path, {"annotations": records})
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(CAR_NAMES, dtype=object).reshape(1, -1)})
    return root


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/WOMEN/Skirts/id_00000100/01_1_front.jpg", "id_00000100", "query"),
    ("img/WOMEN/Skirts/id_00000100/01_2_side.jpg", "id_00000100", "gallery"),
    ("img/WOMEN/Skirts/id_00000100/01_3_back.jpg", "id_00000100", "gallery"),
    ("img/MEN/Denim/id_00000123/01_1_front.jpg", "id_00000123", "query"),
    ("img/MEN/Denim/id_00000123/01_2_side.jpg", "id_00000123", "gallery"),
]


def make_inshop(data_root: Path, *, images_in_img_folder: bool = False) -> Path:
    root = data_root / "In-shop Clothes Retrieval Benchmark"
    base = root / "Img" if images_in_img_folder else root
    lines = [str(len(INSHOP_ROWS)), "image_name item_id evaluation_status"]
    for index, (image_name, item_id, status) in enumerate(INSHOP_ROWS):
        lines.append(f"{image_name:<60}{item_id:<20}{status}")  # the official file pads with spaces
        _jpeg(base / image_name, index)
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def make_products10k(data_root: Path) -> Path:
    root = data_root / "products-10k"
    train = [("0.jpg", 0, 0), ("1.jpg", 0, 0), ("2.jpg", 1, 0), ("3.jpg", 2, 5), ("4.jpg", 2, 5)]
    test = [("a1.jpg", 0, "Public"), ("a2.jpg", 2, "Private"), ("a3.jpg", 2, "Public")]
    for index, (name, _, _) in enumerate(train):
        _jpeg(root / "train" / name, index)
    for index, (name, _, _) in enumerate(test):
        _jpeg(root / "test" / name, 100 + index)
    (root / "train.csv").write_text("name,class,group\n" + "".join(f"{n},{c},{g}\n" for n, c, g in train))
    (root / "test_kaggletest.csv").write_text("name,class,Usage\n" + "".join(f"{n},{c},{u}\n" for n, c, u in test))
    return root


RP2K_PRODUCTS = ("500ml农夫山泉", "coca-cola-330ml", "oreo-original")


def make_rp2k(data_root: Path) -> Path:
    root = data_root / "rp2k"
    for p_index, product in enumerate(RP2K_PRODUCTS):
        for split, count in (("train", 3), ("test", 1)):
            for k in range(count):
                _jpeg(root / "all" / split / product / f"{product}_{k}.jpg", 10 * p_index + k)
    (root / "all" / "train" / RP2K_PRODUCTS[0] / ".DS_Store").write_bytes(b"\0")
    return root


FOOD_CLASSES = ("apple_pie", "baby_back_ribs", "baklava")


def make_food101(data_root: Path) -> Path:
    root = data_root / "food-101"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    (root / "meta" / "labels.txt").write_text("Apple pie\nBaby back ribs\nBaklava\n")
    listings: dict[str, list[str]] = {"train": [], "test": []}
    for c_index, name in enumerate(FOOD_CLASSES):
        for k in range(4):
            image_id = 1000 * (c_index + 1) + k
            listings["train" if k < 3 else "test"].append(f"{name}/{image_id}")
            _jpeg(root / "images" / name / f"{image_id}.jpg", image_id)
    for split, lines in listings.items():
        (root / "meta" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


REPLICAS = {
    "stanford-online-products": (make_sop, {"train": 4, "test": 7}),
    "cars196": (make_cars_car_ims, {"train": 5, "test": 5}),
    "deepfashion-inshop": (make_inshop, {"train": 3, "query": 2, "gallery": 3}),
    "products-10k": (make_products10k, {"train": 5, "test": 3}),
    "rp2k": (make_rp2k, {"train": 9, "test": 3}),
    "food-101": (make_food101, {"train": 9, "test": 3}),
}


# ---------------------------------------------------------------- every dataset

@pytest.mark.parametrize("name", list(REPLICAS))
def test_each_replica_loads_by_name_with_its_official_splits(name: str, tmp_path: Path) -> None:
    make, counts = REPLICAS[name]
    root = make(tmp_path)
    entry = DATASETS[name]
    assert entry.locate is not None and entry.locate(tmp_path) == root
    assert set(entry.expected_counts) == set(entry.splits) and entry.homepage.startswith("https://")
    catalog = load_catalog(name, data_dir=tmp_path)
    assert catalog.splits == entry.splits
    assert {s: len(catalog.select_splits(s)) for s in catalog.splits} == counts
    assert all(item.image_path.is_file() for item in catalog)
    first_split = entry.splits[0]
    assert load_catalog(name, data_dir=tmp_path, splits=(first_split,)).splits == (first_split,)
    with pytest.raises(CatalogError, match="there is no split 'validation'"):
        load_catalog(name, data_dir=tmp_path, splits=("validation",))
    assert protocols_for(name, catalog) and classification_for(name, catalog) is not None


@pytest.mark.parametrize("name", list(REPLICAS))
def test_absent_dataset_says_where_it_looked_and_how_to_get_it(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=f"not found.*looked in: {re.escape(str(tmp_path))}") as error:
        load_catalog(name, data_dir=tmp_path)
    assert DATASETS[name].homepage.split("/")[2] in str(error.value)
    assert DATASETS[name].locate(tmp_path) is None  # type: ignore[misc]


# ---------------------------------------------------------------- per dataset: labels, products, protocols

def test_sop_category_labels_product_ids_and_leave_one_out_by_product(tmp_path: Path) -> None:
    root = make_sop(tmp_path)
    catalog = load_catalog("stanford-online-products", data_dir=tmp_path)
    item = catalog.items[0]
    assert (item.item_id, item.label, item.product_id, item.split) == (
        "bicycle_final/111085122871_0.JPG", "bicycle", "1", "train")
    assert item.image_path == root / "bicycle_final" / "111085122871_0.JPG"
    test = catalog.select_splits("test")
    assert sorted({i.product_id for i in test}) == ["11319", "11320", "11321"]
    assert {i.label for i in test} == {"bicycle", "chair"}
    [protocol] = protocols_for("stanford-online-products", catalog)
    assert protocol.leave_one_out and protocol.query_splits == ("test",) and protocol.relevance == "product_id"
    assert classification_for("stanford-online-products", catalog).test == ("test",)  # type: ignore[union-attr]


@pytest.mark.parametrize("make", [make_cars_car_ims, make_cars_devkit], ids=["car_ims", "devkit"])
def test_cars196_official_split_for_classification_classes_99_to_196_for_retrieval(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    catalog = load_catalog("cars196", data_dir=tmp_path)
    by_split = {s: sorted(int(i.product_id or 0) for i in catalog.select_splits(s)) for s in ("train", "test")}
    assert by_split == {"train": [1, 1, 2, 99, 100], "test": [1, 2, 99, 99, 196]}  # from the `test` flags
    labels = {i.product_id: i.label for i in catalog}
    assert labels["1"] == "AM General Hummer SUV 2000" and labels["99"] == "Ram C/V Cargo Van Minivan 2012"
    assert labels["196"] == CAR_NAMES[195]
    [protocol] = protocols_for("cars196", catalog)
    members = [i for i in catalog if protocol.takes_part(i)]
    assert sorted(int(i.product_id or 0) for i in members) == [99, 99, 99, 100, 196]  # both official splits
    assert protocol.leave_one_out and set(protocol.query_splits) == {"train", "test"}
    splits = classification_for("cars196", catalog)
    assert splits is not None and (splits.train, splits.test) == (("train",), ("test",))


def test_cars196_annotation_without_a_field_names_the_file_and_field(tmp_path: Path) -> None:
    root = tmp_path / "cars196"
    root.mkdir()
    records = np.array([("car_ims/000001.jpg", 1)], dtype=[("relative_im_path", object), ("class", object)])
    savemat(root / "cars_annos.mat", {"annotations": records.reshape(1, -1),
                                      "class_names": np.array(CAR_NAMES, dtype=object).reshape(1, -1)})
    with pytest.raises(CatalogError, match=r"cars_annos\.mat: 'annotations' needs the field 'test'"):
        load_catalog("cars196", data_dir=tmp_path)


@pytest.mark.parametrize("in_img_folder", [False, True], ids=["img-at-root", "Img-img"])
def test_inshop_item_ids_category_from_path_and_query_gallery(in_img_folder: bool, tmp_path: Path) -> None:
    root = make_inshop(tmp_path, images_in_img_folder=in_img_folder)
    catalog = load_catalog("deepfashion-inshop", data_dir=tmp_path)
    first = catalog.items[0]
    assert (first.label, first.coarse_label, first.product_id) == ("WOMEN/Dresses", "WOMEN", "id_00000002")
    assert first.image_path == (root / "Img" if in_img_folder else root) / INSHOP_ROWS[0][0]
    assert {i.product_id for i in catalog.select_splits("query")} == {"id_00000100", "id_00000123"}
    [protocol] = protocols_for("deepfashion-inshop", catalog)
    assert (protocol.query_splits, protocol.gallery_splits, protocol.relevance) == (
        ("query",), ("gallery",), "product_id")
    assert classification_for("deepfashion-inshop", catalog).test == ("query", "gallery")  # type: ignore[union-attr]


def test_products10k_sku_labels_and_groups_looked_up_for_test(tmp_path: Path) -> None:
    root = make_products10k(tmp_path)
    catalog = load_catalog("products-10k", data_dir=tmp_path)
    test = {i.item_id: i for i in catalog.select_splits("test")}
    assert test["test/a2.jpg"].label == "2" and test["test/a2.jpg"].coarse_label == "5"  # group from train.csv
    assert test["test/a1.jpg"].image_path == root / "test" / "a1.jpg"
    assert test["test/a1.jpg"].product_id == "0"
    [protocol] = protocols_for("products-10k", catalog)
    assert (protocol.query_splits, protocol.gallery_splits, protocol.relevance) == (("test",), ("train",), "product_id")


def test_rp2k_one_class_per_product_folder(tmp_path: Path) -> None:
    make_rp2k(tmp_path)
    catalog = load_catalog("rp2k", data_dir=tmp_path)
    assert catalog.classes == tuple(sorted(RP2K_PRODUCTS))
    assert all(i.product_id == i.label for i in catalog)
    assert catalog.select_splits("test").items[0].item_id == f"test/{RP2K_PRODUCTS[0]}/{RP2K_PRODUCTS[0]}_0.jpg"
    assert dict(catalog.ignored) == {f"train/{RP2K_PRODUCTS[0]}/.DS_Store": "hidden file"}


def test_food101_classes_and_official_split(tmp_path: Path) -> None:
    root = make_food101(tmp_path)
    catalog = load_catalog("food-101", data_dir=tmp_path)
    item = catalog.select_splits("test").items[0]
    assert (item.item_id, item.label, item.product_id) == ("apple_pie/1003", "apple_pie", None)
    assert item.image_path == root / "images" / "apple_pie" / "1003.jpg"
    assert catalog.classes == FOOD_CLASSES


# ---------------------------------------------------------------- errors: missing file, malformed line

@pytest.mark.parametrize(("name", "listing", "line", "bad"), [
    ("stanford-online-products", "Stanford_Online_Products/Ebay_test.txt", 3, "3 11319 bicycle_final/x.JPG"),
    ("deepfashion-inshop", "In-shop Clothes Retrieval Benchmark/Eval/list_eval_partition.txt", 4,
     "img/WOMEN/Dresses/id_00000002/02_2_side.jpg id_00000002 validation"),
    ("products-10k", "products-10k/train.csv", 3, "1.jpg,zero,0"),
    ("food-101", "food-101/meta/train.txt", 2, "apple-pie/1001"),
])
def test_malformed_line_names_the_file_and_the_line(name: str, listing: str, line: int, bad: str,
                                                     tmp_path: Path) -> None:
    REPLICAS[name][0](tmp_path)
    path = tmp_path / listing
    lines = path.read_text().splitlines()
    lines[line - 1] = bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CatalogError, match=f"{path.name}, line {line}: expected"):
        load_catalog(name, data_dir=tmp_path)
    report = check_dataset(name, data_dir=tmp_path, decode=False)
    assert not report.ok and any(f"{path}, line {line}" in e for e in report.errors)


def test_missing_metadata_file_is_named(tmp_path: Path) -> None:
    root = make_sop(tmp_path)
    (root / "Ebay_test.txt").unlink()
    assert load_catalog("stanford-online-products", data_dir=tmp_path, splits=("train",)).splits == ("train",)
    with pytest.raises(DatasetNotFoundError, match=r"Ebay_test\.txt: missing; the download looks incomplete"):
        load_catalog("stanford-online-products", data_dir=tmp_path)
    report = check_dataset("stanford-online-products", data_dir=tmp_path)
    assert [(s.split, s.images) for s in report.splits] == [("train", 4), ("test", 0)]
    assert any("Ebay_test.txt: missing" in e for e in report.errors) and not report.ok


def test_inshop_count_line_must_match_the_rows(tmp_path: Path) -> None:
    root = make_inshop(tmp_path)
    path = root / "Eval" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace(str(len(INSHOP_ROWS)), "52712", 1))
    with pytest.raises(CatalogError, match="line 1 declares 52712 images but the file lists 8"):
        load_catalog("deepfashion-inshop", data_dir=tmp_path)


# ---------------------------------------------------------------- datasets check

def test_check_reports_counts_against_the_official_release_and_exits_1(tmp_path: Path) -> None:
    make_food101(tmp_path)
    result = runner.invoke(app, ["datasets", "check", "food-101", "--data-dir", str(tmp_path)], env=WIDE)
    assert result.exit_code == 1, result.output
    train_row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("train"))
    cells = [c.strip() for c in train_row.split("│") if c.strip()]
    assert cells[:5] == ["train", "9", "75,750", "3", "-"] and cells[5] == "differs"
    assert "split 'train' has 9 images, the official release 75,750" in result.output
    assert "protocol dish: 3 queries, against 9 gallery items" in result.output


def test_check_finds_missing_and_unreadable_images(tmp_path: Path) -> None:
    root = make_sop(tmp_path)
    (root / "chair_final" / "261414391023_2.JPG").unlink()
    broken = root / "bicycle_final" / "251227185592_0.JPG"
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    report = check_dataset("stanford-online-products", data_dir=tmp_path, expected={"train": 4, "test": 7})
    assert [(s.split, s.images, s.labels, s.products, s.matches) for s in report.splits] == [
        ("train", 4, 2, 2, True), ("test", 7, 2, 3, True)]
    assert report.missing == (str(root / "chair_final" / "261414391023_2.JPG"),)
    [(path, reason)] = report.unreadable
    assert path == str(broken) and "truncated" in reason
    assert not report.ok and len(report.problems()) == 2
    presence_only = check_dataset("stanford-online-products", data_dir=tmp_path, decode=False,
                                  expected={"train": 4, "test": 7})
    assert presence_only.unreadable == () and len(presence_only.missing) == 1


def test_check_passes_a_complete_copy_and_reports_protocol_sizes(tmp_path: Path) -> None:
    make_cars_car_ims(tmp_path)
    report = check_dataset("cars196", data_dir=tmp_path, expected={"train": 5, "test": 5}, workers=2)
    assert report.ok and report.problems() == []
    [size] = report.protocols
    assert (size.name, size.queries, size.gallery, size.leave_one_out) == ("metric-learning", 5, 5, True)


def test_unconfirmed_official_counts_warn_instead_of_failing(tmp_path: Path) -> None:
    make_rp2k(tmp_path)
    report = check_dataset("rp2k", data_dir=tmp_path)
    assert not DATASETS["rp2k"].counts_verified
    assert report.ok and report.count_mismatches and "not confirmed" in report.warnings()[0]


def test_datasets_lists_presence_and_how_to_get_each(tmp_path: Path) -> None:
    make_food101(tmp_path)
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "yes" in rows["food-101"] and "101,000" in rows["food-101"]
    assert "no" in rows["cars196"].split("│")[2]
    assert "cars196: Get car_ims.tgz and cars_annos.mat" in result.output
    listed = runner.invoke(app, ["datasets", "list", "--data-dir", str(tmp_path)], env=WIDE)
    assert listed.exit_code == 0 and listed.output == result.output


# ---------------------------------------------------------------- Hugging Face datasets

def test_hugging_face_dataset_saved_to_disk_offline(tmp_path: Path) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    pictures = [gradient(20, 12, seed=s) for s in range(5)]
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=["apple_pie", "baklava"]),
                         "sku": Value("string")})
    rows = {"img": pictures, "fine_label": [0, 1, 1, 0, 1], "sku": ["a", "b", "b", "c", "d"]}
    data = Dataset.from_dict(rows, features=features)
    DatasetDict(train=data.select([0, 1, 2]), validation=data.select([3]), test=data.select([4])).save_to_disk(
        tmp_path / "saved")
    source = f"hf:{tmp_path / 'saved'}?product=sku"
    catalog = load_catalog(source, cache_dir=tmp_path / "cache")
    assert catalog.splits == ("train", "val", "test")
    assert [(i.item_id, i.label, i.product_id) for i in catalog] == [
        ("train/0", "apple_pie", "a"), ("train/1", "baklava", "b"), ("train/2", "baklava", "b"),
        ("val/0", "apple_pie", "c"), ("test/0", "baklava", "d")]
    for item, picture in zip(catalog, [pictures[i] for i in (0, 1, 2, 3, 4)], strict=True):
        assert item.image_path.is_file() and item.image_path.suffix == ".png"
        assert np.array_equal(np.asarray(Image.open(item.image_path).convert("RGB")), np.asarray(picture))
    stamp = catalog.items[0].image_path.stat().st_mtime_ns
    again = load_catalog(source, cache_dir=tmp_path / "cache", splits=("test",))
    assert again.splits == ("test",)
    assert load_catalog(source, cache_dir=tmp_path / "cache").items[0].image_path.stat().st_mtime_ns == stamp
    [protocol] = protocols_for(source, catalog)
    assert (protocol.query_splits, protocol.gallery_splits, protocol.relevance) == (("test",), ("train",), "product_id")
    assert classification_for(source, catalog).val == ("val",)  # type: ignore[union-attr]
    as_food = f"hf:{tmp_path / 'saved'}?protocol=food-101"
    assert protocols_for(as_food, catalog)[0].name == "dish"
    assert load_catalog(source, cache_dir=tmp_path / "cache", splits=("val",)).splits == ("val",)
    with pytest.raises(CatalogError, match="no split 'dev'; the dataset has splits train, validation, test"):
        load_catalog(source, cache_dir=tmp_path / "cache", splits=("dev",))
    with pytest.raises(CatalogError, match="unknown option 'lable'"):
        load_catalog(f"hf:{tmp_path / 'saved'}?lable=fine_label")
    with pytest.raises(CatalogError, match="no column 'fine' \\(label\\)"):
        load_catalog(f"hf:{tmp_path / 'saved'}?label=fine", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError, match="not a local folder, and the Hugging Face hub could not"):
        load_catalog("hf:nobody/no-such-dataset-shelfsight", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- the bench names a dataset in one line

def test_bench_config_names_a_public_dataset(tmp_path: Path) -> None:
    from shelfsight.bench import load_config, read_table, run_bench
    from shelfsight.bench.results import ResultStore

    make_cars_car_ims(tmp_path / "data")
    config = load_config({
        "name": "cars", "models": [{"name": "timm:test_resnet.r160_in1k", "pretrained": False,
                                    "preprocess": {"input_size": 32}}],
        "datasets": ["cars196"], "data_dir": str(tmp_path / "data"), "index": {"backend": "exact"},
        "retrieval": {"k": 10}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
    })
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == [] and len(summary.computed) == 1
    [result] = ResultStore(tmp_path / "run").load_all()
    details = result.details["metric-learning"]
    assert (details["queries"], details["gallery"], details["leave_one_out"]) == (5, 5, True)
    table = read_table(tmp_path / "run")
    assert set(table["protocol"]) == {"metric-learning", "cost"}
    assert set(table["dataset"]) == {"cars196"}
