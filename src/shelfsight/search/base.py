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


@runtime_checkable
class VectorIndex(Protocol):
    """Add L2-normalised float32 vectors with ids and labels; search them for the top k."""

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
