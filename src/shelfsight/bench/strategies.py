"""Strategies: how a cell turns frozen embeddings into scores.

* ``pretrained``: the embeddings as they are, for retrieval.
* ``linear`` / ``knn``: cheap classification baselines on the frozen embeddings.
* ``toptune``: an MLP head searched with Optuna and trained with early stopping; its test
  classification, and retrieval with its penultimate-layer ("top-tuned") embeddings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.bench.evaluate import IndexFactory, evaluate_protocol
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import classification_report
from shelfsight.protocols import classification_for, protocols_for

STRATEGIES = ("pretrained", "linear", "knn", "toptune")

Scores = dict[str, dict[str, float]]


@dataclass(frozen=True)
class StrategyInputs:
    """Everything a strategy reads; ``workdir`` is where it may keep resumable state (studies, heads)."""

    dataset: str
    catalog: Catalog
    embeddings: Embeddings
    make_index: IndexFactory
    collection_prefix: str
    k: int
    ks: tuple[int, ...]
    seed: int
    workdir: Path
    options: dict[str, Any]
    progress: bool = False


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


def run_strategy(strategy: str, inputs: StrategyInputs) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    """Scores per protocol (classification under ``classification``), costs, and details."""
    if strategy == "pretrained":
        scores, details = retrieval_scores(inputs, inputs.embeddings)
        return scores, {}, details
    if strategy in ("linear", "knn"):
        return _baseline(strategy, inputs)
    if strategy == "toptune":
        return _toptune(inputs)
    raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")


def retrieval_scores(inputs: StrategyInputs, embeddings: Embeddings) -> tuple[Scores, dict[str, Any]]:
    scores: Scores = {}
    details: dict[str, Any] = {}
    for protocol in protocols_for(inputs.dataset, inputs.catalog):
        scores[protocol.name], details[protocol.name] = evaluate_protocol(
            protocol, inputs.catalog, embeddings, make_index=inputs.make_index, k=inputs.k, ks=inputs.ks,
            collection=f"{inputs.collection_prefix}_{protocol.name}")
    return scores, details


def classification_data(inputs: StrategyInputs) -> ClassificationData:
    """Train, validation and test arrays; without a validation split, a stratified seeded 10% of train."""
    splits = classification_for(inputs.dataset, inputs.catalog)
    if splits is None:
        raise ValueError(f"{inputs.dataset}: no train/test splits, so no classification strategy applies; "
                         "give the catalogue a split column with train and test")
    items = {item.item_id: item for item in inputs.catalog}
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}

    def side(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        ids = [i for i in inputs.embeddings.ids if items[i].split in names]
        labels = np.array([str(getattr(items[i], splits.label)) for i in ids], dtype=object)
        return inputs.embeddings.vectors[[rows[i] for i in ids]], labels

    x_train, labels_train = side(splits.train)
    x_test, labels_test = side(splits.test)
    if splits.val:
        x_val, labels_val = side(splits.val)
    else:
        held_out = _validation_mask(labels_train, inputs.seed)
        x_val, labels_val = x_train[held_out], labels_train[held_out]
        x_train, labels_train = x_train[~held_out], labels_train[~held_out]
    classes = sorted(set(labels_train))
    code = {label: index for index, label in enumerate(classes)}
    known_test = np.array([label in code for label in labels_test], dtype=bool)
    known_val = np.array([label in code for label in labels_val], dtype=bool)
    return ClassificationData(
        x_train=x_train, y_train=np.array([code[v] for v in labels_train], dtype=np.int64),
        x_val=x_val[known_val], y_val=np.array([code[v] for v in labels_val[known_val]], dtype=np.int64),
        x_test=x_test[known_test], y_test=np.array([code[v] for v in labels_test[known_test]], dtype=np.int64),
        classes=classes, dropped_test=int((~known_test).sum()),
    )


def _validation_mask(labels: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """A stratified, seeded ``fraction`` of each class (at least one item of classes with two or more)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2:
            count = max(1, int(round(fraction * len(members))))
            mask[rng.choice(members, size=count, replace=False)] = True
    return mask


def _classification_scores(data: ClassificationData, predicted: np.ndarray,
                           details: dict[str, Any]) -> dict[str, float]:
    """Test scores; the confusion matrix (rows true, columns predicted) goes to ``details`` for the report."""
    report = classification_report(data.y_test, predicted, labels=np.arange(len(data.classes)))
    details["confusion"] = {"classes": list(data.classes), "matrix": report.confusion.tolist()}
    return {"accuracy": report.accuracy, "macro_precision": report.macro_precision,
            "macro_recall": report.macro_recall, "macro_f1": report.macro_f1}


def _baseline(strategy: str, inputs: StrategyInputs) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    from shelfsight.adapt import knn_classifier

    data = classification_data(inputs)
    started = time.perf_counter()
    details: dict[str, Any] = {}
    if strategy == "linear":
        model, details["C"] = _linear_probe_tuned(data, inputs.seed)
    else:
        model = knn_classifier(data.x_train, data.y_train, k=int(inputs.options.get("knn_k", 5)))
    fit_seconds = time.perf_counter() - started
    predicted = model.predict(data.x_test)
    details.update({"train": len(data.y_train), "test": len(data.y_test), "classes": len(data.classes),
                    "dropped_test_unseen_class": data.dropped_test})
    return {"classification": _classification_scores(data, predicted, details)}, {"tune_seconds": fit_seconds}, details


LINEAR_C_GRID = (1.0, 10.0, 100.0)


def _linear_probe_tuned(data: ClassificationData, seed: int) -> tuple[Any, float]:
    """Logistic regression with its L2 strength chosen on validation, then refitted on train: a fair
    baseline (sklearn's default C=1 under-fits unit-norm embeddings by several points)."""
    from shelfsight.adapt import linear_probe

    fitted = {c: linear_probe(data.x_train, data.y_train, seed=seed, c=c) for c in LINEAR_C_GRID}

    def val_accuracy(c: float) -> float:
        return float((fitted[c].predict(data.x_val) == data.y_val).mean()) if len(data.y_val) else 0.0

    best_c = max(LINEAR_C_GRID, key=val_accuracy)
    return fitted[best_c], best_c


def _toptune(inputs: StrategyInputs) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    from shelfsight.adapt import TopTuneConfig, embed_with_head, predict, save_head, toptune

    data = classification_data(inputs)
    config = TopTuneConfig(seed=inputs.seed, **inputs.options.get("toptune", {}))
    inputs.workdir.mkdir(parents=True, exist_ok=True)
    result = toptune(data.x_train, data.y_train, data.x_val, data.y_val, config=config,
                     storage=inputs.workdir / "study.db", study_name=inputs.collection_prefix,
                     progress=inputs.progress)
    save_head(inputs.workdir / "head", result.head, data.classes, result.best_params, int(data.x_train.shape[1]))
    predicted, _ = predict(result.head, data.x_test)
    confusion: dict[str, Any] = {}
    scores: Scores = {"classification": _classification_scores(data, predicted, confusion)}
    tuned = replace(inputs.embeddings, vectors=embed_with_head(result.head, inputs.embeddings.vectors),
                    key=f"{inputs.embeddings.key}:toptune:{inputs.collection_prefix}")
    retrieval, details = retrieval_scores(inputs, tuned)
    details.update(confusion)
    scores.update(retrieval)
    costs = {"tune_seconds": result.tuning_seconds + result.final_seconds, "trials": float(result.trials_completed),
             "trials_pruned": float(result.trials_pruned), "final_epochs": float(result.epochs_trained),
             "embed_dim": float(tuned.dim), "index_bytes": float(tuned.vectors.nbytes)}
    details.update({"best_params": result.best_params, "val_accuracy": result.final_val_accuracy,
                    "head": str(inputs.workdir / "head"), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return scores, costs, details
