"""``knn``: a k-nearest-neighbour vote of the training embeddings; it fits nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    NO_TRAINING,
    ConfigSection,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.scoring import classification_data, classification_scores

NAME = "knn"


@dataclass(frozen=True)
class KnnConfig:
    """The ``knn:`` section of a bench config."""

    k: int = 5
    """Neighbours in the vote (fewer on a small label budget: ``neighbours``)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"knn.k must be at least 1, got {self.k}")


SECTION = ConfigSection(NAME, KnnConfig, renamed=(("knn_k", f"{NAME}.k"),))


def run(inputs: StrategyInputs) -> StrategyOutput:
    from shelfsight.adapt import knn_classifier

    data = classification_data(inputs)
    started = time.perf_counter()
    k = neighbours(section(inputs.sections).k, inputs.label_budget)
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


def section(sections: Sections) -> KnnConfig:
    value = sections[SECTION.name]
    assert isinstance(value, KnnConfig)
    return value


def settings(sections: Sections) -> dict[str, Any]:
    return {"k": section(sections).k, "budget_vote": BUDGET_VOTE}


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, section=SECTION, settings=settings,
                    classifies=True,
                    budgeted=True, description="k-nearest-neighbour vote of the frozen training embeddings")
