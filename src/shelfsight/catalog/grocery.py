"""The Grocery Store Dataset (Klasson, Zhang, Kjellström, WACV 2019).

Shop photos in ``dataset/{train,val,test}/Coarse/Fine/*.jpg``, listed in ``dataset/{split}.txt``
as ``path, fine_class_id, coarse_class_id``; ``dataset/classes.csv`` names the 81 fine and 43
coarse classes and points at one iconic catalogue image per fine class (split ``iconic``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError, DatasetNotFoundError
from shelfsight.paths import describe_data_dir
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

NAME = "grocery-store"
SPLITS = ("train", "val", "test")
ICONIC_SPLIT = "iconic"
HOW_TO_GET = (
    "Get it with `git clone https://github.com/marcusklasson/GroceryStoreDataset grocery-store` inside your "
    "data root, then set SHELFSIGHT_DATA_DIR (or --data-dir) to that data root."
)


def find_root(data_dir: Path | None, explicit: str | None = None) -> Path:
    """The ``dataset/`` folder: accepts the data root, ``grocery-store/`` or ``dataset/`` itself."""
    candidates = []
    if data_dir is not None:
        candidates = [data_dir / NAME / "dataset", data_dir / "GroceryStoreDataset" / "dataset",
                      data_dir / "dataset", data_dir]
    for candidate in candidates:
        if (candidate / "classes.csv").is_file() and (candidate / "train.txt").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise DatasetNotFoundError(
        f"Grocery Store Dataset not found (data root: {describe_data_dir(explicit)}; looked in: {looked}). "
        + HOW_TO_GET
    )


def load_grocery_store(
    data_dir: Path | None, *, splits: tuple[str, ...] | None = None, include_iconic: bool = True,
    explicit: str | None = None,
) -> Catalog:
    """Items of the requested splits (default all three) plus the iconic images when asked."""
    root = find_root(data_dir, explicit)
    classes, by_id = _read_classes(root / "classes.csv")
    wanted = splits or (*SPLITS, ICONIC_SPLIT)
    items: list[CatalogItem] = []
    for split in SPLITS:
        if split in wanted:
            items.extend(_read_split(root, split, classes, by_id))
    if include_iconic and ICONIC_SPLIT in wanted:
        for fine_name, (coarse_name, iconic) in sorted(classes.items(), key=lambda kv: kv[1][1]):
            items.append(CatalogItem(
                item_id=f"{ICONIC_SPLIT}/{fine_name}", image_path=root / iconic.lstrip("/"),
                label=fine_name, split=ICONIC_SPLIT, coarse_label=coarse_name,
            ))
    return Catalog(name=NAME, root=root, items=tuple(items),
                   description="Grocery Store Dataset: shop photos and iconic catalogue images, 81 fine classes")


_Classes = dict[str, tuple[str, str]]


def _read_classes(path: Path) -> tuple[_Classes, dict[int, str]]:
    """fine class name -> (coarse class name, iconic image path), and fine class id -> name."""
    classes: _Classes = {}
    by_id: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 5:
                raise CatalogError(f"{path}, line {line_number}: expected at least 5 columns, got {len(row)}")
            fine_name, fine_id, coarse_name, _coarse_id, iconic = (c.strip() for c in row[:5])
            classes[fine_name] = (coarse_name, iconic)
            by_id[int(fine_id)] = fine_name
    return classes, by_id


def _read_split(root: Path, split: str, classes: _Classes, by_id: dict[int, str]) -> list[CatalogItem]:
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise DatasetNotFoundError(f"{listing}: split listing missing; the download looks incomplete. " + HOW_TO_GET)
    items = []
    with open(listing, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            try:
                rel, fine_id = parts[0], int(parts[1])
                fine_name = by_id[fine_id]
            except (IndexError, ValueError, KeyError):
                raise CatalogError(
                    f"{listing}, line {line_number}: expected 'path, fine_class_id, coarse_class_id' "
                    f"with a class id from classes.csv, got {line.strip()!r}"
                ) from None
            items.append(CatalogItem(
                item_id=rel, image_path=root / rel, label=fine_name, split=split,
                coarse_label=classes[fine_name][0],
            ))
    return items


def iconic_description(item: CatalogItem) -> str | None:
    """The product description text that comes with an iconic image, if present."""
    candidate = Path(os.fspath(item.image_path).replace("_Iconic.jpg", "_Description.txt"))
    return candidate.read_text(encoding="utf-8", errors="replace").strip() if candidate.is_file() else None


def class_descriptions(root: Path) -> dict[str, str]:
    """Fine class name -> the product description the dataset ships for it (``classes.csv``'s sixth column),
    for zero-shot prompts; a class whose text file is missing is left out. ``root`` is the ``dataset/`` folder."""
    found: dict[str, str] = {}
    with open(root / "classes.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            if len(row) < 6 or not row[5].strip():
                continue
            path = root / row[5].strip().lstrip("/")
            if path.is_file():
                found[row[0].strip()] = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
    return found


PROTOCOLS = (
    RetrievalProtocol("fine", ("test",), ("train", "val"), "label",
                      "test photos query train+val photos; relevant = same fine class (81)"),
    RetrievalProtocol("coarse", ("test",), ("train", "val"), "coarse_label",
                      "test photos query train+val photos; relevant = same coarse class (43)"),
    RetrievalProtocol("iconic", ("test",), ("iconic",), "label",
                      "test photos query the 81 iconic catalogue images; relevant = same product"),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), val=("val",), test=("test",))
