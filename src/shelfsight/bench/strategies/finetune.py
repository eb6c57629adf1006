"""``finetune``: the backbone fine-tuned end to end on the cell's dataset (the runner trains it and embeds
with it); its cosine head's test classification, and retrieval with its embeddings. On a class-disjoint
protocol whose classes it has seen, retrieval uses a second backbone tuned on the protocol's training
items."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from shelfsight.adapt.finetune import FinetuneConfig
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    FULL_TRAINING,
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
    split_budget,
    train_count,
)
from shelfsight.bench.strategies.scoring import (
    classification_data,
    classification_scores,
    per_query_table,
    require_tuned,
    retrieval_scores,
    scored_protocols,
)

NAME = "finetune"
SECTION = ConfigSection(NAME, FinetuneConfig)
"""Full fine-tuning settings (``adapt.FinetuneConfig``); the seed is the cell's."""
TRAIN_SLOWDOWN = 20.0
"""A training step in PyTorch eager (augmentation, forward, backward, update) against an exported inference
forward at the same input size: measured about 23x for efficientnet_lite0 at 128 px on 2 cores."""


def run(inputs: StrategyInputs) -> StrategyOutput:
    """The cell's embeddings come from the fine-tuned backbone; its cosine head classifies them. On a
    class-disjoint protocol the runner hands a backbone tuned on that protocol's training items."""
    from shelfsight.adapt.finetune import predict_classes

    tuned = require_tuned(inputs, "finetune")
    if tuned.class_weights is None:
        raise ValueError(f"{tuned.path}: a fine-tuned model without its class vectors")
    data = classification_data(inputs)
    position = {name: row for row, name in enumerate(tuned.classes)}
    missing = [c for c in data.classes if c not in position]
    if missing:
        raise ValueError(f"{tuned.path} was tuned without class {missing[0]!r} of {inputs.dataset}")
    weights = tuned.class_weights[[position[c] for c in data.classes]]
    details: dict[str, Any] = {}
    classification, per_item = classification_scores(data, predict_classes(weights, data.x_test), details)
    per_protocol = {name: (embeddings, model.learned_from) for name, (model, embeddings)
                    in inputs.protocol_tuned.items()}
    own = {p.name: (inputs.embeddings, tuned.learned_from) for p in scored_protocols(inputs)}
    retrieval, retrieval_details, frames = retrieval_scores(inputs, {**own, **per_protocol})
    details.update(retrieval_details)
    costs = dict(tuned.costs)
    for name, (model, _) in inputs.protocol_tuned.items():
        costs["tune_seconds"] = costs.get("tune_seconds", 0.0) + model.costs.get("tune_seconds", 0.0)
        details[f"{name}_backbone"] = str(model.path)
    details.update({**tuned.details, "finetuned": str(tuned.path), "train": len(data.y_train), "val": len(data.y_val),
                    "test": len(data.y_test), "classes": len(data.classes)})
    return StrategyOutput({CLASSIFICATION: classification, **retrieval}, costs, details,
                          per_query_table([per_item, *frames]))


def section(sections: Sections) -> FinetuneConfig:
    value = sections[SECTION.name]
    assert isinstance(value, FinetuneConfig)
    return value


def prepare(request: CellRequest) -> Prepared:
    """The backbone fine-tuned on this dataset, and one per class-disjoint protocol whose classes it saw."""
    services = request.services
    budget = split_budget(request.cell.strategy)[1]
    tuned, backbone = services.finetuned(request.model, request.dataset, request.seed, request.progress,
                                         budget=budget)
    protocol_tuned = services.protocol_finetuned(request.model, request.dataset, tuned, request.seed,
                                                 request.progress, budget)
    return Prepared(backbone, tuned, protocol_tuned)


def carry(request: CellRequest) -> Prepared:
    """The backbone fine-tuned on ``request.source`` embeds this dataset."""
    assert request.source is not None
    tuned, backbone = request.services.finetuned(request.model, request.source, request.seed, request.progress)
    return Prepared(backbone, tuned)


def settings(sections: Sections) -> dict[str, Any]:
    return dict(json.loads(json.dumps(dataclasses.asdict(section(sections)), default=str)))


def estimate(query: CostQuery) -> CostParts:
    """Epochs x training photos at the training input size (once per tuned backbone), then the catalogue embedded
    with the tuned backbone at its evaluation size."""
    config = section(query.sections)
    train_size = config.input_size or 224
    eval_size = config.eval_input_size or train_size
    seconds = 0.0
    if query.first:
        train = train_count(query.trained_on)
        per_class = query.budget if query.budget is not None else config.train_per_class
        if per_class is not None:
            train = min(train, per_class * class_count(query.trained_on))
        train_rate = query.rate * (224 / train_size) ** 2 / TRAIN_SLOWDOWN
        seconds += config.epochs * train / train_rate
    seconds += len(query.catalog) / (query.rate * (224 / eval_size) ** 2)
    return [(seconds, f"fine-tune {config.epochs} epoch(s) at {train_size} px, embed at {eval_size} px")]


STRATEGY = Strategy(NAME, tier=FULL_TRAINING, stochastic=True, run=run, section=SECTION, settings=settings,
                    estimate=estimate, frozen_embedding=False, prepare=prepare, carry=carry, classifies=True,
                    budgeted=True, budget_default=False, adaptation=True,
                    description="the backbone and a cosine head trained end to end")
