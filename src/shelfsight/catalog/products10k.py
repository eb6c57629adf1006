"""Products-10K (Bai, Chen, Yu, Wang, Zhang, 2020): SKU-level photos of about 10,000 JD.com products.

The official release has ``train.csv`` (``name,class,group``: file name in ``train/``, SKU id,
product group id) and ``test_kaggletest.csv`` (``name,class,Usage``: file name in ``test/``, SKU
id, the Kaggle leaderboard part); a copy named ``test.csv`` is read too. The test file carries no
group, so it is looked up from the SKU's training rows.

Items: ``label`` = ``product_id`` = the SKU (classification and retrieval: test photos query the
training photos, relevant = same SKU); ``coarse_label`` = the group.
"""

from __future__ import annotations

import csv
from pathlib import Path

from shelfsight.catalog.public import DatasetEntry, first_root, malformed, not_found, require_file, wanted_splits
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

NAME = "products-10k"
TITLE = "Products-10K"
SPLITS = ("train", "test")
TRAIN_CSV = "train.csv"
TEST_CSVS = ("test_kaggletest.csv", "test.csv")
REQUIRED = {"train": ("name", "class", "group"), "test": ("name", "class")}
FOLDERS = ("products-10k", "products10k", "Products10K", "Product10K", "Products-10K", "")
HOMEPAGE = "https://products-10k.github.io/"
HOW_TO_GET = (
    f"Download train.zip, test.zip, train.csv and test_kaggletest.csv from {HOMEPAGE} and unpack them into "
    "DATA_ROOT/products-10k/ (train/, test/ and the two CSV files side by side)."
)
EXPECTED_COUNTS = {"train": 141_931, "test": 55_376}


def find_root(data_dir: Path | None) -> Path | None:
    """The folder whose train.csv (or test CSV) starts with the official header."""
    return first_root(data_dir, FOLDERS, lambda p: _has_header(p / TRAIN_CSV) or _has_header(_test_csv(p)))


def _has_header(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        return handle.readline().startswith("name,class")


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default both), from the two CSV files."""
    root = find_root(data_dir)
    if root is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    wanted = wanted_splits(TITLE, splits, SPLITS)
    train_csv = root / TRAIN_CSV  # read for the test split too: it holds the groups
    needed = "train" in wanted or train_csv.is_file()
    train_rows = _read_csv(require_file(train_csv, HOW_TO_GET), "train") if needed else []
    group_of = {row["class"]: row["group"] for row in train_rows}
    items = [_item(root, "train", row, row["group"]) for row in train_rows] if "train" in wanted else []
    if "test" in wanted:
        for row in _read_csv(require_file(_test_csv(root), HOW_TO_GET), "test"):
            items.append(_item(root, "test", row, row.get("group") or group_of.get(row["class"])))
    return Catalog(name=NAME, root=root, items=tuple(items), description=f"{TITLE}: SKU-level product photos")


def _test_csv(root: Path) -> Path:
    return next((root / name for name in TEST_CSVS if (root / name).is_file()), root / TEST_CSVS[0])


def _item(root: Path, split: str, row: dict[str, str], group: str | None) -> CatalogItem:
    return CatalogItem(item_id=f"{split}/{row['name']}", image_path=root / split / row["name"], label=row["class"],
                       split=split, product_id=row["class"], coarse_label=group)


def _read_csv(path: Path, split: str) -> list[dict[str, str]]:
    """Rows with the required columns, each checked: a file name and integer class (and group)."""
    required = REQUIRED[split]
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        if any(column not in header for column in required):
            raise malformed(path, 1, f"a header with the columns {','.join(required)}", ",".join(header))
        position = {column: header.index(column) for column in header}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            values = {column: row[i].strip() for column, i in position.items() if i < len(row)}
            if len(row) != len(header) or not values["name"] or not all(values[c].isdigit() for c in required[1:]):
                raise malformed(path, reader.line_num, f"{len(header)} columns '{','.join(header)}' with integer "
                                f"{' and '.join(required[1:])}", ",".join(row))
            rows.append(values)
    return rows


PROTOCOLS = (
    RetrievalProtocol("sku", ("test",), ("train",), "product_id",
                      "test photos query the training photos; relevant = same SKU"),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))  # SKUs


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="Products-10K: about 190,000 photos of about 10,000 JD.com SKUs, with product groups",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, counts_verified=False, homepage=HOMEPAGE,
    how_to_get=HOW_TO_GET, licence="non-commercial research only (see the dataset page)",
    citation="Bai, Chen, Yu, Wang, Zhang. Products-10K: A Large-scale Product Recognition Dataset. "
             "arXiv:2008.10545, 2020.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
