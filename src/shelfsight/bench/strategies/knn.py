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
    k = neighbours(int(inputs.options.get(NAME, {}).get("k", 5)), inputs.label_budget)
    model = knn_classifier(data.x_train, data.y_train, k=k)
    fit_seconds = time.perf_counter() - started
    details: dict[str, Any] = {"train": len(data.y_train), "test": len(data.y_test), "classes": len(data.classes),
                               "dropped_test_unseen_class": data.dropped_test, "k": k}
    scores, per_item = classification_scores(data, model.predict(data.x_test), details)
    return StrategyOutput({CLASSIFICATION: scores}, {"tune_seconds": fit_seconds}, details, per_item)


def neighbours(k: int, label_budget: int | None) -> int:
    """The vote's size: ``k``; on a label budget smaller than ``k``, the largest odd number up to the budget.
    With one photo per class a vote of five is a tie among five classes, and with two a vote of two is a tie
    whenever the two nearest photos disagree: the nearest photo's class is the honest answer."""
    if label_budget is None or label_budget >= k:
        return k
    return max(1, label_budget - (1 - label_budget % 2))


BUDGET_VOTE = "odd, at most the label budget"
"""How ``neighbours`` sizes the vote on a label budget (in the settings, so a change recomputes kNN cells)."""


def settings(config: BenchConfig) -> dict[str, Any]:
    return {"k": config.knn_k, "budget_vote": BUDGET_VOTE}


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, settings=settings, classifies=True,
                    budgeted=True, description="k-nearest-neighbour vote of the frozen training embeddings")
