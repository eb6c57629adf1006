"""Class-disjoint protocols: what a tuned model may learn from, and the check that it learned nothing else.

Cars196, Stanford Online Products and In-shop evaluate retrieval on classes that no tuned model may have
seen; that is what makes their numbers comparable with the metric-learning literature (Musgrave et al.
2020). A tuned strategy declares the items its model learned from (training and validation: early
stopping selects on the latter), and the bench refuses to score it on a protocol whose evaluated items
or classes those overlap.
"""

from __future__ import annotations

from collections.abc import Iterable

from shelfsight.catalog import Catalog
from shelfsight.errors import ShelfsightError
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol


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
