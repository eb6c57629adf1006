"""Open-set retrieval: known and unknown queries searched (exactly) in the gallery of the known classes.

A query's confidence is its top-1 cosine, or the margin between the top-1 and top-k cosines; its answer is right
when the top-1 item shares its class. Calibration queries (the validation photos, known and held out) search the
same gallery less themselves, so the served threshold is chosen on photos no score was computed from twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from shelfsight.bench.strategies import pretrained, toptune
from shelfsight.bench.strategies.base import StrategyInputs
from shelfsight.bench.strategies.openset_data import OpenSetSplit, require_closed
from shelfsight.bench.strategies.openset_scoring import Scored, TaskQueries
from shelfsight.catalog import CatalogItem, protocols_for
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex

if TYPE_CHECKING:
    from shelfsight.adapt import MLPHead

MARGIN_DEPTH = 10
"""The margin is the top-1 cosine less the cosine at this depth (or the cell's ``k`` when smaller)."""


def _sides(inputs: StrategyInputs, split: OpenSetSplit,
           protocol: RetrievalProtocol) -> tuple[list[CatalogItem], list[CatalogItem], list[CatalogItem]]:
    """(known gallery, test queries of the drawn classes, calibration queries) among the embedded items."""
    by_id = {item.item_id: item for item in inputs.catalog}
    items = [by_id[i] for i in inputs.embeddings.ids if i in by_id]
    drawn = set(split.labelled.classes)
    gallery = [i for i in items if i.split in protocol.gallery_splits and protocol.takes_part(i) and split.known(i)]
    queries = [i for i in items if i.split in protocol.query_splits and protocol.takes_part(i)
               and split.label(i) in drawn]
    val_ids = {i.item_id for i in split.labelled.val}
    calibration = [i for i in items if i.item_id in val_ids and protocol.takes_part(i)]
    return gallery, queries, calibration


def _exclusions(inputs: StrategyInputs, queries: list[CatalogItem],
                gallery: list[CatalogItem]) -> list[set[str] | None] | None:
    """Each query's own group's gallery photos (and itself), never returned (``same_group: exclude``)."""
    if inputs.same_group != "exclude" or not any(i.group for i in (*queries, *gallery)):
        return None
    members: dict[str, set[str]] = defaultdict(set)
    for item in gallery:
        if item.group is not None:
            members[item.group].add(item.item_id)
    return [(members[q.group] | {q.item_id}) if q.group is not None else None for q in queries]


def _search(inputs: StrategyInputs, vectors: np.ndarray, queries: list[CatalogItem], gallery: list[CatalogItem],
            split: OpenSetSplit, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-1 cosine, top-1 less top-k cosine, top-1 right) of each query in ``gallery``."""
    rows = {item_id: row for row, item_id in enumerate(inputs.embeddings.ids)}
    index = ExactIndex()
    index.add([g.item_id for g in gallery], vectors[[rows[g.item_id] for g in gallery]])
    k = max(1, min(depth, len(gallery)))
    found = index.search(vectors[[rows[q.item_id] for q in queries]], k, exclude_ids=_exclusions(inputs, queries,
                                                                                                 gallery))
    labels = {g.item_id: split.label(g) for g in gallery}
    scores = found.scores.astype(np.float64)
    top1 = scores[:, 0]
    deepest = np.where(np.isfinite(scores[:, -1]), scores[:, -1], top1)
    right = np.array([labels.get(ids[0]) == split.label(q) for ids, q in zip(found.ids, queries, strict=True)])
    return top1, top1 - deepest, right


def search_scores(inputs: StrategyInputs, split: OpenSetSplit, protocol: RetrievalProtocol,
                  spaces: list[tuple[str, np.ndarray]],
                  depth: int) -> tuple[tuple[TaskQueries, list[Scored]] | None, dict[str, Any]]:
    """Top-1 cosine and margin of every space (``(head, vectors)`` over the embedding's rows)."""
    gallery, queries, calibration = _sides(inputs, split, protocol)
    require_closed(split, gallery, "gallery")
    cal_ids = {c.item_id for c in calibration}
    cal_gallery = [g for g in gallery if g.item_id not in cal_ids]
    require_closed(split, cal_gallery, "calibration gallery")
    if not gallery or not queries or not calibration:
        return None, {"skipped": "no gallery, query or validation photo on the known classes"}
    scored: list[Scored] = []
    for head, vectors in spaces:
        top1, margin, right = _search(inputs, vectors, queries, gallery, split, depth)
        cal_top1, cal_margin, cal_right = _search(inputs, vectors, calibration, cal_gallery, split, depth)
        cal_right = cal_right & np.array([split.known(c) for c in calibration])
        right = right & np.array([split.known(q) for q in queries])
        scored += [Scored(head, "top1", cal_top1, cal_right, top1, right),
                   Scored(head, "margin", cal_margin, cal_right, margin, right)]
    queries_of = TaskQueries(cal_known=np.array([split.known(c) for c in calibration], dtype=bool),
                             test_ids=tuple(q.item_id for q in queries),
                             test_known=np.array([split.known(q) for q in queries], dtype=bool),
                             test_classes=np.array([split.label(q) for q in queries], dtype=object))
    details = {"protocol": protocol.name, "gallery": len(gallery), "calibration_gallery": len(cal_gallery),
               "margin_depth": depth}
    return (queries_of, scored), details


def main_protocol(inputs: StrategyInputs, field: str) -> RetrievalProtocol | None:
    """The first protocol with separate query and gallery items, relevance by the class field and no class-disjoint
    training: the one "no close match" is measured on."""
    for protocol in protocols_for(inputs.dataset, inputs.catalog):
        if not protocol.leave_one_out and not protocol.disjoint and protocol.relevance == field:
            return protocol
    return None


def retrieval_scores(inputs: StrategyInputs, split: OpenSetSplit, heads: tuple[str, ...],
                     toptuned: MLPHead | None) -> tuple[tuple[TaskQueries, list[Scored]] | None, dict[str, Any]]:
    """Known and unknown queries searched in the known gallery, in the frozen and the top-tuned embedding."""
    protocol = main_protocol(inputs, split.field)
    if protocol is None:
        return None, {"skipped": "no protocol with separate queries and gallery and relevance by class"}
    spaces = []
    if pretrained.NAME in heads:
        spaces.append((pretrained.NAME, inputs.embeddings.vectors))
    if toptuned is not None:
        from shelfsight.adapt import embed_with_head

        spaces.append((toptune.NAME, embed_with_head(toptuned, inputs.embeddings.vectors)))
    if not spaces:
        return None, {}
    depth = max(1, min(MARGIN_DEPTH, inputs.k))
    return search_scores(inputs, split, protocol, spaces, depth)
