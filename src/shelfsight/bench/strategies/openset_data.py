"""The ``openset`` cell's data: the seeded draw of unknown classes, the known-only catalogue, and each head's scores.

The unknown classes come from the classification training classes (for the public datasets their declared
training split, so nothing of the test side decides the draw). Their photos leave the gallery and every head's
training and validation sets (``require_closed`` checks it on every cell); their validation photos calibrate the
threshold and their test photos are the unknown queries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shelfsight.adapt.splits import LabelledSplits, labelled_splits
from shelfsight.bench.strategies import linear, ncm, toptune
from shelfsight.bench.strategies.base import StrategyInputs
from shelfsight.bench.strategies.openset_scoring import Scored, TaskQueries
from shelfsight.bench.strategies.scoring import ClassificationData
from shelfsight.catalog import CatalogItem, classification_for
from shelfsight.metrics.openset import draw_unknown, energy, max_softmax

if TYPE_CHECKING:
    from shelfsight.adapt import MLPHead, TopTuneConfig

RETRIEVAL, TAGGING = "openset-retrieval", "openset-tagging"
"""The two tasks, as the protocols of an ``openset`` cell's scores."""


@dataclass(frozen=True)
class OpenSetSplit:
    """The labelled splits of every class, the unknown ones, and the label field that names a class."""

    labelled: LabelledSplits
    unknown_classes: tuple[str, ...]
    field: str

    def label(self, item: CatalogItem) -> str:
        return str(getattr(item, self.field))

    def known(self, item: CatalogItem) -> bool:
        return self.label(item) not in self.unknown_classes

    def side(self, items: tuple[CatalogItem, ...], known: bool) -> list[CatalogItem]:
        return [item for item in items if self.known(item) == known]

    def counts(self) -> dict[str, int]:
        parts = {"train": self.labelled.train, "val": self.labelled.val, "test": self.labelled.test}
        return {f"{side}_{name}": len(self.side(items, side == "known"))
                for name, items in parts.items() for side in ("known", "unknown")}


def openset_split(inputs: StrategyInputs, share: float) -> OpenSetSplit:
    """The cell's draw of unknown classes over its embedded items."""
    splits = classification_for(inputs.dataset, inputs.catalog)
    if splits is None:
        raise ValueError(f"{inputs.dataset}: the open-set protocol holds out labelled training classes; give the "
                         "catalogue a split column with train and test")
    embedded = set(inputs.catalog.ids)
    ids = [i for i in inputs.embeddings.ids if i in embedded]
    labelled = labelled_splits(inputs.dataset, inputs.catalog, inputs.seed, ids=ids)
    sizes = Counter(labelled.classes[int(y)] for y in labelled.y_train)
    return OpenSetSplit(labelled, draw_unknown(dict(sizes), share, inputs.seed), splits.label)


def require_closed(split: OpenSetSplit, items: list[CatalogItem], what: str) -> None:
    """Refuse a held-out class among ``items`` (a gallery, a head's training or validation photos)."""
    leaked = sorted({split.label(item) for item in items} & set(split.unknown_classes))
    if leaked:
        raise AssertionError(f"open-set {what} holds held-out classes {leaked[:5]}")


@dataclass(frozen=True)
class KnownData:
    """Known-class arrays (labels recoded on the known classes) and the unknown validation and test vectors."""

    data: ClassificationData
    x_unknown_val: np.ndarray
    x_unknown_test: np.ndarray
    unknown_test: tuple[CatalogItem, ...]
    known_test: tuple[CatalogItem, ...]


def known_data(inputs: StrategyInputs, split: OpenSetSplit) -> KnownData:
    labelled = split.labelled
    classes = [c for c in labelled.classes if c not in split.unknown_classes]
    code = {c: i for i, c in enumerate(classes)}
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}

    def part(items: tuple[CatalogItem, ...], known: bool) -> tuple[list[CatalogItem], np.ndarray, np.ndarray]:
        chosen = split.side(items, known)
        x = inputs.embeddings.vectors[[rows[i.item_id] for i in chosen]].reshape(len(chosen), -1)
        return chosen, x, np.array([code.get(split.label(i), -1) for i in chosen], dtype=np.int64)

    train, x_train, y_train = part(labelled.train, True)
    val, x_val, y_val = part(labelled.val, True)
    test, x_test, y_test = part(labelled.test, True)
    require_closed(split, train, "training set")
    require_closed(split, val, "validation set")
    _, x_unknown_val, _ = part(labelled.val, False)
    unknown_test, x_unknown_test, _ = part(labelled.test, False)
    data = ClassificationData(x_train, y_train, x_val, y_val, x_test, y_test, classes, labelled.dropped_test,
                              learned_from=tuple(i.item_id for i in (*train, *val)),
                              test_ids=tuple(i.item_id for i in test), train_ids=tuple(i.item_id for i in train))
    return KnownData(data, x_unknown_val, x_unknown_test, tuple(unknown_test), tuple(test))


def head_logits(head: MLPHead, x: np.ndarray) -> np.ndarray:
    """The top-tuned head's logits (its softmax loses the shift that the energy score reads)."""
    import torch

    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            return head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)
    finally:
        head.train(was_training)


def _logit_scores(name: str, logits_cal: np.ndarray, logits_test: np.ndarray, known: KnownData) -> list[Scored]:
    """MSP and energy of a head's logits, calibration rows (known val, unknown val) then test rows (known test,
    unknown test)."""
    d = known.data
    right_cal = np.r_[logits_cal[:len(d.y_val)].argmax(1) == d.y_val, np.zeros(len(known.x_unknown_val), bool)]
    right_test = np.r_[logits_test[:len(d.y_test)].argmax(1) == d.y_test, np.zeros(len(known.x_unknown_test), bool)]
    return [Scored(name, "msp", max_softmax(logits_cal), right_cal, max_softmax(logits_test), right_test),
            Scored(name, "energy", energy(logits_cal), right_cal, energy(logits_test), right_test)]


def tagging_scores(inputs: StrategyInputs, known: KnownData, split: OpenSetSplit, heads: tuple[str, ...],
                   toptune_config: TopTuneConfig) -> tuple[tuple[TaskQueries, list[Scored]] | None, dict[str, Any],
                                                           MLPHead | None]:
    """Each tagging head trained on the known classes and scored on the calibration and test queries."""
    d = known.data
    cal_x, test_x = np.vstack([d.x_val, known.x_unknown_val]), np.vstack([d.x_test, known.x_unknown_test])
    scored: list[Scored] = []
    details: dict[str, Any] = {}
    if ncm.NAME in heads:
        means = ncm.class_means(d.x_train, d.y_train, len(d.classes))
        sims_cal, sims_test = cal_x @ means.T, test_x @ means.T
        right_cal = np.r_[sims_cal[:len(d.y_val)].argmax(1) == d.y_val, np.zeros(len(known.x_unknown_val), bool)]
        right_test = np.r_[sims_test[:len(d.y_test)].argmax(1) == d.y_test,
                           np.zeros(len(known.x_unknown_test), bool)]
        scored.append(Scored(ncm.NAME, "cosine", sims_cal.max(1), right_cal, sims_test.max(1), right_test))
    if linear.NAME in heads:
        model, c = linear.fit(d, inputs.seed)
        scored += _logit_scores(linear.NAME, _decision(model, cal_x), _decision(model, test_x), known)
        details[f"{linear.NAME}_C"] = c
    head = None
    if toptune.NAME in heads:
        from shelfsight.adapt import toptune as search

        result = search(d.x_train, d.y_train, d.x_val, d.y_val, config=toptune_config,
                        study_name=f"{inputs.collection_prefix}_openset", progress=inputs.progress,
                        n_classes=len(d.classes))
        head = result.head
        scored += _logit_scores(toptune.NAME, head_logits(head, cal_x), head_logits(head, test_x), known)
        details[f"{toptune.NAME}_head"] = {"best_params": result.best_params, "epochs": result.epochs_trained,
                                           "val_accuracy": result.final_val_accuracy}
    if not scored:
        return None, details, head
    test_items = (*known.known_test, *known.unknown_test)
    queries = TaskQueries(cal_known=np.r_[np.ones(len(d.y_val), bool), np.zeros(len(known.x_unknown_val), bool)],
                          test_ids=tuple(i.item_id for i in test_items),
                          test_known=np.array([split.known(i) for i in test_items], dtype=bool),
                          test_classes=np.array([split.label(i) for i in test_items], dtype=object))
    return (queries, scored), details, head


def _decision(model: Any, x: np.ndarray) -> np.ndarray:
    """Logistic-regression logits ``(N, C)``; a two-class model's single column becomes ``[0, d]`` (same softmax)."""
    values = np.asarray(model.decision_function(x), dtype=np.float64)
    return np.column_stack([np.zeros(len(values)), values]) if values.ndim == 1 else values
