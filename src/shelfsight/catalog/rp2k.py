"""RP2K (Peng, Xiao, Wei, Li, 2020): shelf photos of about 2,000 retail products, cut per product.

The released archive has no metadata file: ``all/train/<product>/*.jpg`` and
``all/test/<product>/*.jpg``, one folder per product, named by the product. Items: ``label`` =
``product_id`` = the folder (classification, and retrieval: test photos query the training
photos, relevant = same product). Listing folders reads directory entries only, no file stats.
"""

from __future__ import annotations

import os
from pathlib import Path

from shelfsight.catalog.images import is_image_name
from shelfsight.catalog.public import DatasetEntry, first_root, not_found, wanted_splits
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import DatasetNotFoundError
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

NAME = "rp2k"
TITLE = "RP2K"
SPLITS = ("train", "test")
FOLDERS = ("rp2k", "RP2K", "rp2k_dataset", "")
HOMEPAGE = "https://www.pinlandata.com/rp2k_dataset"
HOW_TO_GET = (
    f"Download the RP2K archive from {HOMEPAGE} and unpack it into DATA_ROOT/rp2k/ so that "
    "DATA_ROOT/rp2k/all/train/<product>/ and DATA_ROOT/rp2k/all/test/<product>/ exist."
)
EXPECTED_COUNTS = {"train": 344_829, "test": 39_457}


def find_root(data_dir: Path | None) -> Path | None:
    """The folder that holds ``all/train`` or ``all/test``."""
    return first_root(data_dir, FOLDERS, lambda p: (p / "all" / "train").is_dir() or (p / "all" / "test").is_dir())


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default both), one class per product folder."""
    root = find_root(data_dir)
    if root is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    items: list[CatalogItem] = []
    ignored: list[tuple[str, str]] = []
    for split in wanted_splits(TITLE, splits, SPLITS):
        split_dir = root / "all" / split
        if not split_dir.is_dir():
            raise DatasetNotFoundError(f"{split_dir}: missing; the download looks incomplete. {HOW_TO_GET}")
        for product in _sorted_entries(split_dir, folders=True):
            for name in _sorted_entries(split_dir / product, folders=False):
                rel = f"{split}/{product}/{name}"
                if name.startswith(".") or not is_image_name(Path(name)):
                    ignored.append((rel, "hidden file" if name.startswith(".") else "not an image file extension"))
                    continue
                items.append(CatalogItem(item_id=rel, image_path=root / "all" / rel, label=product, split=split,
                                         product_id=product))
    return Catalog(name=NAME, root=root / "all", items=tuple(items), ignored=tuple(ignored),
                   description=f"{TITLE}: retail products on shelves")


def _sorted_entries(folder: Path, *, folders: bool) -> list[str]:
    """Names of the sub-folders (or files) of ``folder``, sorted; hidden folders are skipped."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if (e.is_dir() if folders else e.is_file()) and not (folders and e.name.startswith(".")))


PROTOCOLS = (
    RetrievalProtocol("product", ("test",), ("train",), "product_id",
                      "test photos query the training photos; relevant = same product"),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))  # products


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="RP2K: shelf photos of about 2,400 retail products (one folder per product)",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, counts_verified=False, homepage=HOMEPAGE, how_to_get=HOW_TO_GET,
    licence="research use (see the dataset page)",
    citation="Peng, Xiao, Wei, Li. RP2K: A Large-Scale Retail Product Dataset for Fine-Grained Image "
             "Classification. arXiv:2006.12634, 2020.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
