"""``compress-toptune``: the top-tuned embedding (the ``toptune`` head's penultimate layer) compressed by
every method of the ``compress:`` section, as ``compress`` does for the frozen one.

The head is the one the same model's ``toptune`` cell trains on this dataset with this seed (read back from
its work folder, or trained into it), so the two cells never train twice. A class-disjoint protocol whose
classes the head saw is left out, with the reason in the details.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shelfsight.bench.leakage import leaks
from shelfsight.bench.strategies import compress, toptune
from shelfsight.bench.strategies.base import (
    HEAD_ONLY,
    CellRequest,
    Prepared,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.compress_scoring import compress_protocols
from shelfsight.bench.strategies.scoring import require_tuned
from shelfsight.catalog import protocols_for

NAME = "compress-toptune"


def run(inputs: StrategyInputs) -> StrategyOutput:
    from shelfsight.adapt import embed_with_head

    tuned = require_tuned(inputs, toptune.NAME)
    assert tuned.head is not None
    embeddings = replace(inputs.embeddings, vectors=embed_with_head(tuned.head, inputs.embeddings.vectors),
                         key=f"{inputs.embeddings.key}:toptune:{tuned.path}")
    protocols, left_out = [], {}
    for protocol in protocols_for(inputs.dataset, inputs.catalog):
        if leaks(protocol, inputs.catalog, tuned.learned_from):
            left_out[protocol.name] = "the head was trained on this class-disjoint protocol's classes"
        else:
            protocols.append((protocol, embeddings))
    scores, details, per_query = compress_protocols(inputs, protocols, compress.section(inputs.sections))
    details.update({"compressed": toptune.NAME, "head": str(tuned.path), "left_out": left_out,
                    "best_params": tuned.details.get("best_params")})
    return StrategyOutput(scores, {"embed_dim": float(embeddings.dim)}, details, per_query)


def prepare(request: CellRequest) -> Prepared:
    """The head of this model's ``toptune`` cell on this dataset and seed."""
    services = request.services
    tuned = services.toptuned(request.model, request.dataset, request.seed, request.progress)
    return Prepared(services.backbone(request.model, request.seed), tuned)


def settings(sections: Sections) -> dict[str, Any]:
    """The ``compress:`` section and the top-tuning budget that makes the head."""
    return {**compress.settings(sections), toptune.SECTION.name: toptune.settings(sections)}


STRATEGY = Strategy(NAME, tier=HEAD_ONLY, stochastic=True, run=run, reads=(compress.SECTION.name, toptune.SECTION.name),
                    settings=settings, estimate=compress.estimate, prepare=prepare,
                    description="the top-tuned embedding compressed by the compress methods")
