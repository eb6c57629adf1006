"""Retrieval metrics of the benchmark protocol, computed from neighbours searched once.

The search (e.g. ``ExactIndex``) runs once; its ``(Q, K)`` neighbour indices become one boolean
relevance matrix, and every metric reads that matrix plus the per-query count of relevant gallery
items. Nothing is re-searched per metric and nothing of size ``Q x N`` is built, which is what
lets these metrics run on catalogue-sized sets (the pytorch-metric-learning design).

Conventions:
  * a query with no relevant item in the gallery is excluded from every average (per-query
    values are NaN for it) and counted in ``RetrievalReport.n_excluded``;
  * in the same-set (leave-one-out) protocol a query is never its own neighbour: the caller
    searches with the query excluded (``exclude_ids``), and ``count_relevant`` subtracts 1;
  * with groups (``query_groups``/``gallery_groups``: a seller, a listing, a shoot; ``None`` for no group) a
    query never counts the gallery items of its own group: the caller searches with them excluded, they are
    not relevant, and a neighbour of the query's own group raises (the leave-one-out rule, per group);
  * neighbour index ``-1`` is padding (fewer hits than k) and is never relevant;
  * a neighbour listed twice in one row is refused: it would count one relevant item twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RetrievalReport", "average_precision", "average_precision_per_query", "count_relevant", "encode_groups",
    "encode_labels", "map_at_r", "map_at_r_per_query", "mmp_at_k",
    "mmp_at_k_per_query", "mrr", "mrr_per_query", "ndcg_at_k", "ndcg_at_k_per_query", "precision_at_k",
    "precision_at_k_per_query", "r_precision", "r_precision_per_query", "recall_at_k", "recall_at_k_per_query",
    "relevance", "retrieval_report",
]


# --- labels and relevance ---------------------------------------------------------------------------------------

def encode_labels(query_labels: np.ndarray | Sequence[object],
                  gallery_labels: np.ndarray | Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Map string or int labels to shared int codes once, so every later comparison is an integer compare."""
    queries, gallery = np.asarray(query_labels), np.asarray(gallery_labels)
    if queries.ndim != 1 or gallery.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shapes {queries.shape} and {gallery.shape}")
    _, codes = np.unique(np.concatenate([queries, gallery]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(queries)], codes[len(queries):]


def relevance(query_labels: np.ndarray | Sequence[object], gallery_labels: np.ndarray | Sequence[object],
              neighbour_indices: np.ndarray) -> np.ndarray:
    """``(Q, K)`` bool: neighbour ``[q, j]`` has query q's label. Padding (``-1``) is never relevant."""
    return _relevance_from_codes(*encode_labels(query_labels, gallery_labels), neighbour_indices)


def count_relevant(query_labels: np.ndarray | Sequence[object], gallery_labels: np.ndarray | Sequence[object], *,
                   same_set: bool, query_groups: np.ndarray | Sequence[object] | None = None,
                   gallery_groups: np.ndarray | Sequence[object] | None = None) -> np.ndarray:
    """``(Q,)`` int: gallery items sharing each query's label, minus the query itself when ``same_set``, minus
    the items of the query's own group when groups are given (the query itself is one of them).

    O(Q + N) through per-label and per-(label, group) counts, never a Q x N comparison.
    """
    codes = encode_labels(query_labels, gallery_labels)
    groups = encode_groups(query_groups, gallery_groups, len(codes[0]), len(codes[1]))
    return _count_from_codes(*codes, same_set=same_set, groups=groups)


def encode_groups(query_groups: np.ndarray | Sequence[object] | None, gallery_groups: np.ndarray | Sequence[object]
                  | None, n_queries: int, n_gallery: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Shared int codes of the groups, ``-1`` for an item without one; None when neither side has a group."""
    if query_groups is None and gallery_groups is None:
        return None
    queries = np.asarray(query_groups if query_groups is not None else [None] * n_queries, dtype=object)
    gallery = np.asarray(gallery_groups if gallery_groups is not None else [None] * n_gallery, dtype=object)
    if queries.shape != (n_queries,) or gallery.shape != (n_gallery,):
        raise ValueError(f"need one group (or None) per item: got {queries.shape} and {gallery.shape} for "
                         f"{n_queries} queries and {n_gallery} gallery items")
    both = np.concatenate([queries, gallery])
    present = np.array([value is not None for value in both], dtype=bool)
    codes = np.full(len(both), -1, dtype=np.int64)
    if present.any():
        codes[present] = np.unique(both[present].astype(str), return_inverse=True)[1].reshape(-1)
    return codes[:n_queries], codes[n_queries:]


def _relevance_from_codes(query_codes: np.ndarray, gallery_codes: np.ndarray, neighbour_indices: np.ndarray
                          ) -> np.ndarray:
    indices = np.asarray(neighbour_indices)
    if indices.ndim != 2 or len(indices) != len(query_codes):
        raise ValueError(f"neighbour_indices must be ({len(query_codes)}, K), got shape {indices.shape}")
    if indices.size and int(indices.max()) >= len(gallery_codes):
        raise ValueError(f"neighbour index {int(indices.max())} is outside a gallery of {len(gallery_codes)}")
    valid = indices >= 0
    if not len(gallery_codes):
        return np.zeros(indices.shape, dtype=bool)
    return (gallery_codes[np.where(valid, indices, 0)] == query_codes[:, None]) & valid


def _count_from_codes(query_codes: np.ndarray, gallery_codes: np.ndarray, *, same_set: bool,
                      groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    if same_set and len(query_codes) != len(gallery_codes):
        raise ValueError(f"same_set needs as many queries as gallery items, got {len(query_codes)} "
                         f"and {len(gallery_codes)}")
    n_codes = int(max(query_codes.max(initial=-1), gallery_codes.max(initial=-1))) + 1
    per_label = np.bincount(gallery_codes, minlength=n_codes)
    counts = per_label[query_codes].astype(np.int64) - int(same_set)
    if groups is None:
        return counts
    # a query of group g loses the relevant gallery items of g, itself included when same_set (so add back the 1
    # subtracted above): (label, group) pairs counted once, O(Q + N)
    grouped = groups[1] >= 0
    pairs = np.concatenate([np.stack([gallery_codes, groups[1]], 1)[grouped], np.stack([query_codes, groups[0]], 1)])
    inverse = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
    own = np.bincount(inverse[:grouped.sum()], minlength=len(pairs))[inverse[grouped.sum():]]
    return np.where(groups[0] >= 0, counts - own + int(same_set), counts)


# --- per-query metrics ------------------------------------------------------------------------------------------

def _checked(relevant: np.ndarray, n_relevant: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rel, n_rel = np.asarray(relevant, dtype=bool), np.asarray(n_relevant, dtype=np.int64)
    if rel.ndim != 2 or n_rel.shape != (len(rel),):
        raise ValueError(f"expected relevance (Q, K) and n_relevant (Q,), got {rel.shape} and {n_rel.shape}")
    if k is not None and not 1 <= k <= rel.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= the {rel.shape[1]} neighbour columns (search with a larger k)")
    return rel, n_rel


def _per_query(numerator: np.ndarray | float, denominator: np.ndarray | float, n_relevant: np.ndarray
               ) -> np.ndarray:
    """numerator / denominator in float64; NaN for queries with nothing relevant (excluded, not scored 0)."""
    out = np.full(len(n_relevant), np.nan)
    np.divide(numerator, denominator, out=out, where=n_relevant > 0)
    return out


def _precision_at_hits(relevant: np.ndarray) -> np.ndarray:
    """``P@i * rel_i`` for every rank i: the summand shared by every average-precision variant."""
    ranks = np.arange(1, relevant.shape[1] + 1)
    return np.cumsum(relevant, axis=1) / ranks * relevant


def _within_r(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Relevance restricted to each query's first R = n_relevant ranks."""
    return relevant & (np.arange(relevant.shape[1]) < n_relevant[:, None])


def precision_at_k_per_query(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Relevant share of the top k (padding counts as a miss)."""
    rel, n_rel = _checked(relevant, n_relevant, k)
    return _per_query(rel[:, :k].sum(axis=1), k, n_rel)


def recall_at_k_per_query(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """1 if any relevant item is in the top k: the metric-learning R@k (mR@1 is k=1)."""
    rel, n_rel = _checked(relevant, n_relevant, k)
    return _per_query(rel[:, :k].any(axis=1).astype(np.float64), 1.0, n_rel)


def mmp_at_k_per_query(relevant: np.ndarray, n_relevant: np.ndarray, k: int = 5) -> np.ndarray:
    """Hits in the top k over min(k, R): the Google Universal Image Embedding mMP@k, so a product with only
    two other photos can still score 1."""
    rel, n_rel = _checked(relevant, n_relevant, k)
    return _per_query(rel[:, :k].sum(axis=1), np.minimum(k, n_rel), n_rel)


def r_precision_per_query(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Precision in the top R = n_relevant (a lower bound when R exceeds the K columns)."""
    rel, n_rel = _checked(relevant, n_relevant)
    return _per_query(_within_r(rel, n_rel).sum(axis=1), n_rel, n_rel)


def map_at_r_per_query(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """MAP@R (Musgrave et al. 2020): sum over i <= R of P@i * rel_i, over R; rewards ranking all R items first."""
    rel, n_rel = _checked(relevant, n_relevant)
    return _per_query(_precision_at_hits(_within_r(rel, n_rel)).sum(axis=1), n_rel, n_rel)


def average_precision_per_query(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Sum of P@i * rel_i over the K ranks given, over n_relevant: full AP when K covers the gallery."""
    rel, n_rel = _checked(relevant, n_relevant)
    return _per_query(_precision_at_hits(rel).sum(axis=1), n_rel, n_rel)


def mrr_per_query(relevant: np.ndarray, n_relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """1 / rank of the first relevant item within the top k (all K columns by default), 0 if none."""
    rel, n_rel = _checked(relevant, n_relevant, k)
    top = rel[:, :k]
    first = np.argmax(top, axis=1)
    return _per_query(np.where(top.any(axis=1), 1.0 / (first + 1), 0.0), 1.0, n_rel)


def ndcg_at_k_per_query(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-gain NDCG@k with a log2(rank + 1) discount; the ideal ranking holds min(k, R) relevant items."""
    rel, n_rel = _checked(relevant, n_relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.clip(n_rel, 0, k)]
    return _per_query(rel[:, :k] @ discounts, ideal, n_rel)


# --- averages over the queries that have a relevant item --------------------------------------------------------

def _mean(per_query: np.ndarray) -> float:
    kept = per_query[~np.isnan(per_query)]
    return float(kept.mean()) if len(kept) else float("nan")


def precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean P@k."""
    return _mean(precision_at_k_per_query(relevant, n_relevant, k))


def recall_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean R@k (mR@1 for k=1)."""
    return _mean(recall_at_k_per_query(relevant, n_relevant, k))


def mmp_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int = 5) -> float:
    """Mean mMP@k (the paper's headline mMP@5)."""
    return _mean(mmp_at_k_per_query(relevant, n_relevant, k))


def r_precision(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean R-precision."""
    return _mean(r_precision_per_query(relevant, n_relevant))


def map_at_r(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean MAP@R."""
    return _mean(map_at_r_per_query(relevant, n_relevant))


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean average precision over the K ranks given (MAP@K; full MAP when K covers the gallery)."""
    return _mean(average_precision_per_query(relevant, n_relevant))


def mrr(relevant: np.ndarray, n_relevant: np.ndarray, k: int | None = None) -> float:
    """Mean reciprocal rank within the top k."""
    return _mean(mrr_per_query(relevant, n_relevant, k))


def ndcg_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean binary NDCG@k."""
    return _mean(ndcg_at_k_per_query(relevant, n_relevant, k))


# --- the report -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrievalReport:
    """Averaged metrics over the ``n_queries`` queries that have a relevant item; ``n_excluded`` had none.

    ``per_query`` holds each metric's ``(Q,)`` scores (NaN for excluded queries) so that intervals and
    paired tests can be computed over queries. ``k`` is the number of neighbour columns the metrics read
    (``MAP@K`` averages AP over those K ranks). ``warning`` says when some query has more relevant items
    than K, so MAP@R and R-precision computed from these columns are truncated (lower bounds).
    """

    metrics: dict[str, float]
    n_queries: int
    n_excluded: int
    k: int
    warning: str | None = field(default=None)
    per_query: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def retrieval_report(query_labels: np.ndarray | Sequence[object], gallery_labels: np.ndarray | Sequence[object],
                     neighbour_indices: np.ndarray, *, same_set: bool, ks: Sequence[int] = (1, 5, 10),
                     query_groups: np.ndarray | Sequence[object] | None = None,
                     gallery_groups: np.ndarray | Sequence[object] | None = None) -> RetrievalReport:
    """Every protocol metric from one ``(Q, K)`` neighbour array, best first (``-1`` pads).

    ``same_set=True`` is the leave-one-out protocol (queries are the gallery, in the same order): the
    caller must already have excluded each query from its own neighbours (``exclude_ids`` in the index
    search); a query found among its own neighbours raises. Its own copy is not counted as relevant.
    With groups the same holds for every gallery item of the query's own group. A row naming one gallery
    item twice raises too.
    """
    query_codes, gallery_codes = encode_labels(query_labels, gallery_labels)
    indices = np.asarray(neighbour_indices)
    if same_set:
        _reject_self_matches(indices)
    _reject_repeated_neighbours(indices)
    groups = encode_groups(query_groups, gallery_groups, len(query_codes), len(gallery_codes))
    rel = _relevance_from_codes(query_codes, gallery_codes, indices)
    if groups is not None:  # the same comparison as relevance, on group codes (-1: no group, never "own")
        _reject_own_group(_relevance_from_codes(*groups, indices) & (groups[0][:, None] >= 0))
    n_rel = _count_from_codes(query_codes, gallery_codes, same_set=same_set, groups=groups)
    if ks and max(ks) > rel.shape[1]:
        raise ValueError(f"ks={tuple(ks)} needs at least {max(ks)} neighbour columns, got {rel.shape[1]}")
    per_query = _per_query_at_ks(rel, n_rel, ks)
    per_query |= {"MAP@R": map_at_r_per_query(rel, n_rel), "R-precision": r_precision_per_query(rel, n_rel),
                  "MRR": mrr_per_query(rel, n_rel), "MAP@K": average_precision_per_query(rel, n_rel)}
    kept = n_rel > 0
    return RetrievalReport(metrics={name: _mean(values) for name, values in per_query.items()},
                           n_queries=int(kept.sum()), n_excluded=int((~kept).sum()), k=rel.shape[1],
                           warning=_truncation_warning(n_rel, rel.shape[1]), per_query=per_query)


def _reject_own_group(own: np.ndarray) -> None:
    if own.any():
        query, rank = (int(x) for x in np.argwhere(own)[0])
        raise ValueError(f"query {query} has a gallery item of its own group at rank {rank + 1}: search with the "
                         "query's group excluded, so a query never counts its own group's photos")


def _per_query_at_ks(rel: np.ndarray, n_rel: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    scores: dict[str, np.ndarray] = {}
    for name, metric in (("mMP", mmp_at_k_per_query), ("R", recall_at_k_per_query),
                         ("P", precision_at_k_per_query), ("NDCG", ndcg_at_k_per_query)):
        scores |= {f"{name}@{k}": metric(rel, n_rel, k) for k in ks}
    return scores


def _reject_repeated_neighbours(indices: np.ndarray) -> None:
    """A row listing one gallery item twice would count it twice: refuse it (padding ``-1`` may repeat)."""
    if indices.ndim != 2 or indices.shape[1] < 2:
        return
    ordered = np.sort(indices, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        query = int(np.argmax(repeated.any(axis=1)))
        item = int(ordered[query, 1:][repeated[query]][0])
        raise ValueError(f"query {query} lists gallery item {item} more than once among its neighbours; "
                         "a search result must name each item at most once")


def _reject_self_matches(indices: np.ndarray) -> None:
    if indices.ndim != 2:
        raise ValueError(f"neighbour_indices must be 2-d, got shape {indices.shape}")
    own = indices == np.arange(len(indices))[:, None]
    if own.any():
        query = int(np.argmax(own.any(axis=1)))
        raise ValueError(f"same_set=True but query {query} is among its own neighbours: search with the query "
                         "excluded (exclude_ids), so a query is never its own neighbour")


def _truncation_warning(n_relevant: np.ndarray, k: int) -> str | None:
    """Say so when K cannot hold every relevant item: MAP@R and R-precision are then only lower bounds."""
    over = n_relevant > k
    if not over.any():
        return None
    most = int(n_relevant.max())
    return (f"MAP@R and R-precision are truncated (lower bounds): {int(over.sum())} queries have more relevant "
            f"items (up to {most}) than the K={k} neighbours; search with k >= {most} for exact values")
