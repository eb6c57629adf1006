"""Catalogues: public datasets and a user's own images, as one ``Catalog`` type.

``load_catalog`` accepts a registered dataset name (``grocery-store``, ``fashion-mnist``), a
folder of class sub-folders, or a CSV/Parquet manifest.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shelfsight import paths
from shelfsight.catalog import fashion_mnist, grocery
from shelfsight.catalog.imagefolder import load_image_folder
from shelfsight.catalog.images import decode_image, to_rgb
from shelfsight.catalog.manifest import load_manifest
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError

__all__ = [
    "DATASETS", "Catalog", "CatalogItem", "DatasetEntry", "decode_image", "load_catalog", "load_image_folder",
    "load_manifest", "to_rgb",
]

Loader = Callable[[Path | None, Path, "tuple[str, ...] | None", bool, "str | None"], Catalog]


@dataclass(frozen=True)
class DatasetEntry:
    """A public dataset shelfsight knows how to read."""

    name: str
    description: str
    splits: tuple[str, ...]
    licence: str
    how_to_get: str
    load: Loader


DATASETS: dict[str, DatasetEntry] = {
    grocery.NAME: DatasetEntry(
        name=grocery.NAME,
        description="Grocery Store Dataset: 5,421 shop photos, 81 fine / 43 coarse classes, 81 iconic images",
        splits=(*grocery.SPLITS, grocery.ICONIC_SPLIT), licence="MIT", how_to_get=grocery.HOW_TO_GET,
        load=lambda data, cache, splits, download, explicit: grocery.load_grocery_store(
            data, splits=splits, explicit=explicit),
    ),
    fashion_mnist.NAME: DatasetEntry(
        name=fashion_mnist.NAME,
        description="Fashion-MNIST: 70,000 greyscale 28x28 article images, 10 categories",
        splits=("train", "test"), licence="MIT", how_to_get=fashion_mnist.HOW_TO_GET,
        load=lambda data, cache, splits, download, explicit: fashion_mnist.load_fashion_mnist(
            data, cache, splits=splits, download=download, explicit=explicit),
    ),
}


def load_catalog(
    source: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
    splits: tuple[str, ...] | None = None, cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False, image_root: str | os.PathLike[str] | None = None,
) -> Catalog:
    """A registered dataset by name, an image folder, or a manifest file; ``splits`` narrows it."""
    text = os.fspath(source)
    if text in DATASETS:
        explicit = os.fspath(data_dir) if data_dir is not None else None
        return DATASETS[text].load(paths.data_dir(data_dir), paths.cache_dir(cache_dir), splits, download, explicit)
    path = Path(text).expanduser()
    if path.is_dir():
        catalog = load_image_folder(path)
    elif path.is_file():
        catalog = load_manifest(path, image_root=image_root)
    else:
        close = difflib.get_close_matches(text, list(DATASETS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CatalogError(
            f"{text!r} is neither a known dataset ({', '.join(DATASETS)}) nor an existing folder or manifest.{hint}"
        )
    return catalog.select_splits(*splits) if splits else catalog
