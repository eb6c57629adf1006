"""``openset``: how well an embedding knows what it does not know. A seeded share of the training classes is held
out as unknown (stratified by class size); everything is rebuilt on the known classes only (gallery, the heads'
training and validation photos) and the unknown classes' photos query it, with no match in the gallery and no
class in the heads. Per task and (head, score): AUROC of known against unknown, FPR at 95% TPR, and the open-set
accuracy at the threshold chosen on the validation photos (known and held-out) for a target precision of "match"
answers.

- retrieval (``openset-retrieval``): the dataset's main protocol on the known gallery, exact search; scores the top-1
  cosine and the margin between the top-1 and top-k cosines, in the frozen embedding and the top-tuned one;
- tagging (``openset-tagging``): the nearest class mean's cosine, and the linear probe's and the top-tuned head's
  maximum softmax probability and logit energy.

The draw depends on the seed only, so every backbone of a seed faces the same unknown classes. See docs/openset.md.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from shelfsight.bench.strategies import linear, ncm, pretrained, toptune
from shelfsight.bench.strategies.base import (
    HEAD_ONLY,
    ConfigSection,
    CostParts,
    CostQuery,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.openset_data import RETRIEVAL, TAGGING, known_data, openset_split, tagging_scores
from shelfsight.bench.strategies.openset_scoring import (
    SCORE_COLUMN,
    UNKNOWN_COLUMN,
    Scored,
    TaskQueries,
    measure,
    metric_name,
    task_intervals,
)
from shelfsight.bench.strategies.openset_search import retrieval_scores

NAME = "openset"
HEADS = (pretrained.NAME, ncm.NAME, linear.NAME, toptune.NAME)
"""What can answer: the frozen embedding (retrieval), class means, the linear probe, the top-tuned head (both)."""


@dataclass(frozen=True)
class OpenSetConfig:
    """The ``openset:`` section of a bench config."""

    unknown_share: float = 0.25
    """Share of the training classes held out as unknown, drawn per seed, stratified by class size."""
    target_precision: float = 0.95
    """Precision of "match" answers the served threshold is chosen for, on the validation photos."""
    heads: tuple[str, ...] = HEADS
    toptune_trials: int = 2
    """At most this many trials of the ``toptune:`` search (its space; the head retrains on the known classes)."""
    toptune_max_epochs: int = 100
    """At most this many epochs of the final head (early stopping usually ends it sooner)."""
    bootstrap: int = 1000
    """Class resamples of the AUROC interval and of the paired differences."""

    def __post_init__(self) -> None:
        if not 0.0 < self.unknown_share < 1.0:
            raise ValueError(f"openset.unknown_share must be in (0, 1), got {self.unknown_share}")
        if not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"openset.target_precision must be in (0, 1], got {self.target_precision}")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown or not self.heads:
            raise ValueError(f"openset.heads must be a non-empty subset of {list(HEADS)}, got {list(self.heads)}")
        if min(self.toptune_trials, self.toptune_max_epochs, self.bootstrap) < 1:
            raise ValueError("openset.toptune_trials, toptune_max_epochs and bootstrap must be at least 1")


SECTION = ConfigSection(NAME, OpenSetConfig)


def section(sections: Sections) -> OpenSetConfig:
    value = sections[SECTION.name]
    assert isinstance(value, OpenSetConfig)
    return value


def run(inputs: StrategyInputs) -> StrategyOutput:
    config = section(inputs.sections)
    split = openset_split(inputs, config.unknown_share)
    data = known_data(inputs, split)
    toptune_config = small_toptune(inputs, config)
    started = time.perf_counter()
    tagging, head_details, toptuned = tagging_scores(inputs, data, split, config.heads, toptune_config)
    tune_seconds = time.perf_counter() - started
    retrieval, retrieval_details = retrieval_scores(inputs, split, config.heads, toptuned)
    scores: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {"unknown_classes": list(split.unknown_classes), **split.counts(), **head_details,
                               RETRIEVAL: retrieval_details}
    frames = []
    for task, found in ((RETRIEVAL, retrieval), (TAGGING, tagging)):
        if found is None:
            continue
        queries, scored = found
        baseline = pretrained.NAME if task == RETRIEVAL else ncm.NAME
        metrics, task_details, frame = score_task(queries, scored, baseline, config, inputs.seed)
        scores[task] = metrics
        details[task] = {**details.get(task, {}), **task_details}
        frames.append(frame.assign(protocol=task))
    per_query = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["protocol", "query"])
    per_query = per_query[["protocol", "query"] + [c for c in per_query.columns if c not in ("protocol", "query")]]
    return StrategyOutput(scores, {"tune_seconds": tune_seconds}, details, per_query)


def score_task(queries: TaskQueries, scored: list[Scored], baseline: str, config: OpenSetConfig,
               seed: int) -> tuple[dict[str, float], dict[str, Any], pd.DataFrame]:
    """Every (head, score) of one task measured; per-query columns: whether the query is unknown, each score and
    each open-set correctness (the only column named like a metric: its mean is the metric)."""
    metrics: dict[str, float] = {}
    columns: dict[str, Any] = {"query": list(queries.test_ids), UNKNOWN_COLUMN: (~queries.test_known).astype(float)}
    per_score: dict[str, Any] = {}
    for one in scored:
        values, detail, correct = measure(queries, one, config.target_precision)
        metrics.update(values)
        per_score[one.key] = detail
        columns[f"{SCORE_COLUMN}:{one.key}"] = one.test
        columns[metric_name("openset_accuracy", one.key)] = correct
    intervals, paired = task_intervals(queries, scored, baseline, n_resamples=config.bootstrap, seed=seed)
    for key, bounds in intervals.items():
        per_score[key]["auroc_interval"] = bounds
    details = {"scores": per_score, "paired": paired, "known_queries": int(queries.test_known.sum()),
               "unknown_queries": int((~queries.test_known).sum()),
               "auroc_interval": "percentile bootstrap over whole classes (known and unknown resampled apart)"}
    return metrics, details, pd.DataFrame(columns)


def small_toptune(inputs: StrategyInputs, config: OpenSetConfig) -> Any:
    """The ``toptune:`` section's search space at this section's small budget, seeded by the cell."""
    base = toptune.section(inputs.sections)
    return replace(base, seed=inputs.seed, trials=min(base.trials, config.toptune_trials),
                   min_trials=min(base.min_trials, config.toptune_trials),
                   final_max_epochs=min(base.final_max_epochs, config.toptune_max_epochs))


def settings(sections: Sections) -> dict[str, Any]:
    config = section(sections)
    return {**dataclasses.asdict(config), "heads": list(config.heads), toptune.NAME: toptune.settings(sections),
            "C_grid": list(linear.C_GRID), "draw": "seeded, one class per size bin; validation picks thresholds"}


def estimate(query: CostQuery) -> CostParts:
    """The linear probe's grid and the small top-tuning search on about 3/4 of the training photos."""
    config = section(query.sections)
    parts: CostParts = []
    if linear.NAME in config.heads:
        parts += linear.estimate(query)
    if toptune.NAME in config.heads:
        base = toptune.section(query.sections)
        train = int(len(query.catalog) * (1.0 - config.unknown_share) * 0.5)
        trials = min(base.trials, config.toptune_trials)
        epochs = trials * base.trial_epochs * base.trial_repeats + min(toptune.FINAL_EPOCHS, config.toptune_max_epochs)
        parts.append((epochs * train * toptune.HEAD_SECONDS, f"{trials} trials x {base.trial_epochs} epochs"))
    return parts


STRATEGY = Strategy(NAME, tier=HEAD_ONLY, stochastic=True, run=run, section=SECTION, reads=(toptune.SECTION.name,),
                    settings=settings, estimate=estimate, prepare=toptune.prepare, classifies=True,
                    description="unknown classes held out: how well each head rejects photos it has no match for")
