"""Retrieval protocols, declared as data: which items query, which form the gallery, what is relevant.

Three shapes cover the literature: leave-one-out inside one split (Stanford Online Products:
every test item queries all others), explicit query and gallery splits (DeepFashion In-shop),
and photo to catalogue (test photos query the training photos or catalogue images). A protocol
may also keep a subset of the items: Cars196's metric-learning split evaluates classes 99..196
only, across the official train and test images.

Each public dataset declares its own protocols and classification split (``PROTOCOLS`` and
``CLASSIFICATION`` in its ``catalog`` module; ``catalog.protocols_for`` looks them up); this module holds
the types and the rules that derive them for a user catalogue.

A protocol whose evaluation classes must be unseen in training (Cars196, SOP, In-shop) declares the
items a tuned strategy may learn from (``train``); the bench refuses a tuned cell whose training items
or classes overlap the evaluated ones, so its numbers compare with the metric-learning literature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from shelfsight.errors import CatalogError

Relevance = Literal["label", "coarse_label", "product_id"]


class ItemView(Protocol):
    """The fields of an item a protocol reads (``catalog.CatalogItem`` has them): declared here because the
    catalogue's modules import this one, not the other way round."""

    @property
    def item_id(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def product_id(self) -> str | None: ...
    @property
    def coarse_label(self) -> str | None: ...


class CatalogView(Protocol):
    """What deriving a user catalogue's protocols reads of it (``catalog.Catalog`` has it): its items, its splits."""

    def __iter__(self) -> Iterator[ItemView]: ...
    @property
    def splits(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ItemSubset:
    """Only items whose ``field`` is one of ``values`` take part in a protocol."""

    field: Relevance
    values: frozenset[str]

    def includes(self, item: ItemView) -> bool:
        return getattr(item, self.field) in self.values


@dataclass(frozen=True)
class TrainingItems:
    """The items a tuned strategy may learn from for a class-disjoint protocol: those of ``splits`` that
    ``subset`` includes, labelled by the protocol's relevance field."""

    splits: tuple[str, ...]
    subset: ItemSubset | None = None

    def includes(self, item: ItemView) -> bool:
        return item.split in self.splits and (self.subset is None or self.subset.includes(item))


@dataclass(frozen=True)
class RetrievalProtocol:
    """``query_splits`` search ``gallery_splits``; an item is relevant when ``relevance`` matches.

    With ``leave_one_out`` the gallery is the query set itself and a query never retrieves itself. Where
    items have groups (``CatalogItem.group``: a seller, a listing), a query never retrieves or counts its own
    group's items either, in any protocol (``bench.evaluate``; a dataset's ``same_group: keep`` counts them).
    With a ``subset``, only the items it includes are queries or gallery items. With ``train``, the
    evaluated classes must be unseen: tuned models learn from those items only (``disjoint``).
    """

    name: str
    query_splits: tuple[str, ...]
    gallery_splits: tuple[str, ...]
    relevance: Relevance = "label"
    description: str = ""
    subset: ItemSubset | None = None
    train: TrainingItems | None = None

    @property
    def disjoint(self) -> bool:
        """Evaluated classes must be unseen by any tuned model (the metric-learning protocols)."""
        return self.train is not None

    def evaluated(self, item: ItemView) -> bool:
        """Whether ``item`` is a query or a gallery item of this protocol."""
        return item.split in self.splits and self.takes_part(item)

    def takes_part(self, item: ItemView) -> bool:
        """Whether ``item`` may query or be retrieved, its split aside."""
        return self.subset is None or self.subset.includes(item)

    @property
    def leave_one_out(self) -> bool:
        return self.query_splits == self.gallery_splits

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.query_splits, *self.gallery_splits)))

    def key(self, item: ItemView) -> str:
        """The value that decides relevance for ``item``."""
        value = getattr(item, self.relevance)
        if value is None:
            raise CatalogError(
                f"protocol {self.name!r} needs '{self.relevance}' but item {item.item_id!r} has none"
            )
        return str(value)


def derived_protocols(catalog: CatalogView) -> tuple[RetrievalProtocol, ...]:
    """A sensible protocol for a user catalogue: query/gallery splits if present, else test -> train, else
    leave-one-out over everything; relevance by product id when every item has one."""
    splits = set(catalog.splits)
    relevance: Relevance = "product_id" if all(i.product_id for i in catalog) else "label"
    if {"query", "gallery"} <= splits:
        return (RetrievalProtocol("query-gallery", ("query",), ("gallery",), relevance),)
    if {"test", "train"} <= splits:
        return (RetrievalProtocol("test-train", ("test",), ("train",), relevance),)
    return (RetrievalProtocol("leave-one-out", catalog.splits, catalog.splits, relevance),)


@dataclass(frozen=True)
class ClassificationSplits:
    """Where a head trains, stops early, and is scored. Without ``val`` a stratified, seeded part
    of ``train`` becomes the validation set (whole groups where items have groups)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...] | None = None
    label: Relevance = "label"


def derived_classification(catalog: CatalogView) -> ClassificationSplits | None:
    """Classification splits of a user catalogue: train/val/test when present, else None."""
    splits = set(catalog.splits)
    if {"train", "test"} <= splits:
        return ClassificationSplits(train=("train",), test=("test",), val=("val",) if "val" in splits else None)
    return None
