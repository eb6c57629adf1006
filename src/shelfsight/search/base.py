"""The one seam every vector index implements, and the plain result it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of each query, best first.

    ``indices`` are positions in the order items were added (``-1`` pads rows with fewer than k
    hits, e.g. under a filter); ``ids`` the same as item ids (``""`` for padding); ``scores`` are
    similarities, higher is closer (cosine for L2-normalised vectors; padding is ``-inf``).
    Ties are broken by the lower insertion position, so results are deterministic.
    """

    indices: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32
    ids: list[list[str]]


SHOWN = 5
"""How many offending ids or rows an error message names before it counts the rest."""


def checked_vectors(vectors: np.ndarray, ids: Sequence[str], dim: int | None) -> np.ndarray:
    """Vectors to add as contiguous float32 of shape (len(ids), dim), finite: or a ``ValueError`` naming the
    offending ids (for the backends that keep their own arrays)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(ids) or (dim and array.shape[1] != dim):
        raise ValueError(f"expected vectors of shape ({len(ids)}, {dim or 'D'}), got {array.shape}")
    check_finite(array, ids)
    return array


def checked_queries(vectors: np.ndarray, dim: int | None, k: int) -> np.ndarray:
    """Queries as contiguous float32 of shape (Q, dim), finite, with ``k >= 0``: or a ``ValueError`` saying
    what is wrong (for the backends that search their own arrays)."""
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    if queries.ndim != 2 or (dim and queries.shape[1] != dim):
        raise ValueError(f"expected queries of shape (Q, {dim or 'D'}), got {queries.shape}")
    check_finite(queries)
    if k < 0:
        raise ValueError(f"need k >= 0, got {k}")
    return queries


def check_finite(vectors: np.ndarray, ids: Sequence[str] | None = None) -> None:
    """Refuse NaN or infinite vectors before an index stores or searches them (every backend calls this).

    With ``ids`` (vectors to add, aligned with them) the ``ValueError`` names the first few offending ids
    and how many there are; without (queries) it names the offending query rows. A NaN would otherwise be
    stored and silently rank last, or first, depending on the backend.
    """
    array = np.asarray(vectors)
    if array.ndim != 2 or array.size == 0:
        return
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad) == 0:
        return
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    if ids is not None:
        named = ", ".join(repr(str(ids[i])) for i in bad[:SHOWN])
        raise ValueError(f"{len(bad)} of {len(array)} vectors to add hold NaN or infinite values: ids {named}{more}; "
                         "embed those items again or leave them out (extraction reports them as skipped)")
    rows = ", ".join(str(int(i)) for i in bad[:SHOWN])
    raise ValueError(f"{len(bad)} of {len(array)} query vectors hold NaN or infinite values: rows {rows}{more}")


@runtime_checkable
class VectorIndex(Protocol):
    """Add L2-normalised float32 vectors with ids and labels; search them for the top k.

    Every backend refuses non-finite vectors, to add or to search, with ``check_finite``'s ``ValueError``."""

    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str] | None = None,
            splits: Sequence[str] | None = None) -> None: ...

    def search(self, vectors: np.ndarray, k: int, *, label: str | None = None, split: str | None = None,
               exclude_ids: Sequence[str | None] | None = None) -> SearchResult:
        """``label``/``split`` keep only gallery items with that value; ``exclude_ids[q]`` (one id per
        query, or None) is never returned for query q: a query is never its own neighbour."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class ItemTable:
    """Ids, labels, splits and liveness of the items of an in-memory index, by insertion position.

    Positions never move (a delete only marks the item dead), so they are the ``indices`` a
    ``SearchResult`` promises; ``allowed`` turns deletes and label/split filters into one mask.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.labels: list[str] = []
        self.splits: list[str] = []
        self.alive: list[bool] = []
        self.position: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.position)

    def add(self, ids: Sequence[str], labels: Sequence[str] | None, splits: Sequence[str] | None) -> None:
        """Register new items; duplicate ids (in the index or in the batch) are refused before any change."""
        for name, column in (("labels", labels), ("splits", splits)):
            if column is not None and len(column) != len(ids):
                raise ValueError(f"{name} has {len(column)} entries for {len(ids)} ids")
        seen: set[str] = set()
        for item_id in ids:
            if item_id in self.position or item_id in seen:
                raise ValueError(f"duplicate id {item_id!r}: ids must be unique in an index")
            seen.add(item_id)
        for item_id in ids:
            self.position[item_id] = len(self.ids)
            self.ids.append(item_id)
            self.alive.append(True)
        self.labels.extend(labels if labels is not None else [""] * len(ids))
        self.splits.extend(splits if splits is not None else [""] * len(ids))

    def delete(self, ids: Sequence[str]) -> None:
        for item_id in ids:
            position = self.position.pop(item_id, None)
            if position is not None:
                self.alive[position] = False

    def allowed(self, label: str | None, split: str | None) -> np.ndarray:
        """Live items matching the filters, as a boolean mask over positions."""
        mask = np.array(self.alive, dtype=bool)
        if label is not None:
            mask &= np.array(self.labels, dtype=object) == label
        if split is not None:
            mask &= np.array(self.splits, dtype=object) == split
        return mask

    def excluded_positions(self, exclude_ids: Sequence[str | None] | None, n_queries: int) -> list[int]:
        """Per query, the position never to return (-1 for none); one entry per query is required."""
        wanted = list(exclude_ids) if exclude_ids is not None else [None] * n_queries
        if len(wanted) != n_queries:
            raise ValueError(f"need one exclude id per query; got {len(wanted)} for {n_queries} queries")
        return [self.position.get(i, -1) if i is not None else -1 for i in wanted]

    def result_ids(self, indices: np.ndarray) -> list[list[str]]:
        return [[self.ids[i] if i >= 0 else "" for i in row] for row in indices.tolist()]
