"""``compress``: the frozen embedding compressed by every method of the config's ``compress:`` section.

PCA (optionally whitened), int8 and product quantisation, each fitted on items disjoint from the queries it is
scored on (the gallery; on leave-one-out protocols the training split or a 2-fold cross-fit), sign bits with
Hamming search and float re-ranking, Milvus's compressing index types: each scored for retrieval beside its
real costs (bytes per item, index size, build time, queries/s, recall against exact float search). Nothing
is trained on labels, so the cell is deterministic; ``compress-toptune`` does the same for top-tuned
embeddings. Scoring is in ``compress_scoring.py``, the methods in ``shelfsight.compress``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from shelfsight.bench.strategies.base import NO_TRAINING, Strategy, StrategyInputs, StrategyOutput
from shelfsight.bench.strategies.compress_scoring import compress_config, compress_protocols
from shelfsight.catalog import protocols_for

if TYPE_CHECKING:
    from shelfsight.bench.config import BenchConfig

NAME = "compress"


def run(inputs: StrategyInputs) -> StrategyOutput:
    config = compress_config(inputs, NAME)
    protocols = [(protocol, inputs.embeddings) for protocol in protocols_for(inputs.dataset, inputs.catalog)]
    scores, details, per_query = compress_protocols(inputs, protocols, config)
    details["compressed"] = "pretrained"
    return StrategyOutput(scores, {}, details, per_query)


def settings(config: BenchConfig) -> dict[str, Any]:
    """The ``compress:`` section: methods, depth, throughput sample, index parameters."""
    return {"compress": json.loads(json.dumps(dataclasses.asdict(config.compress)))}


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, settings=settings,
                    description="the frozen embedding compressed (PCA, int8, PQ, binary, Milvus SQ indexes): "
                                "quality kept against bytes per item and speed")
