"""Stanford Online Products (Oh Song, Xiang, Jegelka, Savarese, CVPR 2016): eBay photos of products.

The official zip unpacks to ``Stanford_Online_Products/`` holding ``Ebay_train.txt`` and
``Ebay_test.txt``: a header ``image_id class_id super_class_id path`` and one space-separated row
per image (``1 1 1 bicycle_final/111085122871_0.JPG``), images under ``<category>_final/``.
``class_id`` is the product (11,318 in train and 11,316 in test, disjoint), ``super_class_id``
the category (12); the category name is the image folder without ``_final``.

Items: ``label`` = category (classification), ``product_id`` = ``class_id`` (retrieval:
leave-one-out over the test products, as in the metric-learning literature).
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
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol, TrainingItems

NAME = "stanford-online-products"
TITLE = "Stanford Online Products"
SPLITS = ("train", "test")
HEADER = ("image_id", "class_id", "super_class_id", "path")
FOLDERS = ("stanford-online-products", "Stanford_Online_Products", "stanford-online-products/Stanford_Online_Products",
           "sop", "")
HOMEPAGE = "https://cvgl.stanford.edu/projects/lifted_struct/"
HOW_TO_GET = (
    f"Download Stanford_Online_Products.zip from {HOMEPAGE} (mirror: "
    "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip) and unzip it inside your data root "
    "(DATA_ROOT/Stanford_Online_Products/Ebay_train.txt)."
)
EXPECTED_COUNTS = {"train": 59_551, "test": 60_502}


def find_root(data_dir: Path | None) -> Path | None:
    return first_root(data_dir, FOLDERS, lambda p: any((p / f"Ebay_{s}.txt").is_file() for s in SPLITS))


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default both), read from the Ebay_*.txt listings."""
    root = find_root(data_dir)
    if root is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    items: list[CatalogItem] = []
    for split in wanted_splits(TITLE, splits, SPLITS):
        items.extend(_read_listing(root, split))
    return Catalog(name=NAME, root=root, items=tuple(items), description=f"{TITLE}: products in 12 categories")


def _read_listing(root: Path, split: str) -> list[CatalogItem]:
    listing = require_file(root / f"Ebay_{split}.txt", HOW_TO_GET)
    lines = numbered_lines(listing)
    first = next(lines, None)
    if first is None or tuple(first[1].split()) != HEADER:
        raise malformed(listing, first[0] if first else 1, f"the header {' '.join(HEADER)!r}",
                        first[1] if first else "")
    items = []
    for number, text in lines:
        fields = text.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]) or "/" not in fields[3]:
            raise malformed(listing, number, "'image_id class_id super_class_id <category>_final/<file>'", text)
        rel_path = fields[3]
        category = rel_path.split("/", 1)[0].removesuffix("_final")
        items.append(CatalogItem(item_id=rel_path, image_path=root / rel_path, label=category, split=split,
                                 product_id=fields[1]))
    return items


PROTOCOLS = (
    RetrievalProtocol("product", ("test",), ("test",), "product_id",
                      "leave-one-out over the test split; relevant = same product (11,316 products)",
                      train=TrainingItems(("train",))),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))  # the 12 categories


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="Stanford Online Products: 120,053 eBay photos of 22,634 products in 12 categories",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, homepage=HOMEPAGE, how_to_get=HOW_TO_GET,
    licence="non-commercial research (photos from eBay listings)",
    citation="Oh Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature Embedding. "
             "CVPR 2016.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
