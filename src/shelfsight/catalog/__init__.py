"""Catalogues: public datasets and a user's own images, as one ``Catalog`` type.

``load_catalog`` accepts a registered dataset name (``DATASETS``: Grocery Store, Fashion-MNIST
and the six datasets of the paper), a Hugging Face dataset (``hf:<saved folder or hub name>``),
a folder of class sub-folders, or a CSV/Parquet manifest.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from shelfsight import paths
from shelfsight.catalog import cars196, fashion_mnist, food101, grocery, inshop, products10k, rp2k, sop
from shelfsight.catalog.hf import declared_protocol, is_hf_source, load_hf
from shelfsight.catalog.imagefolder import load_image_folder
from shelfsight.catalog.images import decode_image, to_rgb
from shelfsight.catalog.manifest import load_manifest
from shelfsight.catalog.public import DatasetEntry, Loader
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError, DatasetNotFoundError
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol, derived_classification, derived_protocols

__all__ = [
    "DATASETS", "Catalog", "CatalogItem", "DatasetEntry", "Loader", "classification_for", "decode_image",
    "declared_entry", "load_catalog", "load_image_folder", "load_manifest", "protocols_for", "to_rgb",
]


def _grocery_root(data_dir: Path | None) -> Path | None:
    try:
        return grocery.find_root(data_dir)
    except DatasetNotFoundError:
        return None


DATASETS: dict[str, DatasetEntry] = {
    grocery.NAME: DatasetEntry(
        name=grocery.NAME,
        description="Grocery Store Dataset: 5,421 shop photos, 81 fine / 43 coarse classes, 81 iconic images",
        splits=(*grocery.SPLITS, grocery.ICONIC_SPLIT), licence="MIT", how_to_get=grocery.HOW_TO_GET,
        homepage="https://github.com/marcusklasson/GroceryStoreDataset",
        expected_counts={"train": 2_640, "val": 296, "test": 2_485, "iconic": 81}, locate=_grocery_root,
        protocols=grocery.PROTOCOLS, classification=grocery.CLASSIFICATION,
        load=lambda data, cache, splits, download, explicit: grocery.load_grocery_store(
            data, splits=splits, explicit=explicit),
    ),
    fashion_mnist.NAME: DatasetEntry(
        name=fashion_mnist.NAME,
        description="Fashion-MNIST: 70,000 greyscale 28x28 article images, 10 categories",
        splits=("train", "test"), licence="MIT", how_to_get=fashion_mnist.HOW_TO_GET,
        homepage="https://github.com/zalandoresearch/fashion-mnist", expected_counts=fashion_mnist.EXPECTED_COUNTS,
        locate=fashion_mnist.find_raw_dir, protocols=fashion_mnist.PROTOCOLS,
        classification=fashion_mnist.CLASSIFICATION,
        load=lambda data, cache, splits, download, explicit: fashion_mnist.load_fashion_mnist(
            data, cache, splits=splits, download=download, explicit=explicit),
    ),
    sop.NAME: sop.ENTRY,
    cars196.NAME: cars196.ENTRY,
    inshop.NAME: inshop.ENTRY,
    products10k.NAME: products10k.ENTRY,
    rp2k.NAME: rp2k.ENTRY,
    food101.NAME: food101.ENTRY,
}
"""Every public dataset by name; the six of the paper follow the two small ones used in tests and demos."""


def load_catalog(
    source: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
    splits: tuple[str, ...] | None = None, cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False, image_root: str | os.PathLike[str] | None = None, group: str | None = None,
) -> Catalog:
    """A registered dataset by name, an ``hf:`` dataset, an image folder, or a manifest file; ``splits``
    narrows it. ``image_root`` and ``group`` (the group column: None for one called ``group``, ``"none"`` for
    no group) apply to a manifest only."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.is_file():
        _refuse_manifest_options(text, image_root=image_root, group=group)
    if is_hf_source(text):
        declared = declared_protocol(text)
        if declared is not None and declared not in DATASETS:
            raise CatalogError(f"{text!r}: protocol={declared!r} is not a registered dataset; use one of "
                               f"{', '.join(DATASETS)}.")
        return load_hf(text, paths.cache_dir(cache_dir), splits=splits)
    if text in DATASETS:
        explicit = os.fspath(data_dir) if data_dir is not None else None
        return DATASETS[text].load(paths.data_dir(data_dir), paths.cache_dir(cache_dir), splits, download, explicit)
    if path.is_dir():
        catalog = load_image_folder(path)
    elif path.is_file():
        catalog = load_manifest(path, image_root=image_root, group=group)
    else:
        close = difflib.get_close_matches(text, list(DATASETS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CatalogError(
            f"{text!r} is neither a known dataset ({', '.join(DATASETS)}), nor hf:<dataset>, nor an existing folder "
            f"or manifest.{hint}"
        )
    return catalog.select_splits(*splits) if splits else catalog


def _refuse_manifest_options(source: str, *, image_root: object, group: str | None) -> None:
    """A group column or an image root given for a source that has neither is a mistake, not a no-op."""
    if group is not None and group.strip().lower() != "none":
        raise CatalogError(f"{source!r}: --group/group names a column of a manifest; this source is not one "
                           "(a folder, a registered or hf: dataset). Write a manifest with a group column.")
    if image_root is not None:
        raise CatalogError(f"{source!r}: --image-root/image_root applies to a manifest's relative paths; this "
                           "source is not a manifest.")


def declared_entry(dataset: str) -> DatasetEntry | None:
    """The registered dataset whose protocols ``dataset`` follows: itself, or the one an ``hf:`` source
    names with ``protocol=NAME``; None for a user catalogue."""
    return DATASETS.get(declared_protocol(dataset) or dataset)


def protocols_for(dataset: str, catalog: Catalog) -> tuple[RetrievalProtocol, ...]:
    """The protocols a registered dataset declares, or those derived for a user catalogue."""
    entry = declared_entry(dataset)
    return entry.protocols if entry is not None and entry.protocols else derived_protocols(catalog)


def classification_for(dataset: str, catalog: Catalog) -> ClassificationSplits | None:
    """The classification split a registered dataset declares, or the one derived for a user catalogue."""
    entry = declared_entry(dataset)
    if entry is not None and entry.classification is not None:
        return entry.classification
    return derived_classification(catalog)
