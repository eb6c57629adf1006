"""``linear``: logistic regression on the frozen embeddings, its L2 strength chosen on validation. The fitted
probe is saved as a head in the cell's work folder (``RUN/work/CELL_ID/head``), which ``shelfsight index --head``
serves (``adapt.heads.LinearHead``)."""

from __future__ import annotations

import time
from typing import Any

from shelfsight.adapt.heads import logistic_head, save_linear_head
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    HEAD_ONLY,
    CostParts,
    CostQuery,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.scoring import ClassificationData, classification_data, classification_scores

NAME = "linear"
HEAD_FOLDER = "head"
"""Under the cell's work folder, as a top-tuned cell's head."""
C_GRID = (1.0, 10.0, 100.0)
FIT_SECONDS = 1.4e-3
"""Seconds per catalogue item to fit the probe for every C of the grid, plus :data:`FIT_SECONDS_PER_CLASS` per
item and class (the plan's estimate). Fitted to two runs on the 2-core machine: the Grocery Store (5,502 items, 81
classes, ~2e-3 s per item) and the 100k bench (100,000 items, 1,000 classes: 839 s, 8.4e-3 s per item, loaded)."""
FIT_SECONDS_PER_CLASS = 7e-6


def run(inputs: StrategyInputs) -> StrategyOutput:
    data = classification_data(inputs)
    started = time.perf_counter()
    model, c = fit(data, inputs.seed)
    fit_seconds = time.perf_counter() - started
    head = save_linear_head(inputs.workdir / HEAD_FOLDER, logistic_head(model, data.classes, {"C": c}))
    details: dict[str, Any] = {"C": c, "train": len(data.y_train), "test": len(data.y_test),
                               "classes": len(data.classes), "dropped_test_unseen_class": data.dropped_test,
                               "head": str(head)}
    scores, per_item = classification_scores(data, model.predict(data.x_test), details)
    return StrategyOutput({CLASSIFICATION: scores}, {"tune_seconds": fit_seconds}, details, per_item)


def fit(data: ClassificationData, seed: int) -> tuple[Any, float]:
    """Fitted for each C of the grid, the best on validation kept: a fair baseline (sklearn's default C=1
    under-fits unit-norm embeddings by several points)."""
    from shelfsight.adapt import linear_probe

    fitted = {c: linear_probe(data.x_train, data.y_train, seed=seed, c=c) for c in C_GRID}

    def val_accuracy(c: float) -> float:
        return float((fitted[c].predict(data.x_val) == data.y_val).mean()) if len(data.y_val) else 0.0

    best_c = max(C_GRID, key=val_accuracy)
    return fitted[best_c], best_c


def settings(sections: Sections) -> dict[str, Any]:
    from shelfsight.adapt.baselines import DEFAULT_TOL, RELATIVE_TOL

    # the stopping rule decides the fitted probe: a changed rule recomputes the linear cells, and only them
    return {"C_grid": list(C_GRID), "tol": f"min({DEFAULT_TOL:g}, {RELATIVE_TOL:g} x the starting gradient)"}


def estimate(query: CostQuery) -> CostParts:
    per_item = FIT_SECONDS + FIT_SECONDS_PER_CLASS * len(query.catalog.classes)
    return [(len(query.catalog) * per_item, "logistic regression")]


STRATEGY = Strategy(NAME, tier=HEAD_ONLY, stochastic=False, run=run, settings=settings, estimate=estimate,
                    classifies=True,
                    budgeted=True, description="logistic-regression probe on the frozen embedding")
