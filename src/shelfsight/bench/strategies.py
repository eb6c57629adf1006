"""Strategies: how a cell turns embeddings into scores.

* ``pretrained``: the embeddings as they are, for retrieval.
* ``linear`` / ``knn``: cheap classification baselines on the frozen embeddings.
* ``toptune``: an MLP head searched with Optuna and trained with early stopping; its test
  classification, and retrieval with its penultimate-layer ("top-tuned") embeddings.
* ``finetune``: the backbone fine-tuned end to end on the cell's dataset (the runner trains it and
  embeds with it); its cosine head's test classification, and retrieval with its embeddings.
* ``crosstune``: expands into ``toptune@A`` / ``finetune@A`` cells: a head or backbone tuned on
  dataset A, evaluated for retrieval on the cell's dataset (no classification: the classes differ).

On a class-disjoint protocol (``RetrievalProtocol.disjoint``: Cars196, SOP, In-shop) the tuned
strategies score retrieval with a model that learned from the protocol's training items only; when the
classification split overlaps the evaluated classes (Cars196), a second head or backbone is tuned on
those items, and ``bench.leakage`` refuses any model that saw an evaluated item or class.

Each strategy also returns its per-query scores (``StrategyOutput.per_query``) for intervals and paired
tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from shelfsight.adapt.splits import labelled_splits
from shelfsight.bench.evaluate import IndexFactory, evaluate_protocol
from shelfsight.bench.leakage import leaks, require_unseen, training_splits
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import classification_report
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol, classification_for, protocols_for

if TYPE_CHECKING:
    import torch

    from shelfsight.adapt import MLPHead, TopTuneResult

CROSSTUNE = "crosstune"
TUNED = ("toptune", "finetune")
STRATEGIES = ("pretrained", "linear", "knn", "toptune", "finetune", CROSSTUNE)
TUNING_RECORD = "tuning.json"
"""Costs and details of a top-tuned head, next to it, so cross-tuning can quote them."""
STOCHASTIC = {"pretrained": False, "linear": False, "knn": False, "toptune": True, "finetune": True}
"""Whether a strategy's result depends on its seed (searches, initialisations, shuffles)."""
CLASSIFIES = ("linear", "knn", "toptune", "finetune")
"""Strategies that read the classification splits (a validation part carved from train is seeded)."""
CLASSIFICATION = "classification"

Scores = dict[str, dict[str, float]]


def is_stochastic(strategy: str, *, random_init: bool, seeded_validation: bool) -> bool:
    """Whether a cell must run per seed: a stochastic strategy, a randomly initialised backbone (the seed
    draws its weights), or a classification strategy whose validation part is a seeded draw."""
    kind, source = parse_strategy(strategy)
    if source is not None:
        return True
    return STOCHASTIC[kind] or random_init or (kind in CLASSIFIES and seeded_validation)


def seeded_validation(dataset: str, catalog: Catalog | None) -> bool:
    """True when classification carves its validation part from train with the seed (no ``val`` split)."""
    from shelfsight.catalog.hf import declared_protocol
    from shelfsight.protocols import CLASSIFICATION as DECLARED

    name = declared_protocol(dataset) or dataset
    if name in DECLARED:
        return DECLARED[name].val is None
    if catalog is None:
        return True
    splits = classification_for(dataset, catalog)
    return splits is None or splits.val is None


@dataclass(frozen=True)
class StrategyOutput:
    """Scores per protocol (classification under ``classification``), costs, details, and the per-query
    scores of every protocol (``ResultStore`` layout)."""

    scores: Scores
    costs: dict[str, float]
    details: dict[str, Any]
    per_query: pd.DataFrame


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
    protocol_tuned: dict[str, tuple[TunedModel, Embeddings]] = field(default_factory=dict)
    """For ``finetune`` on class-disjoint protocols: the backbone tuned on the protocol's training items
    and the catalogue embedded with it, by protocol name."""
    keep_collections: bool = False


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
    learned_from: tuple[str, ...] = ()
    """Ids of the items it trained and early-stopped on (checked against class-disjoint protocols)."""


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
    learned_from: tuple[str, ...] = ()
    """Ids of the training and validation items."""
    test_ids: tuple[str, ...] = ()


def run_strategy(strategy: str, inputs: StrategyInputs) -> StrategyOutput:
    """Scores per protocol (classification under ``classification``), costs, details and per-query scores."""
    kind, source = parse_strategy(strategy)
    if source is not None and kind in TUNED:
        return _crosstune(inputs, kind, source)
    if strategy == "pretrained":
        scores, details, frames = retrieval_scores(inputs, {})
        return StrategyOutput(scores, {}, details, _frames(frames))
    if strategy in ("linear", "knn"):
        return _baseline(strategy, inputs)
    if strategy == "toptune":
        return _toptune(inputs)
    if strategy == "finetune":
        return _finetune(inputs)
    raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")


Frames = list[pd.DataFrame]


def retrieval_scores(inputs: StrategyInputs, tuned: dict[str, tuple[Embeddings, tuple[str, ...]]],
                     default: Embeddings | None = None) -> tuple[Scores, dict[str, Any], Frames]:
    """Every protocol of the dataset, each with its embeddings: ``tuned[protocol]`` gives them with the ids
    their model learned from (checked on class-disjoint protocols), else ``default`` (else the frozen ones)."""
    scores: Scores = {}
    details: dict[str, Any] = {}
    frames: Frames = []
    for protocol in protocols_for(inputs.dataset, inputs.catalog):
        embeddings, learned_from = tuned.get(protocol.name, (default or inputs.embeddings, ()))
        require_unseen(protocol, inputs.catalog, inputs.dataset, learned_from,
                       f"the model of cell {inputs.collection_prefix}")
        result = evaluate_protocol(
            protocol, inputs.catalog, embeddings, make_index=inputs.make_index, k=inputs.k, ks=inputs.ks,
            collection=f"{inputs.collection_prefix}_{protocol.name}", keep_collection=inputs.keep_collections)
        scores[protocol.name], details[protocol.name] = result.metrics, result.details
        frames.append(result.per_query.assign(protocol=protocol.name))
    return scores, details, frames


def _frames(frames: Frames) -> pd.DataFrame:
    """One per-query table: ``protocol`` and ``query`` first, then the metric columns."""
    if not frames:
        return pd.DataFrame(columns=["protocol", "query"])
    table = pd.concat(frames, ignore_index=True, sort=False)
    return table[["protocol", "query"] + [c for c in table.columns if c not in ("protocol", "query")]]


def classification_data(inputs: StrategyInputs, splits: ClassificationSplits | None = None,
                        catalog: Catalog | None = None) -> ClassificationData:
    """Train, validation and test arrays of the embedded items (``adapt.splits.labelled_splits``: the
    partition fine-tuning uses too); without a validation split, a stratified seeded 10% of train.
    ``splits`` and ``catalog`` select other items (a class-disjoint protocol's training items)."""
    embedded = set((catalog or inputs.catalog).ids)
    ids = [i for i in inputs.embeddings.ids if i in embedded]
    labelled = labelled_splits(inputs.dataset, catalog or inputs.catalog, inputs.seed, ids=ids, splits=splits)
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}

    def vectors(items: tuple[Any, ...]) -> np.ndarray:
        return inputs.embeddings.vectors[[rows[item.item_id] for item in items]]

    return ClassificationData(
        x_train=vectors(labelled.train), y_train=labelled.y_train, x_val=vectors(labelled.val),
        y_val=labelled.y_val, x_test=vectors(labelled.test), y_test=labelled.y_test, classes=labelled.classes,
        dropped_test=labelled.dropped_test,
        learned_from=tuple(item.item_id for item in (*labelled.train, *labelled.val)),
        test_ids=tuple(item.item_id for item in labelled.test),
    )


def _classification_scores(data: ClassificationData, predicted: np.ndarray,
                           details: dict[str, Any]) -> tuple[dict[str, float], pd.DataFrame]:
    """Test scores and per-item labels; the confusion matrix (rows true, columns predicted) goes to
    ``details`` for the report."""
    report = classification_report(data.y_test, predicted, labels=np.arange(len(data.classes)))
    details["confusion"] = {"classes": list(data.classes), "matrix": report.confusion.tolist()}
    per_item = pd.DataFrame({"protocol": CLASSIFICATION, "query": list(data.test_ids),
                             "y_true": data.y_test.astype(float), "y_pred": np.asarray(predicted, dtype=float)})
    return ({"accuracy": report.accuracy, "macro_precision": report.macro_precision,
             "macro_recall": report.macro_recall, "macro_f1": report.macro_f1}, per_item)


def _baseline(strategy: str, inputs: StrategyInputs) -> StrategyOutput:
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
    scores, per_item = _classification_scores(data, predicted, details)
    return StrategyOutput({CLASSIFICATION: scores}, {"tune_seconds": fit_seconds}, details, per_item)


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


def train_toptune(inputs: StrategyInputs, protocol: RetrievalProtocol | None = None
                  ) -> tuple[ClassificationData, TopTuneResult, dict[str, float]]:
    """Search and train the head on the cell's embeddings and save it with its costs in ``workdir`` (for a
    class-disjoint ``protocol``: on its training items, in ``workdir/<protocol>``)."""
    from shelfsight.adapt import TopTuneConfig, save_head, toptune
    from shelfsight.bench.leakage import training_catalog

    if protocol is None:
        data, workdir, study = classification_data(inputs), inputs.workdir, inputs.collection_prefix
    else:
        data = classification_data(inputs, training_splits(protocol), training_catalog(protocol, inputs.catalog))
        workdir, study = inputs.workdir / protocol.name, f"{inputs.collection_prefix}_{protocol.name}"
    config = TopTuneConfig(seed=inputs.seed, **inputs.options.get("toptune", {}))
    workdir.mkdir(parents=True, exist_ok=True)
    result = toptune(data.x_train, data.y_train, data.x_val, data.y_val, config=config,
                     storage=workdir / "study.db", study_name=study, progress=inputs.progress)
    save_head(workdir / "head", result.head, data.classes, result.best_params, int(data.x_train.shape[1]))
    costs = {"tune_seconds": result.tuning_seconds + result.final_seconds, "trials_completed": result.trials_completed,
             "trials_pruned": result.trials_pruned, "final_epochs": result.epochs_trained}
    record = {"costs": costs, "best_params": result.best_params, "val_accuracy": result.final_val_accuracy,
              "learned_from": list(data.learned_from)}
    (workdir / TUNING_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return data, result, costs


def _toptune(inputs: StrategyInputs) -> StrategyOutput:
    """The head's test classification; retrieval with its penultimate layer, or on a class-disjoint protocol
    whose classes the head has seen, with a second head tuned on that protocol's training items."""
    from shelfsight.adapt import embed_with_head, predict

    data, result, costs = train_toptune(inputs)
    predicted, _ = predict(result.head, data.x_test)
    details: dict[str, Any] = {}
    classification, per_item = _classification_scores(data, predicted, details)
    default = replace(inputs.embeddings, vectors=embed_with_head(result.head, inputs.embeddings.vectors),
                      key=f"{inputs.embeddings.key}:toptune:{inputs.collection_prefix}")
    tuned: dict[str, tuple[Embeddings, tuple[str, ...]]] = {}
    for protocol in protocols_for(inputs.dataset, inputs.catalog):
        if not leaks(protocol, inputs.catalog, data.learned_from):
            tuned[protocol.name] = (default, data.learned_from)
            continue
        own_data, own, own_costs = train_toptune(inputs, protocol)
        vectors = embed_with_head(own.head, inputs.embeddings.vectors)
        tuned[protocol.name] = (replace(inputs.embeddings, vectors=vectors,
                                        key=f"{default.key}:{protocol.name}"), own_data.learned_from)
        costs["tune_seconds"] += own_costs["tune_seconds"]
        details[f"{protocol.name}_head"] = {"best_params": own.best_params, "classes": len(own_data.classes),
                                            "train": len(own_data.y_train), "val": len(own_data.y_val)}
    retrieval, retrieval_details, frames = retrieval_scores(inputs, tuned)
    details.update(retrieval_details)
    costs |= {"embed_dim": float(default.dim), "index_bytes": float(default.vectors.nbytes)}
    details.update({"best_params": result.best_params, "val_accuracy": result.final_val_accuracy,
                    "head": str(inputs.workdir / "head"), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return StrategyOutput({CLASSIFICATION: classification, **retrieval}, costs, details,
                          _frames([per_item, *frames]))


def _finetune(inputs: StrategyInputs) -> StrategyOutput:
    """The cell's embeddings come from the fine-tuned backbone; its cosine head classifies them. On a
    class-disjoint protocol the runner hands a backbone tuned on that protocol's training items."""
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
    classification, per_item = _classification_scores(data, predict_classes(weights, data.x_test), details)
    per_protocol = {name: (embeddings, model.learned_from) for name, (model, embeddings)
                    in inputs.protocol_tuned.items()}
    own = {p.name: (inputs.embeddings, tuned.learned_from) for p in protocols_for(inputs.dataset, inputs.catalog)}
    retrieval, retrieval_details, frames = retrieval_scores(inputs, {**own, **per_protocol})
    details.update(retrieval_details)
    costs = dict(tuned.costs)
    for name, (model, _) in inputs.protocol_tuned.items():
        costs["tune_seconds"] = costs.get("tune_seconds", 0.0) + model.costs.get("tune_seconds", 0.0)
        details[f"{name}_backbone"] = str(model.path)
    details.update({**tuned.details, "finetuned": str(tuned.path), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return StrategyOutput({CLASSIFICATION: classification, **retrieval}, costs, details,
                          _frames([per_item, *frames]))


def _crosstune(inputs: StrategyInputs, kind: str, source: str) -> StrategyOutput:
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
    learned = tuned.learned_from if source == inputs.dataset else ()
    scores, details, frames = retrieval_scores(
        inputs, {p.name: (embeddings, learned) for p in protocols_for(inputs.dataset, inputs.catalog)})
    details.update({**tuned.details, "source_dataset": source, "tuned": tuned.kind, "source": str(tuned.path)})
    return StrategyOutput(scores, costs, details, _frames(frames))


def _require_tuned(inputs: StrategyInputs, kind: str) -> TunedModel:
    if inputs.tuned is None or inputs.tuned.kind != kind:
        raise ValueError(f"strategy {kind} needs the tuned model, which the bench runner prepares; "
                         "run it through run_bench")
    return inputs.tuned
