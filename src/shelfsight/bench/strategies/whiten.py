"""``whiten``: the frozen embedding PCA-whitened, learnt without labels on items never scored as queries.

PCA whitening (Jégou and Chum, ECCV 2012) centres the vectors, turns them to their principal axes, scales each
axis to unit variance, keeps the ``dim`` strongest and L2-normalises again. It weakens the directions that most
photos share (lighting, background, the look of a product photo), which otherwise make unrelated items look
alike, and it costs one matrix product per photo: no labels, no training, often a smaller vector. It is the
classic cheap boost of image retrieval; whether it helps *this* catalogue is what the cell measures.

The PCA is fitted (scikit-learn, full SVD: deterministic) on items that are never the protocol's queries:

- a class-disjoint protocol's training items (SOP's train split, Cars196's classes 1..98);
- else the catalogue's ``train`` split less the protocol's queries (the Grocery Store's training photos);
- else a 2-fold cross-fit (a leave-one-out catalogue without splits): each half of the queries is scored in an
  embedding whitened on the rest of the gallery (``compress.cross_fit_folds``), so no query is ranked by a
  whitening that saw it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from shelfsight.bench.evaluate import split_for
from shelfsight.bench.strategies.base import (
    NO_TRAINING,
    ConfigSection,
    Scores,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
)
from shelfsight.bench.strategies.scoring import per_query_table, score_protocol, scored_protocols
from shelfsight.compress import FitPlan, fit_projection
from shelfsight.compress.fitting import CROSS_FIT, TRAIN_SPLIT, Fold, cross_fit_folds
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol

NAME = "whiten"


@dataclass(frozen=True)
class WhitenConfig:
    """The ``whiten:`` section of a bench config."""

    dim: int = 256
    """Whitened dimensions kept (at most the embedding's, and fewer than the items it is fitted on)."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"whiten.dim must be at least 1, got {self.dim}")


SECTION = ConfigSection(NAME, WhitenConfig)


def section(sections: Sections) -> WhitenConfig:
    value = sections[SECTION.name]
    assert isinstance(value, WhitenConfig)
    return value


def settings(sections: Sections) -> dict[str, Any]:
    return {"dim": section(sections).dim, "fit": "training items, else a 2-fold cross-fit; pca whiten, l2"}


def fit_plan(protocol: RetrievalProtocol, inputs: StrategyInputs) -> FitPlan:
    """Training items outside the protocol's queries when there are any, else a cross-fit over its queries."""
    data = split_for(protocol, inputs.catalog, inputs.embeddings)
    queries = set(data.query_ids)
    items = {item.item_id: item for item in inputs.catalog}
    if protocol.train is not None:
        training = [i for i in inputs.embeddings.ids if i in items and protocol.train.includes(items[i])]
    else:
        training = [i for i in inputs.embeddings.ids if i in items and items[i].split == "train"]
    training = [i for i in training if i not in queries]
    if training:
        return FitPlan(TRAIN_SPLIT, (Fold(np.arange(len(data.query_ids)), tuple(training)),))
    return FitPlan(CROSS_FIT, cross_fit_folds(data.query_ids, data.gallery_ids))


def whitened(embeddings: Embeddings, fit_ids: tuple[str, ...], dim: int) -> tuple[Embeddings, dict[str, Any]]:
    """Every vector whitened by a PCA fitted on ``fit_ids``; the dimensions kept are capped by the fit set."""
    rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}
    fit = embeddings.vectors[[rows[i] for i in fit_ids]]
    kept = min(dim, embeddings.dim - 1, len(fit_ids) - 1)
    if kept < 1:
        raise ValueError(f"whitening needs at least 2 items to fit on; this protocol has {len(fit_ids)}")
    started = time.perf_counter()
    projection = fit_projection(fit, kept, whiten=True)
    vectors = projection.apply(embeddings.vectors)
    fit_key = hashlib.sha256("\n".join(fit_ids).encode()).hexdigest()[:12]
    result = replace(embeddings, vectors=vectors, key=f"{embeddings.key}:{NAME}{kept}:{fit_key}")
    return result, {"dim": kept, "fit_items": len(fit_ids), "fit_seconds": time.perf_counter() - started,
                    "explained_variance": float(projection.pca.explained_variance_ratio_.sum())
                    if projection.pca is not None else 1.0}


def run(inputs: StrategyInputs) -> StrategyOutput:
    dim = section(inputs.sections).dim
    scores: Scores = {}
    details: dict[str, Any] = {}
    frames: list[pd.DataFrame] = []
    seconds, kept = 0.0, list[int]()
    for protocol in scored_protocols(inputs):
        plan = fit_plan(protocol, inputs)
        folds = [(fold, *whitened(inputs.embeddings, fold.fit_ids, dim)) for fold in plan.folds]
        metrics, detail, frame = _score(inputs, protocol, plan, folds)
        detail["whiten"] = {"fitted_on": plan.on, "folds": [info for _, _, info in folds]}
        scores[protocol.name], details[protocol.name] = metrics, detail
        frames.append(frame.assign(protocol=protocol.name))
        seconds += sum(info["fit_seconds"] for _, _, info in folds)
        kept.extend(info["dim"] for _, _, info in folds)
    costs = {"tune_seconds": seconds}
    if kept and len(set(kept)) == 1:  # one width for every protocol: the index the service would hold
        costs.update(embed_dim=float(kept[0]), index_bytes=float(len(inputs.embeddings.ids) * kept[0] * 4))
    return StrategyOutput(scores, costs, details, per_query_table(frames))


def _score(inputs: StrategyInputs, protocol: RetrievalProtocol, plan: FitPlan,
           folds: list[tuple[Fold, Embeddings, dict[str, Any]]]) -> tuple[dict[str, float], dict[str, Any],
                                                                           pd.DataFrame]:
    """One fit: the protocol scored as usual. A cross-fit: each fold's queries from its own whitening, the
    per-query scores put together and the means taken over them."""
    if len(folds) == 1:
        fold, embeddings, _ = folds[0]
        result = score_protocol(inputs, protocol, embeddings, fold.fit_ids)
        return result.metrics, dict(result.details), result.per_query
    data = split_for(protocol, inputs.catalog, inputs.embeddings)
    parts: list[pd.DataFrame] = []
    fold_metrics: list[dict[str, float]] = []
    details: dict[str, Any] = {}
    for n, (fold, embeddings, _) in enumerate(folds):
        result = score_protocol(inputs, protocol, embeddings, fold.fit_ids, suffix=f"f{n}")
        own = {data.query_ids[int(row)] for row in fold.query_rows}
        parts.append(result.per_query[result.per_query["query"].isin(own)])
        fold_metrics.append(result.metrics)
        details = details or dict(result.details)
    frame = pd.concat(parts, ignore_index=True)
    metrics = {name: float(np.nanmean(frame[name])) if name in frame and len(frame) else
               float(np.mean([m[name] for m in fold_metrics])) for name in fold_metrics[0]}
    return metrics, details, frame


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, section=SECTION, settings=settings,
                    adaptation=True,
                    description="the frozen embedding PCA-whitened on training items, without labels")
