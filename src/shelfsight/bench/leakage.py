"""Leakage: class-disjoint protocols (what a tuned model may learn from, and the check that it learned nothing
else), and queries with a duplicate in their own gallery.

Cars196, Stanford Online Products and In-shop evaluate retrieval on classes that no tuned model may have
seen; that is what makes their numbers comparable with the metric-learning literature (Musgrave et al.
2020). A tuned strategy declares the items its model learned from (training and validation: early
stopping selects on the latter), and the bench refuses to score it on a protocol whose evaluated items
or classes those overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shelfsight.catalog import Catalog
from shelfsight.duplicates.leakage import ProtocolLeakage, leaking_mask, protocol_leakage
from shelfsight.embeddings import Embeddings
from shelfsight.errors import ShelfsightError
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

_log = logging.getLogger(__name__)


class LeakageError(ShelfsightError):
    """A tuned model learned from items or classes that a class-disjoint protocol evaluates."""


def overlap(protocol: RetrievalProtocol, catalog: Catalog, learned_from: Iterable[str]) -> tuple[int, int]:
    """(evaluated items learned from, evaluated classes seen in training) for a class-disjoint protocol."""
    by_id = {item.item_id: item for item in catalog}
    trained = [by_id[i] for i in learned_from if i in by_id]
    evaluated = [item for item in catalog if protocol.evaluated(item)]
    evaluated_ids = {item.item_id for item in evaluated}
    evaluated_keys = {getattr(item, protocol.relevance) for item in evaluated}
    shared_items = sum(item.item_id in evaluated_ids for item in trained)
    shared_keys = {getattr(item, protocol.relevance) for item in trained} & evaluated_keys
    return shared_items, len(shared_keys - {None})


def require_unseen(protocol: RetrievalProtocol, catalog: Catalog, dataset: str, learned_from: Iterable[str],
                   what: str) -> None:
    """Raise ``LeakageError`` when ``what`` learned from an evaluated item or class of a disjoint protocol."""
    if not protocol.disjoint:
        return
    items, classes = overlap(protocol, catalog, learned_from)
    if items or classes:
        raise LeakageError(
            f"{dataset} protocol {protocol.name!r} evaluates classes no tuned model may have seen, but {what} "
            f"learned from {items} of its evaluated images and {classes} of its evaluated classes "
            f"({protocol.relevance}); tune on the protocol's training items ({describe_training(protocol)}) "
            "or score this model on another protocol.")


def leaks(protocol: RetrievalProtocol, catalog: Catalog, learned_from: Iterable[str]) -> bool:
    return protocol.disjoint and any(overlap(protocol, catalog, learned_from))


def training_splits(protocol: RetrievalProtocol) -> ClassificationSplits:
    """The protocol's training items as classification splits (validation carved from them, seeded)."""
    if protocol.train is None:
        raise ValueError(f"protocol {protocol.name!r} declares no training items")
    return ClassificationSplits(train=protocol.train.splits, test=(), label=protocol.relevance)


def training_catalog(protocol: RetrievalProtocol, catalog: Catalog) -> Catalog:
    """The catalogue restricted to the protocol's training items."""
    if protocol.train is None:
        raise ValueError(f"protocol {protocol.name!r} declares no training items")
    return catalog.subset([item.item_id for item in catalog if protocol.train.includes(item)])


def describe_training(protocol: RetrievalProtocol) -> str:
    train = protocol.train
    if train is None:
        return "none declared"
    subset = f", {train.subset.field} in {_span(train.subset.values)}" if train.subset else ""
    return f"splits {', '.join(train.splits)}{subset}"


def _span(values: frozenset[str]) -> str:
    numbers = sorted(int(v) for v in values if v.isdigit())
    if len(numbers) == len(values) and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}..{numbers[-1]}"
    return f"{len(values)} values"


# ---------------------------------------------------------------------------------------------- duplicates
# A second kind of leakage: a query whose exact or near duplicate sits in its own gallery is found by
# memory. The bench always records it (exact copies, and near-duplicates when a threshold is given) and,
# with ``action: exclude``, scores the queries without such a duplicate, keeping the all-query numbers too.


class DedupePolicy(BaseModel):
    """What the bench does about queries with a duplicate in their gallery (``dedupe`` in the bench config).

    ``warn`` records the count and examples with each protocol's scores; ``exclude`` also leaves those
    queries out of the scores (the all-query scores stay in the details); ``off`` skips the check.
    ``threshold``: the cosine similarity of a near-duplicate for the cell's embedding (calibrate it with
    ``benchmarks/duplicates.py``); without it, only byte-identical copies count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["off", "warn", "exclude"] = "warn"
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)


def duplicate_leakage(
    protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings, query_ids: list[str],
    policy: DedupePolicy, per_query: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(queries to score, leakage details) for one protocol: every query is scored unless ``exclude``. The
    details hold the count, examples, and the scores both with and without the leaking queries."""
    if policy.action == "off":
        return np.ones(len(query_ids), dtype=bool), None
    found = protocol_leakage(protocol, catalog, embeddings, policy.threshold)
    leaking = leaking_mask(query_ids, found)
    if leaking.any():
        _log.warning("protocol %r: %d of %d queries have a duplicate in the gallery (%d exact), e.g. %s",
                     protocol.name, found.count, found.queries, found.exact,
                     ", ".join(f"{p.a} ~ {p.b} ({p.similarity:.3f})" for p in found.examples[:3]))
    details = found.as_dict({i.item_id: str(i.image_path) for i in catalog if i.item_id in _example_ids(found)})
    details |= {"action": policy.action, "scores_all_queries": scores_of(per_query, np.ones_like(leaking)),
                "scores_without_duplicates": scores_of(per_query, ~leaking)}
    return (~leaking if policy.action == "exclude" else np.ones_like(leaking)), details


def _example_ids(found: ProtocolLeakage) -> set[str]:
    return {i for p in found.examples for i in (p.a, p.b)}


def scores_of(per_query: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float]:
    """Metric means over the kept queries, NaN (no relevant item) left out, as every protocol score."""
    means = {}
    for name, values in per_query.items():
        kept = values[keep]
        kept = kept[~np.isnan(kept)]
        means[name] = float(kept.mean()) if len(kept) else float("nan")
    return means
