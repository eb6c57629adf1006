"""Top-k over a FAISS index that cannot filter, with ties broken by position, as every shelfsight index does.

``IndexPQ`` refuses ID selectors and compressed codes tie often (two items with one PQ code, or one Hamming
distance, score the same), so a plain ``search(k)`` would return an arbitrary member of a tie and ignore
deletes and filters. :func:`stable_top_k` fetches deeper instead: a row is searched again, twice as deep,
while it holds fewer than k allowed hits or its k-th allowed score equals the last score fetched (the tie
may run past the fetch). The answer then equals a full sort by (score, position) of the allowed items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""(row numbers of the queries, depth) -> (scores, positions), both (rows, depth), higher scores closer."""


def stable_top_k(search: Searcher, n_queries: int, n_items: int, k: int, allowed: np.ndarray,
                 excluded: list[int], *, margin: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, positions)`` of shape ``(n_queries, k)``: best first, ties by lower position, only
    ``allowed`` positions, never ``excluded[q]`` for query q; ``-inf`` / ``-1`` pad rows with fewer hits."""
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    positions = np.full((n_queries, k), -1, dtype=np.int64)
    wanted = min(k, int(allowed.sum()))
    if wanted == 0 or n_queries == 0:
        return scores, positions
    hidden = int((~allowed).sum()) + 1  # disallowed items and the excluded one may fill the first places
    depth = min(n_items, k + hidden + margin)
    rows = np.arange(n_queries)
    while len(rows):
        found_scores, found = search(rows, depth)
        pending = []
        for row, row_scores, row_found in zip(rows.tolist(), found_scores, found, strict=True):
            kept = _kept(row_scores, row_found, allowed, excluded[row])
            if depth < n_items and _may_continue(kept, row_scores, wanted):
                pending.append(row)
                continue
            ordered = kept[np.lexsort((kept["position"], -kept["score"]))][:k]
            scores[row, :len(ordered)], positions[row, :len(ordered)] = ordered["score"], ordered["position"]
        rows, depth = np.array(pending, dtype=np.int64), min(n_items, depth * 2)
    return scores, positions


def _kept(row_scores: np.ndarray, row_found: np.ndarray, allowed: np.ndarray, excluded: int) -> np.ndarray:
    """The fetched hits that may be returned, as a record array (score, position)."""
    valid = (row_found >= 0) & (row_found != excluded)
    valid[valid] &= allowed[row_found[valid]]
    kept = np.empty(int(valid.sum()), dtype=[("score", np.float32), ("position", np.int64)])
    kept["score"], kept["position"] = row_scores[valid], row_found[valid]
    return kept


def _may_continue(kept: np.ndarray, row_scores: np.ndarray, wanted: int) -> bool:
    """Whether a deeper fetch could change the row: too few hits, or the k-th ties the last one fetched."""
    if len(kept) < wanted:
        return True
    kth = np.sort(kept["score"])[::-1][wanted - 1]
    return bool(kth <= np.min(row_scores[np.isfinite(row_scores)], initial=np.inf))
