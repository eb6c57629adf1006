"""Score one protocol: index the gallery, search the queries, compute every retrieval metric.

The vector database answers the top-k search, as it would in production, and every metric of
depth <= k reads its answer. Metrics that need the whole ranking or a depth beyond k (MAP@R and
R-precision when a class has more than k gallery items, full MAP) come from exact search, and
the database's recall@k against exact search is reported beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shelfsight.bench.leakage import DedupePolicy, DuplicateDecision, duplicate_leakage
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import count_relevant, full_ranking_average_precision, retrieval_report
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex, SearchResult, VectorIndex, recall_against_exact

IndexFactory = Callable[[str, int], VectorIndex]
"""(collection name, dimension) -> an empty index."""


@dataclass(frozen=True)
class ProtocolSplit:
    """The query and gallery sides of a protocol, as aligned arrays."""

    query_ids: list[str]
    query_vectors: np.ndarray
    query_keys: np.ndarray
    gallery_ids: list[str]
    gallery_vectors: np.ndarray
    gallery_keys: np.ndarray


def split_for(protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings) -> ProtocolSplit:
    """Queries and gallery among the embedded items (skipped files take part in neither)."""
    items = {item.item_id: item for item in catalog}
    rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}

    def side(splits: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids = [i for i in embeddings.ids if items[i].split in splits and protocol.takes_part(items[i])]
        keys = np.array([protocol.key(items[i]) for i in ids], dtype=object)
        return ids, embeddings.vectors[[rows[i] for i in ids]], keys

    query_ids, query_vectors, query_keys = side(protocol.query_splits)
    gallery_ids, gallery_vectors, gallery_keys = side(protocol.gallery_splits)
    if not query_ids or not gallery_ids:
        raise ValueError(f"protocol {protocol.name!r}: no embedded {'queries' if not query_ids else 'gallery items'}"
                         f" in splits {protocol.query_splits if not query_ids else protocol.gallery_splits}")
    return ProtocolSplit(query_ids, query_vectors, query_keys, gallery_ids, gallery_vectors, gallery_keys)


EXAMPLE_QUERIES = 8
EXAMPLE_DEPTH = 5


def retrieval_examples(data: ProtocolSplit, answer: SearchResult, catalog: Catalog, protocol: str,
                       n_queries: int = EXAMPLE_QUERIES, depth: int = EXAMPLE_DEPTH) -> list[dict[str, object]]:
    """A few queries with their top neighbours, for the report's retrieval grids.

    The queries are drawn with a seed fixed per protocol from the sorted query ids, so every model and
    strategy of a run shows the same queries side by side.
    """
    paths = {item.item_id: str(item.image_path) for item in catalog}
    position = {item_id: row for row, item_id in enumerate(data.query_ids)}
    ordered = sorted(data.query_ids)
    rng = np.random.default_rng(sum(protocol.encode()))
    chosen = sorted(rng.choice(len(ordered), size=min(n_queries, len(ordered)), replace=False).tolist())
    gallery_row = {item_id: row for row, item_id in enumerate(data.gallery_ids)}
    examples: list[dict[str, object]] = []
    for pick in chosen:
        query_id = ordered[pick]
        row = position[query_id]
        neighbours = [gid for gid in answer.ids[row][:depth] if gid]
        examples.append({
            "query": query_id, "query_path": paths.get(query_id, ""), "query_key": str(data.query_keys[row]),
            "neighbours": [{"id": gid, "path": paths.get(gid, ""), "key": str(data.gallery_keys[gallery_row[gid]]),
                            "score": float(answer.scores[row][rank]),
                            "relevant": bool(data.gallery_keys[gallery_row[gid]] == data.query_keys[row])}
                           for rank, gid in enumerate(neighbours)],
        })
    return examples


@dataclass(frozen=True)
class ProtocolScores:
    """One protocol's scores: metric means, details for the cell's record, and the per-query scores
    (one row per query with a ``query`` id column) that intervals and paired tests read."""

    metrics: dict[str, float]
    details: dict[str, object]
    per_query: pd.DataFrame


def evaluate_protocol(
    protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings, *, make_index: IndexFactory,
    collection: str, k: int = 100, ks: tuple[int, ...] = (1, 5, 10), full_map: bool = True,
    keep_collection: bool = False, dedupe: DedupePolicy | DuplicateDecision | None = None,
) -> ProtocolScores:
    """Index the gallery, search the queries, score every metric. The index is dropped afterwards (a
    Milvus collection per cell would otherwise pile up) unless ``keep_collection``. ``dedupe`` (default:
    warn about byte-identical copies): queries with a duplicate in the gallery, counted or left out; the
    bench passes the run's ``DuplicateDecision``, so every cell of a dataset leaves out the same queries."""
    data = split_for(protocol, catalog, embeddings)
    same_set = protocol.leave_one_out
    exclude = data.query_ids if same_set else None
    available = len(data.gallery_ids) - (1 if same_set else 0)
    depth = max(min(k, available), max(ks))  # beyond the gallery, results are padded
    answer = _search_index(make_index(collection, embeddings.dim), data, depth, exclude, keep_collection)
    relevant = count_relevant(data.query_keys, data.gallery_keys, same_set=same_set)
    deep = int(relevant.max()) if len(relevant) else 0
    exact = ExactIndex()
    exact.add(data.gallery_ids, data.gallery_vectors)
    # one exact search serves both the recall check (its first `depth` columns: ties are broken
    # by position, so they equal a search at that depth) and the deep metrics
    deep_answer = exact.search(data.query_vectors, max(depth, deep), exclude_ids=exclude)
    reference = SearchResult(indices=deep_answer.indices[:, :depth], scores=deep_answer.scores[:, :depth],
                             ids=[row[:depth] for row in deep_answer.ids])
    report = retrieval_report(data.query_keys, data.gallery_keys, answer.indices, same_set=same_set, ks=ks)
    per_query = {name: values for name, values in report.per_query.items() if name not in DEEP_METRICS}
    # MAP@R and R-precision need each query's R ranks, which the exact search always holds: exact, not bounds
    deep_report = retrieval_report(data.query_keys, data.gallery_keys, deep_answer.indices, same_set=same_set,
                                   ks=ks)
    per_query |= {name: deep_report.per_query[name] for name in DEEP_METRICS}
    if full_map:
        per_query["MAP"] = full_ranking_average_precision(data.query_vectors, data.gallery_vectors, data.query_keys,
                                                          data.gallery_keys, exclude_self=same_set)
    keep, duplicates = duplicate_leakage(protocol, catalog, embeddings, data.query_ids, dedupe or DedupePolicy(),
                                         per_query)
    metrics = {name: _nan_mean(values[keep]) for name, values in per_query.items()}
    metrics[f"index_recall@{depth}"] = recall_against_exact(answer, reference)
    details: dict[str, object] = {"queries": len(data.query_ids), "gallery": len(data.gallery_ids), "k": depth,
               "excluded_queries": report.n_excluded, "max_relevant": deep, "leave_one_out": same_set,
               "relevance": protocol.relevance,
               "examples": retrieval_examples(data, answer, catalog, protocol.name)}
    if duplicates is not None:
        details["duplicates"] = duplicates
    frame = pd.DataFrame({"query": data.query_ids, **per_query})[keep].reset_index(drop=True)
    return ProtocolScores(metrics=metrics, details=details, per_query=frame)


DEEP_METRICS = ("MAP@R", "R-precision")
"""Metrics read from the exact search to each query's R-th neighbour, however deep that is."""


def _search_index(index: VectorIndex, data: ProtocolSplit, depth: int, exclude: list[str] | None,
                  keep: bool) -> SearchResult:
    try:
        index.add(data.gallery_ids, data.gallery_vectors, labels=[str(x) for x in data.gallery_keys])
        return index.search(data.query_vectors, depth, exclude_ids=exclude)
    finally:
        drop = getattr(index, "drop", None)
        if not keep and callable(drop):
            drop()
        else:
            index.close()


def _nan_mean(values: np.ndarray) -> float:
    """Mean over the queries that have a relevant item; NaN when none has (every metric alike)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")
