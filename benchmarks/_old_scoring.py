"""Scoring version 3's path for one leave-one-out cell, kept for benchmarks/retrieval_eval.py to time against.

Version 3 copied the vectors for each side of the protocol and again in the exact index, searched every query in
the vector database, ran an exact search to the deepest R for MAP@R and R-precision, and ranked every row by a
stable argsort on numpy's products for full-ranking MAP: three ``Q x N`` products and a sort of each row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shelfsight.metrics import count_relevant, encode_labels, retrieval_report
from shelfsight.search import ExactIndex


def sorted_full_ranking_ap(queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray,
                           gallery_labels: np.ndarray, *, exclude_self: bool, block_size: int = 512) -> np.ndarray:
    """Version 3's ``full_ranking_average_precision`` (groups aside): a stable argsort of every row."""
    query_codes, gallery_codes = encode_labels(query_labels, gallery_labels)
    n_relevant = count_relevant(query_labels, gallery_labels, same_set=exclude_self)
    result = np.empty(len(queries))
    for start in range(0, len(queries), block_size):
        stop = min(start + block_size, len(queries))
        scores = queries[start:stop] @ gallery.T
        relevant = gallery_codes[None, :] == query_codes[start:stop, None]
        if exclude_self:
            rows = np.arange(stop - start)
            scores[rows, rows + start] = -np.inf
            relevant[rows, rows + start] = False
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(relevant, order, axis=1)
        rows_hit, ranks0 = np.nonzero(ranked)
        row_start = np.concatenate([[0], np.cumsum(ranked.sum(axis=1))])[rows_hit]
        hits = np.arange(len(rows_hit)) - row_start + 1
        summed = np.bincount(rows_hit, weights=hits / (ranks0 + 1), minlength=stop - start)
        block = np.full(stop - start, np.nan)
        np.divide(summed, n_relevant[start:stop], out=block, where=n_relevant[start:stop] > 0)
        result[start:stop] = block
    return result


def _lite_extrapolated(make_index: Callable[[str, int], Any], ids: list[str], gallery: np.ndarray,
                       queries: np.ndarray, searched: int) -> float:
    """Seconds version 3 spent in Milvus Lite: the insert, measured, plus the search of every query, extrapolated
    from ``searched`` of them (searching 60k takes ~20 min here)."""
    index = make_index("old_sop", gallery.shape[1])
    try:
        started = time.perf_counter()
        index.add(ids, gallery, labels=["x"] * len(ids))
        index.search(queries[:1], 1)  # the flush and load that make the rows searchable
        inserted = time.perf_counter() - started
        started = time.perf_counter()
        index.search(queries[:searched], 100, exclude_ids=ids[:searched])
        per_query = (time.perf_counter() - started) / searched
    finally:
        index.drop()
    return inserted + per_query * len(queries)


def old_cell(vectors: np.ndarray, labels: np.ndarray, lite: Callable[[str, int], Any] | None,
             index_queries: int) -> tuple[dict[str, float], float]:
    """(metrics, seconds of Milvus Lite work extrapolated to every query: 0 without ``lite``)."""
    n = len(vectors)
    ids = [f"i{i:06d}" for i in range(n)]
    query_vectors, gallery_vectors = vectors[np.arange(n)], vectors[np.arange(n)]  # split_for's two copies
    index_seconds, answer = 0.0, None
    if lite is None:
        index = ExactIndex()
        index.add(ids, np.concatenate([gallery_vectors]))  # version 3's ExactIndex concatenated its chunks
        answer = index.search(query_vectors, 100, exclude_ids=ids)
        del index
    else:
        index_seconds = _lite_extrapolated(lite, ids, gallery_vectors, query_vectors, min(index_queries, n))
    n_relevant = count_relevant(labels, labels, same_set=True)
    exact = ExactIndex()
    exact.add(ids, np.concatenate([gallery_vectors]))
    deep = exact.search(query_vectors, max(100, int(n_relevant.max())), exclude_ids=ids)
    top = answer.indices if answer is not None else deep.indices[:, :100]  # FLAT: the database's answer
    shallow = retrieval_report(labels, labels, top, same_set=True, ks=(1, 5, 10)).metrics
    deep_metrics = retrieval_report(labels, labels, deep.indices, same_set=True, ks=(1, 5, 10)).metrics
    full = sorted_full_ranking_ap(query_vectors, gallery_vectors, labels, labels, exclude_self=True)
    return {"R@1": shallow["R@1"], "mMP@5": shallow["mMP@5"], "MAP@R": deep_metrics["MAP@R"],
            "R-precision": deep_metrics["R-precision"], "MAP": float(np.nanmean(full))}, index_seconds
