"""The catalogue: product images with labels and splits, as plain frozen data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One product image.

    ``label`` is the category used for classification and, by default, for retrieval relevance;
    ``product_id`` is the finer identity used for retrieval where a dataset has one;
    ``coarse_label`` is a parent category where the dataset has a hierarchy.
    """

    item_id: str
    image_path: Path
    label: str
    split: str = "all"
    product_id: str | None = None
    coarse_label: str | None = None
    group: str | None = None
    """Who or what shot the photo (a seller, a listing, a photo shoot): splits keep a group on one side and a
    query never counts its own group's photos, where backgrounds and re-shoots would inflate every number."""
    metadata: tuple[tuple[str, str], ...] = ()
    """Other manifest columns as (name, value) pairs: the bench ignores them, the service stores and returns them."""


IDENTITY_FIELDS = {"labels": "label", "splits": "split", "product_ids": "product_id", "coarse_labels": "coarse_label",
                   "groups": "group"}
"""The per-item fields a number reads (classification, relevance, protocol membership), by the name of their
digest in :meth:`Catalog.identity`. A new field a protocol reads belongs here."""


@dataclass(frozen=True)
class Catalog:
    """An ordered, immutable collection of items from one source.

    Order matters: embeddings are aligned with ``items`` and cache chunks are cut along it.
    """

    name: str
    root: Path
    items: tuple[CatalogItem, ...]
    description: str = ""
    ignored: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    """Files seen while scanning but not taken as items, with the reason (hidden, not an image)."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for item in self.items:
            if item.item_id in seen:
                raise ValueError(f"catalogue {self.name!r}: duplicate item id {item.item_id!r}")
            seen.add(item.item_id)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self.items)

    @property
    def ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    @property
    def labels(self) -> list[str]:
        return [item.label for item in self.items]

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names in order of first appearance."""
        return tuple(dict.fromkeys(item.split for item in self.items))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({item.label for item in self.items}))

    def subset(self, item_ids: Iterable[str], name: str | None = None) -> Catalog:
        """The items whose ids are given, in catalogue order."""
        wanted = set(item_ids)
        return self._with_items(tuple(i for i in self.items if i.item_id in wanted), name)

    def select_splits(self, *splits: str) -> Catalog:
        """The items of the given splits; an unknown split name is an error, not an empty set."""
        unknown = [s for s in splits if s not in self.splits]
        if unknown:
            raise ValueError(
                f"catalogue {self.name!r} has no split {unknown[0]!r}; its splits are {list(self.splits)}"
            )
        chosen = set(splits)
        suffix = "+".join(splits)
        return self._with_items(tuple(i for i in self.items if i.split in chosen), f"{self.name}[{suffix}]")

    def query_gallery(self, query_splits: Sequence[str], gallery_splits: Sequence[str]) -> tuple[Catalog, Catalog]:
        """Query and gallery views, e.g. (``["test"]``, ``["train", "val"]``)."""
        return self.select_splits(*query_splits), self.select_splits(*gallery_splits)

    def head(self, n: int) -> Catalog:
        return self._with_items(self.items[:n], f"{self.name}[:{n}]")

    def per_class(self, n: int) -> Catalog:
        """At most ``n`` items of every class, in catalogue order (small, balanced subsets)."""
        counts: dict[str, int] = {}
        kept = []
        for item in self.items:
            if counts.get(item.label, 0) < n:
                counts[item.label] = counts.get(item.label, 0) + 1
                kept.append(item)
        return self._with_items(tuple(kept), f"{self.name}[{n}/class]")

    def identity(self) -> dict[str, str]:
        """Digests of what decides a number, apart from the photos' bytes, one per part so that a changed
        key can say *what* changed: ``items`` (ids and paths relative to ``root``, in catalogue order) and
        one per field a protocol or a classifier reads (:data:`IDENTITY_FIELDS`: labels, splits, product ids,
        coarse labels). A relabel or a re-split changes its part; a moved catalogue changes nothing. The
        bytes are digested by content where the embeddings' memo lives (``bench.context``)."""
        parts = {"items": _digest([item.item_id, _relative(item.image_path, self.root)] for item in self.items)}
        for part, name in IDENTITY_FIELDS.items():
            parts[part] = _digest([item.item_id, getattr(item, name)] for item in self.items)
        return parts

    def _with_items(self, items: tuple[CatalogItem, ...], name: str | None) -> Catalog:
        return replace(self, items=items, name=name or self.name)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _digest(rows: Iterable[list[str | None]]) -> str:
    """SHA-256 (first 20 hex) of one JSON line per row: unambiguous for any text, and ``None`` is not ``"None"``."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row).encode() + b"\n")
    return digest.hexdigest()[:20]
