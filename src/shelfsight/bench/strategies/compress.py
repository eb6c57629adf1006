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
from typing import Any

from shelfsight.bench.strategies import pretrained
from shelfsight.bench.strategies.base import (
    NO_TRAINING,
    ConfigSection,
    CostParts,
    CostQuery,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.compress_scoring import compress_protocols
from shelfsight.catalog import protocols_for
from shelfsight.compress import CompressConfig

NAME = "compress"
IDENTITY_NAMES = {"depth": "k", "uri": "milvus_uri"}
"""Settings renamed since cells were first keyed, under their first names in the key so stored cells stay valid."""
SECTION = ConfigSection(NAME, CompressConfig, renamed=tuple((f"{NAME}.{old}", f"{NAME}.{new}")
                                                            for new, old in IDENTITY_NAMES.items()))
"""Methods and measurement of the ``compress`` strategies (``compress.CompressConfig``)."""
COMPRESS_SECONDS = 1e-3
"""Seconds per catalogue item per compression method (fit, build, search, measure; all protocols)."""


def run(inputs: StrategyInputs) -> StrategyOutput:
    config = section(inputs.sections)
    protocols = [(protocol, inputs.embeddings) for protocol in protocols_for(inputs.dataset, inputs.catalog)]
    scores, details, per_query = compress_protocols(inputs, protocols, config)
    details["compressed"] = pretrained.NAME
    return StrategyOutput(scores, {}, details, per_query)


def section(sections: Sections) -> CompressConfig:
    value = sections[SECTION.name]
    assert isinstance(value, CompressConfig)
    return value


def settings(sections: Sections) -> dict[str, Any]:
    """The ``compress:`` section: methods, depth, throughput sample, index parameters."""
    values = json.loads(json.dumps(dataclasses.asdict(section(sections))))
    return {SECTION.name: {IDENTITY_NAMES.get(name, name): value for name, value in values.items()}}


def estimate(query: CostQuery) -> CostParts:
    methods = len(section(query.sections).methods)
    return [(methods * len(query.catalog) * COMPRESS_SECONDS, f"{methods} compression methods")]


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, section=SECTION, settings=settings,
                    estimate=estimate,
                    description="the frozen embedding compressed (PCA, int8, PQ, binary, Milvus SQ indexes): "
                                "quality kept against bytes per item and speed")
