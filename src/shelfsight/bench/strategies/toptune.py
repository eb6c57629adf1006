"""``toptune``: an MLP head searched with Optuna and trained with early stopping on the frozen embeddings;
its test classification, and retrieval with its penultimate-layer ("top-tuned") embeddings. On a
class-disjoint protocol whose classes the head has seen, a second head is tuned on that protocol's
training items."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shelfsight.adapt.toptune import TopTuneConfig, planned_trials
from shelfsight.bench.leakage import leaks, training_splits
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    HEAD_ONLY,
    TUNING_RECORD,
    CellRequest,
    ConfigSection,
    CostParts,
    CostQuery,
    Prepared,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
    class_count,
    train_count,
)
from shelfsight.bench.strategies.linear import NAME as LINEAR
from shelfsight.bench.strategies.scoring import (
    ClassificationData,
    classification_data,
    classification_scores,
    per_query_table,
    retrieval_scores,
    scored_protocols,
)
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol

if TYPE_CHECKING:
    from shelfsight.adapt import TopTuneResult

NAME = "toptune"
SECTION = ConfigSection(NAME, TopTuneConfig)
"""Top-tuning budget and search space (``adapt.TopTuneConfig``: the paper's 20 trials x 30 epochs x 2 repeats,
up to 1000 final epochs); the seed is the cell's."""
HEAD_SECONDS = 5e-5
"""Seconds per training photo per epoch of a top-tuning head (one thread, 1,280-d, two layers of 512)."""
FINAL_EPOCHS = 80
"""Epochs the final head usually trains before early stopping stops it."""


def train_toptune(inputs: StrategyInputs, protocol: RetrievalProtocol | None = None
                  ) -> tuple[ClassificationData, TopTuneResult, dict[str, float]]:
    """Search and train the head on the cell's embeddings and save it with its costs in ``workdir`` (for a
    class-disjoint ``protocol``: on its training items, in ``workdir/<protocol>``)."""
    from shelfsight.adapt import save_head, toptune
    from shelfsight.bench.leakage import training_catalog

    if protocol is None:
        data, workdir, study = classification_data(inputs), inputs.workdir, inputs.collection_prefix
    else:
        data = classification_data(inputs, training_splits(protocol), training_catalog(protocol, inputs.catalog))
        workdir, study = inputs.workdir / protocol.name, f"{inputs.collection_prefix}_{protocol.name}"
    config = replace(section(inputs.sections), seed=inputs.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    result = toptune(data.x_train, data.y_train, data.x_val, data.y_val, config=config,
                     storage=workdir / "study.db", study_name=study, progress=inputs.progress)
    save_head(workdir / "head", result.head, data.classes, result.best_params, int(data.x_train.shape[1]))
    costs = {"tune_seconds": result.tuning_seconds + result.final_seconds, "trials_completed": result.trials_completed,
             "trials_pruned": result.trials_pruned, "trials_planned": result.trials_planned,
             "final_epochs": result.epochs_trained}
    record = {"costs": costs, "best_params": result.best_params, "val_accuracy": result.final_val_accuracy,
              "learned_from": list(data.learned_from)}
    (workdir / TUNING_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return data, result, costs


def run(inputs: StrategyInputs) -> StrategyOutput:
    """The head's test classification; retrieval with its penultimate layer, or on a class-disjoint protocol
    whose classes the head has seen, with a second head tuned on that protocol's training items."""
    from shelfsight.adapt import embed_with_head, predict

    data, result, costs = train_toptune(inputs)
    predicted, _ = predict(result.head, data.x_test)
    details: dict[str, Any] = {}
    classification, per_item = classification_scores(data, predicted, details)
    default = replace(inputs.embeddings, vectors=embed_with_head(result.head, inputs.embeddings.vectors),
                      key=f"{inputs.embeddings.key}:toptune:{inputs.collection_prefix}")
    tuned: dict[str, tuple[Embeddings, tuple[str, ...]]] = {}
    for protocol in scored_protocols(inputs):
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
                          per_query_table([per_item, *frames]))


def section(sections: Sections) -> TopTuneConfig:
    value = sections[SECTION.name]
    assert isinstance(value, TopTuneConfig)
    return value


def prepare(request: CellRequest) -> Prepared:
    """The cell's work folder holds its study and head: cleared first when made from other inputs."""
    request.services.claim_work(request.cell, request.seed)
    return Prepared(request.services.backbone(request.model, request.seed))


def carry(request: CellRequest) -> Prepared:
    """The head tuned on ``request.source``, applied to this dataset's frozen embeddings."""
    assert request.source is not None
    services = request.services
    tuned = services.toptuned(request.model, request.source, request.seed, request.progress)
    return Prepared(services.backbone(request.model, request.seed), tuned)


def settings(sections: Sections) -> dict[str, Any]:
    """The search budget and space; the seed is the cell's."""
    values = json.loads(json.dumps(dataclasses.asdict(section(sections))))
    return {name: value for name, value in values.items() if name != "seed"}


def estimate(query: CostQuery) -> CostParts:
    """Trials x epochs x training photos of the search, and the final head's epochs (a carried head is read back)."""
    if query.carried:
        return []
    config = section(query.sections)
    train = train_count(query.catalog)
    if query.budget is not None:
        train = min(train, query.budget * class_count(query.catalog))
    trials = planned_trials(config, train)
    epochs = trials * config.trial_epochs * config.trial_repeats + FINAL_EPOCHS
    return [(epochs * train * HEAD_SECONDS, f"{trials} trials x {config.trial_epochs} epochs + final head")]


STRATEGY = Strategy(NAME, tier=HEAD_ONLY, stochastic=True, run=run, section=SECTION, settings=settings,
                    estimate=estimate, prepare=prepare, carry=carry, classifies=True, budgeted=True, adaptation=True,
                    budget_compared_with=LINEAR,
                    description="an MLP head searched with Optuna on the frozen embedding (the paper's top-tuning)")
