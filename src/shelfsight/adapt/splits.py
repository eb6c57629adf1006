"""Train, validation and test partitions of a catalogue for classification.

One function decides them for every strategy (linear probe, kNN, top-tuning, fine-tuning), so all are
trained, stopped early and scored on the same items: a fine-tuned model is never validated on images a
top-tuned head trained on. Where items have groups (a seller, a listing, a shoot), the validation part takes
whole groups (``grouped_share``), so early stopping never reads a seller's photos it trained on.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shelfsight.catalog import Catalog, CatalogItem, classification_for
from shelfsight.protocols import ClassificationSplits


@dataclass(frozen=True)
class LabelledSplits:
    """Items of each side with integer labels indexing ``classes`` (the sorted training labels).

    Validation and test items of a class absent from training are dropped (``dropped_test`` counts the
    test ones): no classifier can predict them.
    """

    train: tuple[CatalogItem, ...]
    y_train: np.ndarray
    val: tuple[CatalogItem, ...]
    y_val: np.ndarray
    test: tuple[CatalogItem, ...]
    y_test: np.ndarray
    classes: list[str]
    dropped_test: int


GROUP_FOLDS = 10
"""``grouped_share`` cuts ``StratifiedGroupKFold`` folds of a tenth and keeps ``round(10 * fraction)`` of them."""


def group_codes(groups: Sequence[str | None]) -> np.ndarray:
    """One int per item, shared by the items of a group; an item without a group is a group of its own."""
    named = {group: code for code, group in enumerate(sorted({g for g in groups if g is not None}))}
    return np.array([named[g] if g is not None else len(named) + k for k, g in enumerate(groups)], dtype=np.int64)


def grouped_share(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded mask of about ``fraction`` of the items, made of whole groups and stratified by label:
    scikit-learn's ``StratifiedGroupKFold`` (shuffled, ``GROUP_FOLDS`` folds, ``round(fraction * 10)`` of them), or
    ``GroupShuffleSplit`` with fewer groups (or photos of the largest class) than folds. A class left with no
    item outside the mask gets its groups back, so every class keeps something to learn from (the share shrinks
    a little instead)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"a split by group needs at least two groups, got {n_groups}")
    mask = np.zeros(len(labels), dtype=bool)
    if n_groups >= GROUP_FOLDS and np.unique(labels, return_counts=True)[1].max() >= GROUP_FOLDS:
        folds = StratifiedGroupKFold(n_splits=GROUP_FOLDS, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
            parts = [held for _, held in folds.split(np.zeros(len(labels)), labels, groups)]
        mask[np.concatenate(parts[:max(1, round(fraction * GROUP_FOLDS))])] = True
    else:
        shuffle = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        mask[next(shuffle.split(np.zeros(len(labels)), labels, groups))[1]] = True
    for label in set(labels[mask]) - set(labels[~mask]):
        mask[np.isin(groups, groups[mask & (labels == label)])] = False
    return mask


def validation_mask(labels: np.ndarray, seed: int, fraction: float = 0.1,
                    groups: Sequence[str | None] | None = None) -> np.ndarray:
    """A stratified, seeded ``fraction`` of each class (at least one item of classes with two or more); where
    items have groups, whole groups (``grouped_share``) so no group is on both sides."""
    if groups is not None and any(g is not None for g in groups):
        codes = group_codes(groups)
        if len(np.unique(codes)) >= 2:
            return grouped_share(np.asarray(labels), codes, fraction, seed)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2:
            count = max(1, int(round(fraction * len(members))))
            mask[rng.choice(members, size=count, replace=False)] = True
    return mask


def labelled_splits(dataset: str, catalog: Catalog, seed: int, ids: Sequence[str] | None = None,
                    splits: ClassificationSplits | None = None) -> LabelledSplits:
    """The dataset's declared splits (``protocols.classification_for``), or ``splits`` when given (a
    class-disjoint protocol's training items); without a validation split, a stratified seeded 10% of
    train (whole groups where items have them). ``ids`` restricts to some items (the embedded ones), in their
    order."""
    splits = splits or classification_for(dataset, catalog)
    if splits is None:
        raise ValueError(f"{dataset}: no train/test splits, so no classification strategy applies; "
                         "give the catalogue a split column with train and test")
    by_id = {item.item_id: item for item in catalog}
    items = [by_id[i] for i in ids] if ids is not None else list(catalog)

    def side(names: tuple[str, ...]) -> tuple[list[CatalogItem], np.ndarray]:
        chosen = [item for item in items if item.split in names]
        return chosen, np.array([str(getattr(item, splits.label)) for item in chosen], dtype=object)

    train, labels_train = side(splits.train)
    test, labels_test = side(splits.test)
    if splits.val:
        val, labels_val = side(splits.val)
    else:
        held_out = validation_mask(labels_train, seed, groups=[item.group for item in train])
        val = [item for item, out in zip(train, held_out, strict=True) if out]
        train = [item for item, out in zip(train, held_out, strict=True) if not out]
        labels_val, labels_train = labels_train[held_out], labels_train[~held_out]
    classes = sorted(set(labels_train))
    code = {label: index for index, label in enumerate(classes)}

    def known(chosen: list[CatalogItem], labels: np.ndarray) -> tuple[tuple[CatalogItem, ...], np.ndarray]:
        keep = [index for index, label in enumerate(labels) if label in code]
        return (tuple(chosen[i] for i in keep),
                np.array([code[labels[i]] for i in keep], dtype=np.int64))

    train_items, y_train = known(train, labels_train)
    val_items, y_val = known(val, labels_val)
    test_items, y_test = known(test, labels_test)
    return LabelledSplits(train_items, y_train, val_items, y_val, test_items, y_test, classes,
                          dropped_test=len(test) - len(test_items))


def at_most_per_class(splits: LabelledSplits, per_class: int, seed: int) -> LabelledSplits:
    """The same splits with at most ``per_class`` training items of each class (validation and test
    untouched): a training budget, not a different protocol.

    Each class's items are put in one seeded random order, drawn whatever ``per_class`` is, and the first
    ``per_class`` are kept, in catalogue order: for one seed the draws are nested (the 5-per-class subset
    holds the 2-per-class one), so a label-efficiency curve adds photos rather than swapping them."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in np.unique(splits.y_train):
        members = np.flatnonzero(splits.y_train == label)
        keep.extend(rng.permutation(members)[:per_class].tolist())
    order = sorted(keep)
    return dataclasses.replace(splits, train=tuple(splits.train[i] for i in order), y_train=splits.y_train[order])
