"""Food-101 (Bossard, Guillaumin, Van Gool, ECCV 2014): 101,000 photos of 101 dishes.

``food-101/meta/classes.txt`` lists the 101 class names (``apple_pie``), ``meta/train.txt`` and
``meta/test.txt`` one image per line as ``<class>/<image id>`` without extension (750 train and
250 test images per class), and the images are ``images/<class>/<image id>.jpg``.

Items: ``label`` = the class (classification: the official train/test split; retrieval: test
photos query the training photos, relevant = same dish). There is no product identity.
"""

from __future__ import annotations

from pathlib import Path

from shelfsight.catalog.public import (
    DatasetEntry,
    first_root,
    malformed,
    not_found,
    numbered_lines,
    require_file,
    wanted_splits,
)
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

NAME = "food-101"
TITLE = "Food-101"
SPLITS = ("train", "test")
FOLDERS = ("food-101", "food-101/food-101", "food101", "Food-101", "")
HOMEPAGE = "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"
HOW_TO_GET = (
    f"Download food-101.tar.gz from {HOMEPAGE} and unpack it inside your data root "
    "(DATA_ROOT/food-101/meta/train.txt, DATA_ROOT/food-101/images/)."
)
EXPECTED_COUNTS = {"train": 75_750, "test": 25_250}


def find_root(data_dir: Path | None) -> Path | None:
    return first_root(data_dir, FOLDERS, lambda p: (p / "meta" / "classes.txt").is_file())


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default both), from the meta/ listings."""
    root = find_root(data_dir)
    if root is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    classes = {text.strip() for _, text in numbered_lines(root / "meta" / "classes.txt")}
    items: list[CatalogItem] = []
    for split in wanted_splits(TITLE, splits, SPLITS):
        listing = require_file(root / "meta" / f"{split}.txt", HOW_TO_GET)
        for number, text in numbered_lines(listing):
            entry = text.strip()
            label, _, image_id = entry.partition("/")
            if not image_id or "/" in image_id or label not in classes:
                raise malformed(listing, number, "'<class>/<image id>' with a class from meta/classes.txt", text)
            items.append(CatalogItem(item_id=entry, image_path=root / "images" / f"{entry}.jpg", label=label,
                                     split=split))
    return Catalog(name=NAME, root=root, items=tuple(items), description=f"{TITLE}: 101 dishes")


PROTOCOLS = (
    RetrievalProtocol("dish", ("test",), ("train",), "label",
                      "test photos query the training photos; relevant = same dish (101)"),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))  # 101 dishes


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="Food-101: 101,000 photos of 101 dishes (750 train / 250 test per class)",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, homepage=HOMEPAGE, how_to_get=HOW_TO_GET,
    licence="research use; images from foodspotting.com under its terms of use",
    citation="Bossard, Guillaumin, Van Gool. Food-101 - Mining Discriminative Components with Random Forests. "
             "ECCV 2014.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
