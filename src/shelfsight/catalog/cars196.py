"""Cars196 / Stanford Cars (Krause, Stark, Deng, Fei-Fei, 3dRR 2013): 16,185 photos of 196 car models.

Both official releases are read, from their MATLAB annotation files:

* ``car_ims.tgz`` + ``cars_annos.mat``: a struct array ``annotations`` with ``relative_im_path``
  (``car_ims/000001.jpg``), ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class`` (1..196)
  and ``test`` (0 or 1), and the cell array ``class_names``;
* the devkit release (torchvision's ``stanford_cars/``): ``devkit/cars_train_annos.mat`` and
  ``cars_test_annos_withlabels.mat`` (``bbox_*``, ``class``, ``fname``), ``devkit/cars_meta.mat``
  (``class_names``), images in ``cars_train/`` and ``cars_test/``.

``split`` is the official train/test flag (classification: 8,144 / 8,041 images). ``label`` is
the model name and ``product_id`` the official class number, on which the metric-learning protocol
filters: classes 99..196 (8,131 images), every image querying all the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.catalog.public import DatasetEntry, first_root, not_found, require_file, wanted_splits
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError
from shelfsight.protocols import ClassificationSplits, ItemSubset, RetrievalProtocol, TrainingItems

NAME = "cars196"
TITLE = "Cars196 (Stanford Cars)"
SPLITS = ("train", "test")
N_CLASSES = 196
RETRIEVAL_CLASSES = tuple(str(c) for c in range(99, N_CLASSES + 1))
"""The metric-learning split: train on classes 1..98, evaluate retrieval on classes 99..196."""
TRAINING_CLASSES = tuple(str(c) for c in range(1, 99))
ANNOS = "cars_annos.mat"
DEVKIT_TRAIN, DEVKIT_TEST, DEVKIT_META = "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", \
    "devkit/cars_meta.mat"
FOLDERS = ("cars196", "stanford_cars", "stanford-cars", "cars196/stanford_cars", "")
HOMEPAGE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
HOW_TO_GET = (
    f"Get car_ims.tgz and cars_annos.mat from {HOMEPAGE} (or a mirror of the same files) and unpack them into "
    "DATA_ROOT/cars196/ (DATA_ROOT/cars196/cars_annos.mat, DATA_ROOT/cars196/car_ims/); torchvision's "
    "stanford_cars/ folder (devkit release) works too."
)
EXPECTED_COUNTS = {"train": 8_144, "test": 8_041}


def find_root(data_dir: Path | None) -> Path | None:
    return first_root(data_dir, FOLDERS, lambda p: (p / ANNOS).is_file() or (p / DEVKIT_META).is_file())


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default both), from whichever official release is present."""
    root = find_root(data_dir)
    if root is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    wanted = wanted_splits(TITLE, splits, SPLITS)
    items = _read_car_ims(root, wanted) if (root / ANNOS).is_file() else _read_devkit(root, wanted)
    return Catalog(name=NAME, root=root, items=tuple(items), description=f"{TITLE}: 196 car models")


def _read_car_ims(root: Path, wanted: tuple[str, ...]) -> list[CatalogItem]:
    path = root / ANNOS
    mat = _loadmat(path)
    names = _class_names(path, mat)
    annotations = _struct(path, mat, "annotations", ("relative_im_path", "class", "test"))
    items = []
    for index, (rel_path, cls, test) in enumerate(
            zip(annotations["relative_im_path"], annotations["class"], annotations["test"], strict=True)):
        split = "test" if _integer(path, index, "test", test, 0, 1) else "train"
        if split in wanted:
            items.append(_item(root, str(rel_path), _integer(path, index, "class", cls, 1, len(names)), names, split))
    return items


def _read_devkit(root: Path, wanted: tuple[str, ...]) -> list[CatalogItem]:
    meta = require_file(root / DEVKIT_META, HOW_TO_GET)
    names = _class_names(meta, _loadmat(meta))
    items = []
    for split in wanted:
        if split == "train":
            path, folder = root / DEVKIT_TRAIN, "cars_train"
        else:  # torchvision keeps the labelled test annotations at the root, some copies in devkit/
            path = root / DEVKIT_TEST if (root / DEVKIT_TEST).is_file() else root / "devkit" / DEVKIT_TEST
            folder = "cars_test"
        annotations = _struct(path, _loadmat(require_file(path, HOW_TO_GET)), "annotations", ("class", "fname"))
        for index, (cls, fname) in enumerate(zip(annotations["class"], annotations["fname"], strict=True)):
            items.append(_item(root, f"{folder}/{fname}", _integer(path, index, "class", cls, 1, len(names)), names,
                               split))
    return items


def _item(root: Path, rel_path: str, cls: int, names: Sequence[str], split: str) -> CatalogItem:
    return CatalogItem(item_id=rel_path, image_path=root / rel_path, label=names[cls - 1], split=split,
                       product_id=str(cls))


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(path, squeeze_me=True)  # type: ignore[no-any-return]
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise CatalogError(f"{path}: not a readable MATLAB annotation file ({exc}); re-download it.") from None


def _class_names(path: Path, mat: dict[str, Any]) -> list[str]:
    if "class_names" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise CatalogError(f"{path}: no 'class_names' variable (found {found}); expected the official Cars196 "
                           "annotation file.")
    names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    if len(names) != N_CLASSES:
        raise CatalogError(f"{path}: 'class_names' has {len(names)} entries, expected {N_CLASSES}.")
    return names


def _struct(path: Path, mat: dict[str, Any], variable: str, fields: tuple[str, ...]) -> np.ndarray:
    value = mat.get(variable)
    names = value.dtype.names if isinstance(value, np.ndarray) else None
    missing = [f for f in fields if not names or f not in names]
    if not isinstance(value, np.ndarray) or missing:
        raise CatalogError(f"{path}: '{variable}' needs the field {(missing or fields)[0]!r} (found "
                           f"{list(names or [])}); expected the official Cars196 annotation file.")
    return np.atleast_1d(value)


def _integer(path: Path, index: int, field: str, value: object, low: int, high: int) -> int:
    try:
        number = int(np.asarray(value).item())
    except (TypeError, ValueError):
        number = low - 1
    if not low <= number <= high:
        raise CatalogError(f"{path}: annotation {index + 1} has {field} = {value!r}, expected an integer in "
                           f"{low}..{high}; re-download the file.")
    return number


PROTOCOLS = (
    RetrievalProtocol("metric-learning", ("train", "test"), ("train", "test"), "label",
                      "classes 99..196, leave-one-out over all their images (8,131); relevant = same model",
                      subset=ItemSubset("product_id", frozenset(RETRIEVAL_CLASSES)),
                      train=TrainingItems(("train", "test"),
                                          ItemSubset("product_id", frozenset(TRAINING_CLASSES)))),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))  # the official split, 196 models


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="Cars196 (Stanford Cars): 16,185 photos of 196 car models (make, model, year)",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, homepage=HOMEPAGE, how_to_get=HOW_TO_GET,
    licence="non-commercial research and education (ImageNet-style terms; images from the web)",
    citation="Krause, Stark, Deng, Fei-Fei. 3D Object Representations for Fine-Grained Categorization. 3dRR 2013.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
