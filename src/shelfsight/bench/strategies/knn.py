"""``knn``: a k-nearest-neighbour vote of the training embeddings; it fits nothing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shelfsight.bench.strategies.base import CLASSIFICATION, NO_TRAINING, Strategy, StrategyInputs, StrategyOutput
from shelfsight.bench.strategies.scoring import classification_data, classification_scores

if TYPE_CHECKING:
    from shelfsight.bench.config import BenchConfig

NAME = "knn"


def run(inputs: StrategyInputs) -> StrategyOutput:
    from shelfsight.adapt import knn_classifier

    data = classification_data(inputs)
    started = time.perf_counter()
    model = knn_classifier(data.x_train, data.y_train, k=int(inputs.options.get(NAME, {}).get("k", 5)))
    fit_seconds = time.perf_counter() - started
    details: dict[str, Any] = {"train": len(data.y_train), "test": len(data.y_test), "classes": len(data.classes),
                               "dropped_test_unseen_class": data.dropped_test}
    scores, per_item = classification_scores(data, model.predict(data.x_test), details)
    return StrategyOutput({CLASSIFICATION: scores}, {"tune_seconds": fit_seconds}, details, per_item)


def settings(config: BenchConfig) -> dict[str, Any]:
    return {"k": config.knn_k}


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, settings=settings, classifies=True,
                    description="k-nearest-neighbour vote of the frozen training embeddings")
