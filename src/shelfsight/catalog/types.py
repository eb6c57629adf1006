"""The catalogue: product images with labels and splits, as plain frozen data."""

from __future__ import annotations

import hashlib
import os
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

    def fingerprint(self) -> str:
        """A digest of what decides the pixels: ids, file locations, sizes and mtimes.

        Paths enter relative to ``root`` so that a moved catalogue keeps its cache; labels do not
        enter, since relabelling does not change an embedding.
        """
        digest = hashlib.sha256()
        for item in self.items:
            try:
                stat = os.stat(item.image_path)
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            digest.update(f"{item.item_id}\0{_relative(item.image_path, self.root)}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()

    def _with_items(self, items: tuple[CatalogItem, ...], name: str | None) -> Catalog:
        return replace(self, items=items, name=name or self.name)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
