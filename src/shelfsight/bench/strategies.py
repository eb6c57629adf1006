"""Strategies: how a cell turns embeddings into scores.

* ``pretrained``: the embeddings as they are, for retrieval.
* ``linear`` / ``knn``: cheap classification baselines on the frozen embeddings.
* ``toptune``: an MLP head searched with Optuna and trained with early stopping; its test
  classification, and retrieval with its penultimate-layer ("top-tuned") embeddings.
* ``finetune``: the backbone fine-tuned end to end on the cell's dataset (the runner trains it and
  embeds with it); its cosine head's test classification, and retrieval with its embeddings.
* ``crosstune``: expands into ``toptune@A`` / ``finetune@A`` cells: a head or backbone tuned on
  dataset A, evaluated for retrieval on the cell's dataset (no classification: the classes differ).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shelfsight.adapt.splits import labelled_splits
from shelfsight.bench.evaluate import IndexFactory, evaluate_protocol
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import classification_report
from shelfsight.protocols import protocols_for

if TYPE_CHECKING:
    import torch

    from shelfsight.adapt import MLPHead, TopTuneResult

CROSSTUNE = "crosstune"
TUNED = ("toptune", "finetune")
STRATEGIES = ("pretrained", "linear", "knn", "toptune", "finetune", CROSSTUNE)
TUNING_RECORD = "tuning.json"
"""Costs and details of a top-tuned head, next to it, so cross-tuning can quote them."""

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
    tuned: TunedModel | None = None
    """For ``finetune`` and cross-tuning cells: the tuned model the runner prepared."""


@dataclass(frozen=True)
class TunedModel:
    """A model tuned on ``dataset``: a top-tuned head (applied to the cell's frozen embeddings) or a
    fine-tuned backbone (which computed the cell's embeddings; its cosine head classifies them)."""

    kind: Literal["toptune", "finetune"]
    dataset: str
    path: Path
    costs: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    head: MLPHead | None = None
    class_weights: torch.Tensor | None = None
    classes: tuple[str, ...] = ()


def parse_strategy(strategy: str) -> tuple[str, str | None]:
    """``toptune@fashion-mnist`` -> ``("toptune", "fashion-mnist")``; ``linear`` -> ``("linear", None)``."""
    kind, _, source = strategy.partition("@")
    return kind, source or None


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
    kind, source = parse_strategy(strategy)
    if source is not None and kind in TUNED:
        return _crosstune(inputs, kind, source)
    if strategy == "pretrained":
        scores, details = retrieval_scores(inputs, inputs.embeddings)
        return scores, {}, details
    if strategy in ("linear", "knn"):
        return _baseline(strategy, inputs)
    if strategy == "toptune":
        return _toptune(inputs)
    if strategy == "finetune":
        return _finetune(inputs)
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
    """Train, validation and test arrays of the embedded items (``adapt.splits.labelled_splits``: the
    partition fine-tuning uses too); without a validation split, a stratified seeded 10% of train."""
    splits = labelled_splits(inputs.dataset, inputs.catalog, inputs.seed, ids=inputs.embeddings.ids)
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}

    def vectors(items: tuple[Any, ...]) -> np.ndarray:
        return inputs.embeddings.vectors[[rows[item.item_id] for item in items]]

    return ClassificationData(
        x_train=vectors(splits.train), y_train=splits.y_train, x_val=vectors(splits.val), y_val=splits.y_val,
        x_test=vectors(splits.test), y_test=splits.y_test, classes=splits.classes, dropped_test=splits.dropped_test,
    )


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


def train_toptune(inputs: StrategyInputs) -> tuple[ClassificationData, TopTuneResult, dict[str, float]]:
    """Search and train the head on the cell's embeddings; save it with its costs in ``workdir``."""
    from shelfsight.adapt import TopTuneConfig, save_head, toptune

    data = classification_data(inputs)
    config = TopTuneConfig(seed=inputs.seed, **inputs.options.get("toptune", {}))
    inputs.workdir.mkdir(parents=True, exist_ok=True)
    result = toptune(data.x_train, data.y_train, data.x_val, data.y_val, config=config,
                     storage=inputs.workdir / "study.db", study_name=inputs.collection_prefix,
                     progress=inputs.progress)
    save_head(inputs.workdir / "head", result.head, data.classes, result.best_params, int(data.x_train.shape[1]))
    costs = {"tune_seconds": result.tuning_seconds + result.final_seconds, "trials": float(result.trials_completed),
             "trials_pruned": float(result.trials_pruned), "final_epochs": float(result.epochs_trained)}
    record = {"costs": costs, "best_params": result.best_params, "val_accuracy": result.final_val_accuracy}
    (inputs.workdir / TUNING_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return data, result, costs


def _toptune(inputs: StrategyInputs) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    from shelfsight.adapt import embed_with_head, predict

    data, result, tuning_costs = train_toptune(inputs)
    predicted, _ = predict(result.head, data.x_test)
    confusion: dict[str, Any] = {}
    scores: Scores = {"classification": _classification_scores(data, predicted, confusion)}
    tuned = replace(inputs.embeddings, vectors=embed_with_head(result.head, inputs.embeddings.vectors),
                    key=f"{inputs.embeddings.key}:toptune:{inputs.collection_prefix}")
    retrieval, details = retrieval_scores(inputs, tuned)
    details.update(confusion)
    scores.update(retrieval)
    costs = {**tuning_costs, "embed_dim": float(tuned.dim), "index_bytes": float(tuned.vectors.nbytes)}
    details.update({"best_params": result.best_params, "val_accuracy": result.final_val_accuracy,
                    "head": str(inputs.workdir / "head"), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return scores, costs, details


def _finetune(inputs: StrategyInputs) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    """The cell's embeddings come from the fine-tuned backbone; its cosine head classifies them."""
    from shelfsight.adapt.finetune import predict_classes

    tuned = _require_tuned(inputs, "finetune")
    if tuned.class_weights is None:
        raise ValueError(f"{tuned.path}: a fine-tuned model without its class vectors")
    data = classification_data(inputs)
    position = {name: row for row, name in enumerate(tuned.classes)}
    missing = [c for c in data.classes if c not in position]
    if missing:
        raise ValueError(f"{tuned.path} was tuned without class {missing[0]!r} of {inputs.dataset}")
    weights = tuned.class_weights[[position[c] for c in data.classes]]
    details: dict[str, Any] = {}
    scores: Scores = {"classification": _classification_scores(data, predict_classes(weights, data.x_test), details)}
    retrieval, retrieval_details = retrieval_scores(inputs, inputs.embeddings)
    scores.update(retrieval)
    details.update(retrieval_details)
    details.update({**tuned.details, "finetuned": str(tuned.path), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return scores, dict(tuned.costs), details


def _crosstune(inputs: StrategyInputs, kind: str, source: str) -> tuple[Scores, dict[str, float], dict[str, Any]]:
    """Retrieval on this dataset with a head or backbone tuned on ``source``; its tuning cost is quoted."""
    from shelfsight.adapt import embed_with_head

    tuned = _require_tuned(inputs, kind)
    if tuned.dataset != source:
        raise ValueError(f"cell {kind}@{source} was handed a model tuned on {tuned.dataset}")
    embeddings = inputs.embeddings
    costs = dict(tuned.costs)
    if tuned.kind == "toptune":
        if tuned.head is None:
            raise ValueError(f"{tuned.path}: a top-tuned model without its head")
        embeddings = replace(embeddings, vectors=embed_with_head(tuned.head, embeddings.vectors),
                             key=f"{embeddings.key}:toptune@{source}:{inputs.collection_prefix}")
        costs.update({"embed_dim": float(embeddings.dim), "index_bytes": float(embeddings.vectors.nbytes)})
    scores, details = retrieval_scores(inputs, embeddings)
    details.update({**tuned.details, "source_dataset": source, "tuned": tuned.kind, "source": str(tuned.path)})
    return scores, costs, details


def _require_tuned(inputs: StrategyInputs, kind: str) -> TunedModel:
    if inputs.tuned is None or inputs.tuned.kind != kind:
        raise ValueError(f"strategy {kind} needs the tuned model, which the bench runner prepares; "
                         "run it through run_bench")
    return inputs.tuned
