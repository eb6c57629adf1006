"""Train, validation and test partitions of a catalogue for classification.

One function decides them for every strategy (linear probe, kNN, top-tuning, fine-tuning), so all are
trained, stopped early and scored on the same items: a fine-tuned model is never validated on images a
top-tuned head trained on.
"""

from __future__ import annotations

import dataclasses
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


def validation_mask(labels: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """A stratified, seeded ``fraction`` of each class (at least one item of classes with two or more)."""
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
    train. ``ids`` restricts to some items (the embedded ones), in their order."""
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
        held_out = validation_mask(labels_train, seed)
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
