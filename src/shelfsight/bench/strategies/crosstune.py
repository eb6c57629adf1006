"""``crosstune``: expands into ``toptune@A`` / ``finetune@A`` cells: a head or backbone tuned on dataset A,
evaluated for retrieval on the cell's dataset (no classification: the classes differ). Its tuning cost
is quoted from the source."""

from __future__ import annotations

from dataclasses import replace

from shelfsight.bench.strategies.base import (
    HEAD_ONLY,
    CellRequest,
    Prepared,
    Strategy,
    StrategyInputs,
    StrategyOutput,
    parse_strategy,
)
from shelfsight.bench.strategies.scoring import per_query_table, require_tuned, retrieval_scores
from shelfsight.catalog import protocols_for

NAME = "crosstune"


def run(inputs: StrategyInputs) -> StrategyOutput:
    tuned = inputs.tuned
    if tuned is None:
        raise ValueError("a cross-tuning cell needs the tuned model, which the bench runner prepares")
    return evaluate(inputs, tuned.kind, tuned.dataset)


def prepare(request: CellRequest) -> Prepared:
    """The carried strategy's model tuned on the source dataset (``request.source``)."""
    from shelfsight.bench.strategies import carried

    kind, _ = parse_strategy(request.cell.strategy)
    carry = carried(kind).carry
    assert carry is not None
    return carry(request)


def evaluate(inputs: StrategyInputs, kind: str, source: str) -> StrategyOutput:
    """Retrieval on this dataset with a head or backbone tuned on ``source``; its tuning cost is quoted."""
    from shelfsight.adapt import embed_with_head

    tuned = require_tuned(inputs, kind)
    if tuned.dataset != source:
        raise ValueError(f"cell {kind}@{source} was handed a model tuned on {tuned.dataset}")
    embeddings = inputs.embeddings
    costs = dict(tuned.costs)
    if tuned.head is not None:  # a head carried across embeds the frozen embeddings (a tuned backbone made them)
        embeddings = replace(embeddings, vectors=embed_with_head(tuned.head, embeddings.vectors),
                             key=f"{embeddings.key}:{tuned.kind}@{source}:{inputs.collection_prefix}")
        costs.update({"embed_dim": float(embeddings.dim), "index_bytes": float(embeddings.vectors.nbytes)})
    learned = tuned.learned_from if source == inputs.dataset else ()
    scores, details, frames = retrieval_scores(
        inputs, {p.name: (embeddings, learned) for p in protocols_for(inputs.dataset, inputs.catalog)})
    details.update({**tuned.details, "source_dataset": source, "tuned": tuned.kind, "source": str(tuned.path)})
    return StrategyOutput(scores, costs, details, per_query_table(frames))


STRATEGY = Strategy(NAME, tier=HEAD_ONLY, stochastic=True, run=run, prepare=prepare, expands=True,
                    description="a head or backbone tuned on another dataset of the config, evaluated here")
