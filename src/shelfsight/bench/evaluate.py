"""Score one protocol: rank every query exactly, compute every retrieval metric, check the vector database.

Every metric comes from one exact ranking of all queries (``ExactIndex``, blocked matrix products): its top k
gives the metrics of depth <= k, and the same score blocks give each relevant item's rank over the whole
gallery (``RelevantRanks``: a count, not a sort), which MAP@R, R-precision and full-ranking MAP read. The
configured vector database indexes the gallery as production would and answers a seeded sample of the queries
(:data:`RECALL_QUERIES`, all of them when there are fewer): its recall@k against the exact answer is a metric of
its own. So a 60k-query leave-one-out protocol pays one ``Q x N`` product, not a database search per query.

Where items have groups (a seller, a listing, a shoot), a query never counts its own group's photos unless
``same_group="keep"``: they are left out of its ranking (the index is asked for enough extra depth to drop
them) and of its relevant items, as leave-one-out leaves out the query itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal
from zlib import crc32

import numpy as np
import pandas as pd

from shelfsight.bench.leakage import DedupePolicy, DuplicateDecision, duplicate_leakage
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import RelevantRanks, count_relevant, retrieval_report
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
    query_groups: np.ndarray | None = None
    """Each query's group (None for none) when some item has one; None when no item has (or they are kept)."""
    gallery_groups: np.ndarray | None = None

    def own_group(self) -> list[list[str]]:
        """Per query, the gallery ids of its own group (itself included in leave-one-out); empty without groups."""
        if self.query_groups is None or self.gallery_groups is None:
            return [[] for _ in self.query_ids]
        members: dict[object, list[str]] = {}
        for item_id, group in zip(self.gallery_ids, self.gallery_groups, strict=True):
            if group is not None:
                members.setdefault(group, []).append(item_id)
        return [members.get(group, []) if group is not None else [] for group in self.query_groups]


SameGroup = Literal["exclude", "keep"]


def split_for(protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings) -> ProtocolSplit:
    """Queries and gallery among the embedded items (skipped files take part in neither), with their groups
    when some item has one."""
    items = {item.item_id: item for item in catalog}
    rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}

    def side(splits: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids = [i for i in embeddings.ids if items[i].split in splits and protocol.takes_part(items[i])]
        keys = np.array([protocol.key(items[i]) for i in ids], dtype=object)
        return ids, _rows_of(embeddings.vectors, [rows[i] for i in ids]), keys

    query_ids, query_vectors, query_keys = side(protocol.query_splits)
    if protocol.gallery_splits == protocol.query_splits:  # leave-one-out: one array serves both sides
        gallery_ids, gallery_vectors, gallery_keys = query_ids, query_vectors, query_keys
    else:
        gallery_ids, gallery_vectors, gallery_keys = side(protocol.gallery_splits)
    if not query_ids or not gallery_ids:
        raise ValueError(f"protocol {protocol.name!r}: no embedded {'queries' if not query_ids else 'gallery items'}"
                         f" in splits {protocol.query_splits if not query_ids else protocol.gallery_splits}")
    split = ProtocolSplit(query_ids, query_vectors, query_keys, gallery_ids, gallery_vectors, gallery_keys)
    if all(items[i].group is None for i in (*query_ids, *gallery_ids)):
        return split
    return replace(split, query_groups=np.array([items[i].group for i in query_ids], dtype=object),
                   gallery_groups=np.array([items[i].group for i in gallery_ids], dtype=object))


def _rows_of(vectors: np.ndarray, positions: list[int]) -> np.ndarray:
    """``vectors[positions]``, without a copy when the positions are every row in order (a whole catalogue)."""
    if len(positions) == len(vectors) and np.array_equal(positions, np.arange(len(vectors))):
        return vectors
    return vectors[positions]


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
    same_group: SameGroup = "exclude", recall_queries: int | None = None,
) -> ProtocolScores:
    """Rank every query exactly and score every metric; index the gallery and measure the index's recall on a
    seeded sample of ``recall_queries`` queries (default :data:`RECALL_QUERIES`; 0: no index is made and no
    ``index_recall@k`` row is reported, the config's ``index.recall_queries: 0``). The index is dropped afterwards
    (a Milvus collection per cell would otherwise pile up) unless ``keep_collection``. ``dedupe`` (default:
    warn about byte-identical copies): queries with a duplicate in the gallery, counted or left out; the
    bench passes the run's ``DuplicateDecision``, so every cell of a dataset leaves out the same queries.
    ``same_group``: whether a query's own group is left out of its ranking and relevant items (``exclude``)."""
    whole = split_for(protocol, catalog, embeddings)
    data = whole if same_group == "exclude" else replace(whole, query_groups=None, gallery_groups=None)
    same_set = protocol.leave_one_out
    own = data.own_group()
    available = len(data.gallery_ids) - (1 if same_set else 0)
    depth = max(min(k, available), max(ks))  # beyond the gallery, results are padded
    exact = ExactIndex()
    exact.add(data.gallery_ids, data.gallery_vectors)
    answer, ranking = exact_ranking(data, exact, depth, same_set=same_set)
    sample = recall_sample(len(data.query_ids), protocol.name, recall_queries)
    indexed, unindexed = _search_index(make_index(collection, embeddings.dim), data, depth, same_set,
                                       keep_collection, own, sample) if len(sample) else (None, 0)
    per_query, n_excluded = _per_query_scores(data, answer, ranking, same_set=same_set, ks=ks, full_map=full_map)
    keep, duplicates = duplicate_leakage(protocol, catalog, embeddings, data.query_ids, dedupe or DedupePolicy(),
                                         per_query)
    metrics = {name: _nan_mean(values[keep]) for name, values in per_query.items()}
    if indexed is not None and not unindexed:
        metrics[f"index_recall@{depth}"] = recall_against_exact(indexed, _result_rows(answer, sample))
    details: dict[str, object] = {"queries": len(data.query_ids), "gallery": len(data.gallery_ids), "k": depth,
               "excluded_queries": n_excluded, "max_relevant": int(ranking.n_relevant.max(initial=0)),
               "leave_one_out": same_set, "relevance": protocol.relevance, "index_recall_queries": len(sample),
               "examples": retrieval_examples(data, answer, catalog, protocol.name)}
    if unindexed:
        details["index_recall_skipped"] = (f"the Milvus server searched {unindexed:,} of the gallery's rows exactly, "
                                           "without its index (a 2.3 server indexes no segment under 1,024 rows): "
                                           "no recall of the index to report")
    if duplicates is not None:
        details["duplicates"] = duplicates
    if whole.query_groups is not None:
        details["same_group"] = same_group_details(whole, exact, same_set=same_set, policy=same_group)
    frame = pd.DataFrame({"query": data.query_ids, **per_query})[keep].reset_index(drop=True)
    return ProtocolScores(metrics=metrics, details=details, per_query=frame)


RECALL_QUERIES = 2000
"""Queries the vector database answers in a cell, for its recall@k against exact search: a sample drawn with a
seed fixed per protocol (every cell of a protocol asks the same queries), all queries when there are fewer. The
metrics never read the database's answer, so the sample bounds only the recall's own precision (+-0.01 at
recall 0.95 with 2,000 queries, binomial 95%)."""


def recall_sample(n_queries: int, protocol: str, size: int | None = None) -> np.ndarray:
    """Sorted query rows of the recall sample: all of them up to ``size`` (default :data:`RECALL_QUERIES`; 0: none)."""
    size = RECALL_QUERIES if size is None else size
    if size < 0:
        raise ValueError(f"recall_queries must be 0 (no index recall) or more, got {size}")
    if n_queries <= size:
        return np.arange(n_queries)
    rng = np.random.default_rng(crc32(protocol.encode()))
    return np.sort(rng.choice(n_queries, size=size, replace=False))


def exact_ranking(data: ProtocolSplit, exact: ExactIndex, depth: int, *, same_set: bool
                  ) -> tuple[SearchResult, RelevantRanks]:
    """Every query's exact top ``depth`` and the rank of each of its relevant items over the whole gallery, from
    one pass of score blocks (its own group and, in leave-one-out, itself left out of both)."""
    ranking = RelevantRanks(data.query_keys, data.gallery_keys, exclude_self=same_set, query_groups=data.query_groups,
                            gallery_groups=data.gallery_groups)
    # a grouped query's own group holds itself in leave-one-out; the lists are shared per group, never copied
    banned = [ids or ([query] if same_set else None) for query, ids in zip(data.query_ids, data.own_group(),
                                                                            strict=True)]
    answer = exact.search(data.query_vectors, depth, exclude_ids=banned, on_block=ranking.add)
    return answer, ranking


def _result_rows(result: SearchResult, rows: np.ndarray) -> SearchResult:
    if len(rows) == len(result.ids):
        return result
    return SearchResult(indices=result.indices[rows], scores=result.scores[rows], ids=[result.ids[r] for r in rows])


def _per_query_scores(data: ProtocolSplit, answer: SearchResult, ranking: RelevantRanks, *, same_set: bool,
                      ks: tuple[int, ...], full_map: bool) -> tuple[dict[str, np.ndarray], int]:
    """Each metric per query (depth <= k from the exact top k, the deep ones from the relevant items' ranks),
    and how many queries have no relevant item."""
    groups = {"query_groups": data.query_groups, "gallery_groups": data.gallery_groups}
    report = retrieval_report(data.query_keys, data.gallery_keys, answer.indices, same_set=same_set, ks=ks, **groups)
    per_query = {name: values for name, values in report.per_query.items() if name not in DEEP_METRICS}
    # MAP@R and R-precision need each query's R ranks, however deep: exact, not bounds
    per_query |= {"MAP@R": ranking.map_at_r(), "R-precision": ranking.r_precision()}
    if full_map:
        per_query["MAP"] = ranking.average_precision()
    return per_query, report.n_excluded


def same_group_details(data: ProtocolSplit, exact: ExactIndex, *, same_set: bool, policy: SameGroup
                       ) -> dict[str, object]:
    """What a query's own group weighs in this protocol, for the report: ``groups`` (distinct, queries and
    gallery), ``queries_with_own_group`` (queries with another item of their group in the gallery),
    ``own_group_items`` and ``own_group_relevant`` ((query, gallery item) pairs of one group, and those of them
    sharing the query's relevance key: left out under ``exclude``), ``top1_own_group`` (share of queries whose
    nearest gallery item, itself aside, is of their own group when nothing is left out)."""
    if data.query_groups is None or data.gallery_groups is None:
        raise ValueError("same_group_details needs a split whose items have groups")
    grouped = np.array([group is not None for group in data.query_groups], dtype=bool)
    own = np.array([len(ids) for ids in data.own_group()], dtype=np.int64) - (grouped if same_set else 0)
    every = count_relevant(data.query_keys, data.gallery_keys, same_set=same_set)
    others = count_relevant(data.query_keys, data.gallery_keys, same_set=same_set, query_groups=data.query_groups,
                            gallery_groups=data.gallery_groups)
    nearest = exact.search(data.query_vectors, 1, exclude_ids=data.query_ids if same_set else None).indices[:, 0]
    top1 = grouped & (nearest >= 0) & (data.gallery_groups[np.maximum(nearest, 0)] == data.query_groups)
    present = {group for group in (*data.query_groups, *data.gallery_groups) if group is not None}
    return {"policy": policy, "groups": len(present), "queries_with_own_group": int((own > 0).sum()),
            "own_group_items": int(own.sum()), "own_group_relevant": int((every - others).sum()),
            "top1_own_group": float(top1.mean()) if len(top1) else 0.0}


DEEP_METRICS = ("MAP@R", "R-precision")
"""Metrics read from each relevant item's rank in the exact ranking (to the query's R-th neighbour, however deep),
never from the top k alone."""


def _search_index(index: VectorIndex, data: ProtocolSplit, depth: int, same_set: bool, keep: bool,
                  own: list[list[str]], sample: np.ndarray) -> tuple[SearchResult, int]:
    """The index's top ``depth`` for the ``sample`` query rows, asked deep enough that dropping each query's own
    group leaves ``depth``; and how many gallery rows it searched without its approximate index."""
    chosen = [own[row] for row in sample]
    extra = max((len(ids) for ids in chosen), default=0)
    exclude = [data.query_ids[row] for row in sample] if same_set else None
    queries = data.query_vectors if len(sample) == len(data.query_ids) else data.query_vectors[sample]
    try:
        index.add(data.gallery_ids, data.gallery_vectors, labels=[str(x) for x in data.gallery_keys])
        answer = index.search(queries, min(depth + extra, max(depth, len(data.gallery_ids))), exclude_ids=exclude)
        return (_without(answer, chosen, depth) if extra else answer), unindexed_gallery(index)
    finally:
        drop = getattr(index, "drop", None)
        if not keep and callable(drop):
            drop()
        else:
            index.close()


def unindexed_gallery(index: VectorIndex) -> int:
    """Rows a Milvus server searched exactly under an approximate index type (0 for Lite, FLAT and the others):
    a 2.3 server builds no index for a segment under 1,024 rows yet reports every row indexed, so a small
    gallery's "index recall" would be exact search's."""
    from shelfsight.search.milvus import MilvusIndex
    from shelfsight.search.milvus_collection import unindexed_rows

    if not isinstance(index, MilvusIndex) or index.is_lite or index.client is None \
            or index.config.index_type == "FLAT":
        return 0
    return unindexed_rows(index.client, index.collection)


def _without(answer: SearchResult, banned: list[list[str]], depth: int) -> SearchResult:
    """Each row's first ``depth`` hits whose id is not in ``banned[row]``, padded with ``-1`` / ``-inf`` / ``""``."""
    indices = np.full((len(banned), depth), -1, dtype=np.int64)
    scores = np.full((len(banned), depth), -np.inf, dtype=np.float32)
    ids: list[list[str]] = []
    for row, left_out in enumerate(banned):
        skip = set(left_out)
        kept = [j for j, item_id in enumerate(answer.ids[row]) if item_id and item_id not in skip][:depth]
        indices[row, :len(kept)], scores[row, :len(kept)] = answer.indices[row, kept], answer.scores[row, kept]
        ids.append([answer.ids[row][j] for j in kept] + [""] * (depth - len(kept)))
    return SearchResult(indices=indices, scores=scores, ids=ids)


def _nan_mean(values: np.ndarray) -> float:
    """Mean over the queries that have a relevant item; NaN when none has (every metric alike)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")
