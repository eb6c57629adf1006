"""Shared by the strategies: embedding a protocol's scores, the classification arrays, per-query tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shelfsight.adapt.splits import at_most_per_class, labelled_splits
from shelfsight.bench.evaluate import ProtocolScores, evaluate_protocol
from shelfsight.bench.leakage import require_unseen
from shelfsight.bench.strategies.base import CLASSIFICATION, Scores, StrategyInputs, TunedModel
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import classification_report
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

Frames = list[pd.DataFrame]


@dataclass(frozen=True)
class ClassificationData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    dropped_test: int
    learned_from: tuple[str, ...] = ()
    """Ids of the training and validation items."""
    test_ids: tuple[str, ...] = ()
    train_ids: tuple[str, ...] = ()
    """Ids of the training items (under a label budget: the drawn ones), in the order of ``x_train``."""


def retrieval_scores(inputs: StrategyInputs, tuned: dict[str, tuple[Embeddings, tuple[str, ...]]],
                     default: Embeddings | None = None) -> tuple[Scores, dict[str, Any], Frames]:
    """Every protocol of the dataset, each with its embeddings: ``tuned[protocol]`` gives them with the ids
    their model learned from (checked on class-disjoint protocols), else ``default`` (else the frozen ones)."""
    scores: Scores = {}
    details: dict[str, Any] = {}
    frames: Frames = []
    for protocol in scored_protocols(inputs):
        embeddings, learned_from = tuned.get(protocol.name, (default or inputs.embeddings, ()))
        result = score_protocol(inputs, protocol, embeddings, learned_from)
        scores[protocol.name], details[protocol.name] = result.metrics, result.details
        frames.append(result.per_query.assign(protocol=protocol.name))
    return scores, details, frames


def score_protocol(inputs: StrategyInputs, protocol: RetrievalProtocol, embeddings: Embeddings,
                   learned_from: tuple[str, ...], suffix: str = "") -> ProtocolScores:
    """One protocol scored in ``embeddings``, after checking that what made them (``learned_from``: the ids it
    learnt from) saw none of a class-disjoint protocol's evaluated items; ``suffix`` keeps collections apart."""
    require_unseen(protocol, inputs.catalog, inputs.dataset, learned_from,
                   f"the model of cell {inputs.collection_prefix}")
    return evaluate_protocol(
        protocol, inputs.catalog, embeddings, make_index=inputs.make_index, k=inputs.k, ks=inputs.ks,
        collection=f"{inputs.collection_prefix}_{protocol.name}{suffix}", keep_collection=inputs.keep_collections,
        dedupe=inputs.dedupe, same_group=inputs.same_group, recall_queries=inputs.recall_queries)


def scored_protocols(inputs: StrategyInputs) -> list[RetrievalProtocol]:
    """The dataset's retrieval protocols this cell scores (``inputs.retrieval_protocols``; default all)."""
    protocols = protocols_for(inputs.dataset, inputs.catalog)
    if inputs.retrieval_protocols is None:
        return list(protocols)
    return [p for p in protocols if p.name in inputs.retrieval_protocols]


def per_query_table(parts: Frames) -> pd.DataFrame:
    """One per-query table: ``protocol`` and ``query`` first, then the metric columns."""
    if not parts:
        return pd.DataFrame(columns=["protocol", "query"])
    table = pd.concat(parts, ignore_index=True, sort=False)
    return table[["protocol", "query"] + [c for c in table.columns if c not in ("protocol", "query")]]


def classification_data(inputs: StrategyInputs, splits: ClassificationSplits | None = None,
                        catalog: Catalog | None = None) -> ClassificationData:
    """Train, validation and test arrays of the embedded items (``adapt.splits.labelled_splits``: the
    partition fine-tuning uses too); without a validation split, a stratified seeded 10% of train.
    ``splits`` and ``catalog`` select other items (a class-disjoint protocol's training items). A label-budget
    cell keeps ``inputs.label_budget`` training items per class, drawn after validation is set aside: what a
    strategy fits on is ``x_train``; validation only selects (the probe's C, a head's epochs), never fits."""
    embedded = set((catalog or inputs.catalog).ids)
    ids = [i for i in inputs.embeddings.ids if i in embedded]
    labelled = labelled_splits(inputs.dataset, catalog or inputs.catalog, inputs.seed, ids=ids, splits=splits)
    if inputs.label_budget is not None:
        labelled = at_most_per_class(labelled, inputs.label_budget, inputs.seed)
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}

    def vectors(items: tuple[Any, ...]) -> np.ndarray:
        return inputs.embeddings.vectors[[rows[item.item_id] for item in items]]

    return ClassificationData(
        x_train=vectors(labelled.train), y_train=labelled.y_train, x_val=vectors(labelled.val),
        y_val=labelled.y_val, x_test=vectors(labelled.test), y_test=labelled.y_test, classes=labelled.classes,
        dropped_test=labelled.dropped_test,
        learned_from=tuple(item.item_id for item in (*labelled.train, *labelled.val)),
        test_ids=tuple(item.item_id for item in labelled.test),
        train_ids=tuple(item.item_id for item in labelled.train),
    )


def training_counts(data: ClassificationData, label_budget: int | None) -> dict[str, Any]:
    """What a classifier learned from, for its details: ``train`` photos, the most of any class, and under a
    label budget the drawn ids (a few per class), so a curve's cell can be checked photo by photo."""
    counts: dict[str, Any] = {"train": len(data.y_train),
                              "train_per_class_max": int(np.bincount(data.y_train).max()) if len(data.y_train) else 0}
    if label_budget is not None:
        counts["train_ids"] = list(data.train_ids)
    return counts


def classification_scores(data: ClassificationData, predicted: np.ndarray,
                           details: dict[str, Any]) -> tuple[dict[str, float], pd.DataFrame]:
    """Test scores and per-item labels; the confusion matrix (rows true, columns predicted) goes to
    ``details`` for the report."""
    report = classification_report(data.y_test, predicted, labels=np.arange(len(data.classes)))
    details["confusion"] = {"classes": list(data.classes), "matrix": report.confusion.tolist()}
    per_item = pd.DataFrame({"protocol": CLASSIFICATION, "query": list(data.test_ids),
                             "y_true": data.y_test.astype(float), "y_pred": np.asarray(predicted, dtype=float)})
    return ({"accuracy": report.accuracy, "macro_precision": report.macro_precision,
             "macro_recall": report.macro_recall, "macro_f1": report.macro_f1}, per_item)


def require_tuned(inputs: StrategyInputs, kind: str) -> TunedModel:
    if inputs.tuned is None or inputs.tuned.kind != kind:
        raise ValueError(f"strategy {kind} needs the tuned model, which the bench runner prepares; "
                         "run it through run_bench")
    return inputs.tuned
