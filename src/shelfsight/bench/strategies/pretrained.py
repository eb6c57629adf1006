"""``pretrained``: the frozen embeddings as they are, scored for retrieval on every protocol."""

from __future__ import annotations

from shelfsight.bench.strategies.base import NO_TRAINING, Strategy, StrategyInputs, StrategyOutput
from shelfsight.bench.strategies.scoring import per_query_table, retrieval_scores

NAME = "pretrained"


def run(inputs: StrategyInputs) -> StrategyOutput:
    scores, details, frames = retrieval_scores(inputs, {})
    return StrategyOutput(scores, {}, details, per_query_table(frames))


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, baseline=True, zero_label_reference=True,
                    description="the frozen embedding, for retrieval")
