"""Full-ranking AP, MAP@R and R-precision from each relevant item's rank (``metrics/ranking.py``), fed by the exact
search's own score blocks (``bench/evaluate.py``), checked against the implementation they replace: a stable
argsort of every row (kept here as the reference) and a deep exact search read by ``retrieval_report``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfsight.bench.evaluate import RECALL_QUERIES, evaluate_protocol, exact_ranking, recall_sample, split_for
from shelfsight.catalog import Catalog, CatalogItem
from shelfsight.embeddings import Embeddings
from shelfsight.metrics import RelevantRanks, count_relevant, encode_labels, retrieval_report
from shelfsight.metrics.ranking import COUNT_LIMIT
from shelfsight.metrics.retrieval import encode_groups
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex, SearchResult


def torch_product(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """The float32 products the exact search computes (torch's BLAS)."""
    return (torch.as_tensor(queries) @ torch.as_tensor(gallery).T).numpy()


def numpy_product(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """The float32 products scoring version 3 ranked for full MAP (numpy's BLAS: the same to ~5e-7, not bitwise)."""
    return queries @ gallery.T


def sorted_reference_ap(queries: np.ndarray, gallery: np.ndarray, query_labels: Sequence[object],
                        gallery_labels: Sequence[object], *, exclude_self: bool, block_size: int = 512,
                        query_groups: Sequence[object] | None = None, gallery_groups: Sequence[object] | None = None,
                        product: Callable[[np.ndarray, np.ndarray], np.ndarray] = torch_product) -> np.ndarray:
    """The full-ranking AP shelfsight computed before ranks were counted (scoring version 3), verbatim but for the
    ``product``: dropped items at -inf, a stable argsort of every row, P@rank summed at the relevant positions."""
    query_codes, gallery_codes = encode_labels(query_labels, gallery_labels)
    groups = encode_groups(query_groups, gallery_groups, len(queries), len(gallery))
    n_relevant = count_relevant(query_labels, gallery_labels, same_set=exclude_self, query_groups=query_groups,
                                gallery_groups=gallery_groups)
    result = np.empty(len(queries))
    for start in range(0, len(queries), block_size):
        stop = min(start + block_size, len(queries))
        scores = product(queries[start:stop], gallery)
        relevant = gallery_codes[None, :] == query_codes[start:stop, None]
        dropped = np.zeros(scores.shape, dtype=bool)
        if exclude_self:
            rows = np.arange(stop - start)
            dropped[rows, rows + start] = True
        if groups is not None:
            block_groups = groups[0][start:stop, None]
            dropped |= (groups[1][None, :] == block_groups) & (block_groups >= 0)
        scores[dropped] = -np.inf
        relevant[dropped] = False
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


def _catalog(labels: Sequence[object], groups: Sequence[object] | None = None, split: str = "test") -> Catalog:
    items = tuple(CatalogItem(item_id=f"i{n:05d}", image_path=Path(f"/nowhere/{n}.jpg"), label=str(label),
                              split=split, group=None if groups is None else groups[n])
                  for n, label in enumerate(labels))
    return Catalog(name="synthetic", root=Path("/nowhere"), items=items)


def _sop_like(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SOP-like classes of 2-12 items, three dense classes past COUNT_LIMIT (the sorting path) and exact duplicate
    vectors (ties), L2-normalised float32."""
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([[COUNT_LIMIT + 40, 2 * COUNT_LIMIT, COUNT_LIMIT + 1], 2 + rng.binomial(10, 0.33, n)])
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    labels = labels[rng.permutation(n)]
    centres = rng.standard_normal((len(sizes), dim)).astype(np.float32)
    vectors = centres[labels] + 0.9 * rng.standard_normal((n, dim)).astype(np.float32)
    copies = rng.choice(n, size=n // 50, replace=False)
    vectors[copies] = vectors[(copies + 1) % n]  # duplicate photos: exactly tied scores, across classes too
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def _old_deep(vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> dict[str, np.ndarray]:
    """MAP@R and R-precision as scoring version 3 read them: a deep exact search to the largest R."""
    ids = [f"i{n:05d}" for n in range(len(vectors))]
    n_rel = count_relevant(labels, labels, same_set=True, query_groups=groups, gallery_groups=groups)
    own: dict[object, list[str]] = {}
    for item_id, group in zip(ids, groups if groups is not None else [None] * len(ids), strict=True):
        if group is not None:
            own.setdefault(group, []).append(item_id)
    banned = [own.get(g, []) or [i] if g is not None else [i]
              for i, g in zip(ids, groups if groups is not None else [None] * len(ids), strict=True)]
    exact = ExactIndex()
    exact.add(ids, vectors)
    deep = exact.search(vectors, int(n_rel.max()), exclude_ids=banned)
    report = retrieval_report(labels, labels, deep.indices, same_set=True, ks=(1,), query_groups=groups,
                              gallery_groups=groups)
    return {name: report.per_query[name] for name in ("MAP@R", "R-precision")}


# --- hand-worked ----------------------------------------------------------------------------------------------

def test_ranks_by_hand_with_ties_a_dropped_group_and_the_query_itself() -> None:
    # one query (gallery item 0, leave-one-out), label "a", group "g"; gallery scores of its row:
    #   item:   0(self) 1(a,g)  2(b)  3(a)  4(b)  5(a)  6(a)
    #   score:   1.0    0.9     0.8   0.8   0.7   0.5   0.8
    # dropped: itself and item 1 (its own group). Ranking of the rest, ties by lower index:
    #   2(b) 3(a) 6(a) 4(b) 5(a) -> relevant at ranks 2, 3, 5 of R = 3.
    scores = np.random.default_rng(0).random((7, 7))  # the other six rows: any scores
    scores[0] = [1.0, 0.9, 0.8, 0.8, 0.7, 0.5, 0.8]
    labels = ["a", "a", "b", "a", "b", "a", "a"]
    groups = ["g", "g", None, None, None, None, None]
    ranks = RelevantRanks(labels, labels, exclude_self=True, query_groups=groups, gallery_groups=groups)
    assert ranks.n_relevant[0] == 3
    ranks.add(0, scores[:1])
    ranks.add(1, scores[1:])
    assert ranks.average_precision()[0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3, abs=1e-15)
    assert ranks.map_at_r()[0] == pytest.approx((1 / 2 + 2 / 3) / 3, abs=1e-15)
    assert ranks.r_precision()[0] == pytest.approx(2 / 3, abs=1e-15)
    with pytest.raises(ValueError, match="already ranked"):
        ranks.add(0, scores[:1])


def test_a_row_fed_twice_or_never_is_refused() -> None:
    ranks = RelevantRanks(["a", "b"], ["a", "b", "a"], exclude_self=False)
    ranks.add(0, np.array([[0.1, 0.2, 0.3]]))
    with pytest.raises(ValueError, match="1 query rows were never ranked"):
        ranks.average_precision()
    with pytest.raises(ValueError, match=r"expected a \(B, 3\) block"):
        ranks.add(1, np.zeros((1, 2)))


# --- against the implementation it replaces ---------------------------------------------------------------------

@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "groups"])
def test_counted_ranks_equal_the_sorted_ranking_on_2000_items(grouped: bool) -> None:
    vectors, labels = _sop_like(2000, 32, seed=3)
    groups = np.array([f"s{n % 400}" if n % 3 else None for n in range(2000)], dtype=object) if grouped else None
    data = split_for(RetrievalProtocol("loo", ("test",), ("test",)), _catalog(labels, groups),
                     Embeddings(ids=[f"i{n:05d}" for n in range(2000)], vectors=vectors, skipped=[], key="k"))
    exact = ExactIndex(block_size=300)
    exact.add(data.gallery_ids, data.gallery_vectors)
    answer, ranking = exact_ranking(data, exact, 10, same_set=True)
    expected = sorted_reference_ap(vectors, vectors, labels, labels, exclude_self=True, query_groups=groups,
                                   gallery_groups=groups)
    kept = ~np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(ranking.average_precision()), ~kept)
    np.testing.assert_allclose(ranking.average_precision()[kept], expected[kept], rtol=0, atol=1e-9)
    deep = _old_deep(vectors, labels, groups)
    for name, values in (("MAP@R", ranking.map_at_r()), ("R-precision", ranking.r_precision())):
        np.testing.assert_allclose(values[kept], deep[name][kept], rtol=0, atol=1e-9, err_msg=name)
    assert answer.indices.shape == (2000, 10)
    assert int(ranking.n_relevant.max()) > COUNT_LIMIT  # the sorting path ran too


@pytest.mark.slow  # the sorted reference ranks 10,000 rows of 10,000: ~30 s on 2 loaded cores
def test_a_10k_leave_one_out_cell_scores_as_before() -> None:
    """Synthetic 10k SOP-like set through evaluate_protocol: every metric equals scoring version 3's to 1e-9
    (shallow metrics from the exact top k: the FLAT answer the database gave before; MAP from the sorted
    ranking; MAP@R and R-precision from a deep exact search)."""
    vectors, labels = _sop_like(10_000, 64, seed=11)
    ids = [f"i{n:05d}" for n in range(10_000)]
    catalog, embeddings = _catalog(labels), Embeddings(ids=ids, vectors=vectors, skipped=[], key="k")
    result = evaluate_protocol(RetrievalProtocol("loo", ("test",), ("test",)), catalog, embeddings,
                               make_index=lambda name, dim: ExactIndex(), collection="c", k=100, ks=(1, 5, 10))
    exact = ExactIndex()
    exact.add(ids, vectors)
    top = exact.search(vectors, 100, exclude_ids=ids)
    shallow = retrieval_report(labels, labels, top.indices, same_set=True, ks=(1, 5, 10)).metrics
    old = {**shallow, **{name: float(np.nanmean(v)) for name, v in _old_deep(vectors, labels, None).items()},
           "MAP": float(np.nanmean(sorted_reference_ap(vectors, vectors, labels, labels, exclude_self=True)))}
    for name, value in old.items():
        assert result.metrics[name] == pytest.approx(value, rel=0, abs=1e-9), name
    assert result.metrics["index_recall@100"] == 1.0
    assert result.details["index_recall_queries"] == RECALL_QUERIES
    assert 0.05 < result.metrics["MAP"] < 0.95  # neither trivial nor hopeless


# --- the cell: one product, a sampled recall, no copies ----------------------------------------------------------

class _Counting(ExactIndex):
    """A real exact index that records how many queries it was asked, and can answer as badly as possible."""

    def __init__(self, worst: bool = False) -> None:
        super().__init__()
        self.asked, self.worst = 0, worst

    def search(self, vectors: np.ndarray, k: int, **options: object) -> SearchResult:  # type: ignore[override]
        self.asked += len(vectors)
        return super().search(-vectors if self.worst else vectors, k, **options)  # type: ignore[arg-type]


def test_the_index_answers_a_seeded_sample_and_never_the_metrics() -> None:
    vectors, labels = _sop_like(600, 16, seed=5)
    ids = [f"i{n:05d}" for n in range(600)]
    catalog, embeddings = _catalog(labels), Embeddings(ids=ids, vectors=vectors, skipped=[], key="k")
    protocol = RetrievalProtocol("loo", ("test",), ("test",))
    made: list[_Counting] = []

    def make(worst: bool) -> ExactIndex:
        made.append(_Counting(worst))
        return made[-1]

    full = evaluate_protocol(protocol, catalog, embeddings, make_index=lambda n, d: make(False), collection="c", k=10)
    sampled = evaluate_protocol(protocol, catalog, embeddings, make_index=lambda n, d: make(True), collection="c",
                                k=10, recall_queries=150)
    assert [index.asked for index in made] == [600, 150]
    assert sampled.details["index_recall_queries"] == 150 and full.details["index_recall_queries"] == 600
    assert full.metrics["index_recall@10"] == 1.0 and sampled.metrics["index_recall@10"] < 0.05
    for name, value in full.metrics.items():  # a bad index moves its recall, never a metric
        if not name.startswith("index_recall"):
            assert sampled.metrics[name] == value, name
    np.testing.assert_array_equal(recall_sample(600, "loo", 150), recall_sample(600, "loo", 150))
    assert len(set(recall_sample(600, "loo", 150).tolist())) == 150
    assert not np.array_equal(recall_sample(600, "loo", 150), recall_sample(600, "other", 150))


def test_leave_one_out_holds_one_copy_of_the_vectors() -> None:
    vectors, labels = _sop_like(300, 8, seed=2)
    embeddings = Embeddings(ids=[f"i{n:05d}" for n in range(300)], vectors=vectors, skipped=[], key="k")
    data = split_for(RetrievalProtocol("loo", ("test",), ("test",)), _catalog(labels), embeddings)
    assert data.query_vectors is data.gallery_vectors and np.shares_memory(data.query_vectors, vectors)
    exact = ExactIndex()
    exact.add(data.gallery_ids, data.gallery_vectors)
    blocks: list[tuple[int, int]] = []
    exact.block_size = 128
    exact.search(vectors, 3, on_block=lambda start, scores: blocks.append((start, len(scores))))
    assert blocks == [(0, 128), (128, 128), (256, 44)]
    assert np.shares_memory(exact._gallery().numpy(), vectors)  # the index reads the caller's array


@pytest.mark.slow  # embeds the Grocery Store (the full dataset where SHELFSIGHT_DATA_DIR has it) and runs Milvus Lite
def test_grocery_store_cells_score_as_before_on_milvus_lite(grocery_root: Path, tmp_path: Path) -> None:
    """Real photos, the three Grocery Store protocols on Milvus Lite FLAT: every metric equals scoring version 3's
    (the database's answer for depth <= k, a deep exact search, the sorted full ranking) to 1e-9, and the recall
    equals the old one on the same queries."""
    from shelfsight.backbones import load_backbone
    from shelfsight.catalog import DATASETS, load_catalog
    from shelfsight.embeddings import embed_catalog
    from shelfsight.search import MilvusIndex, recall_against_exact

    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "val", "test", "iconic"))
    backbone = load_backbone("efficientnet_lite0", preprocess={"input_size": 64})
    embeddings = embed_catalog(catalog, backbone, cache_dir=tmp_path / "cache", num_workers=0, progress=False)

    def lite(collection: str, dim: int) -> MilvusIndex:
        return MilvusIndex.lite(tmp_path / "lite.db", collection, dim, overwrite=True)

    for protocol in DATASETS["grocery-store"].protocols:
        new = evaluate_protocol(protocol, catalog, embeddings, make_index=lite, collection=protocol.name, k=20)
        data = split_for(protocol, catalog, embeddings)
        with lite(f"old_{protocol.name}", embeddings.dim) as index:
            index.add(data.gallery_ids, data.gallery_vectors, labels=[str(x) for x in data.gallery_keys])
            answer = index.search(data.query_vectors, 20)
        old = retrieval_report(data.query_keys, data.gallery_keys, answer.indices, same_set=False).metrics
        exact = ExactIndex()
        exact.add(data.gallery_ids, data.gallery_vectors)
        n_rel = count_relevant(data.query_keys, data.gallery_keys, same_set=False)
        deep = exact.search(data.query_vectors, max(20, int(n_rel.max())))
        deep_metrics = retrieval_report(data.query_keys, data.gallery_keys, deep.indices, same_set=False).metrics
        old |= {"MAP@R": deep_metrics["MAP@R"], "R-precision": deep_metrics["R-precision"],
                "MAP": float(np.nanmean(sorted_reference_ap(data.query_vectors, data.gallery_vectors,
                                                            data.query_keys, data.gallery_keys, exclude_self=False)))}
        for name, value in old.items():
            assert new.metrics[name] == pytest.approx(value, rel=0, abs=1e-9), (protocol.name, name)
        _differs_only_at_near_ties(new.per_query["MAP"].to_numpy(), data)
        rows = recall_sample(len(data.query_ids), protocol.name)
        reference = SearchResult(deep.indices[rows, :20], deep.scores[rows, :20], [deep.ids[r][:20] for r in rows])
        sampled = SearchResult(answer.indices[rows], answer.scores[rows], [answer.ids[r] for r in rows])
        assert new.metrics["index_recall@20"] == recall_against_exact(sampled, reference)
        assert new.metrics["mMP@5"] > 0.2, protocol.name  # real features, not noise


def _differs_only_at_near_ties(counted: np.ndarray, data: object) -> None:
    """Against version 3's full MAP on numpy's products (verbatim): a query's AP differs only where one of its
    relevant items and a non-relevant one score within the two libraries' rounding (2e-6) of each other, so the
    two BLAS may order them differently; the mean moves by less than 1e-6."""
    queries, gallery = data.query_vectors, data.gallery_vectors  # type: ignore[attr-defined]
    query_keys, gallery_keys = data.query_keys, data.gallery_keys  # type: ignore[attr-defined]
    verbatim = sorted_reference_ap(queries, gallery, query_keys, gallery_keys, exclude_self=False,
                                   product=numpy_product)
    assert abs(np.nanmean(counted) - np.nanmean(verbatim)) < 1e-6
    for query in np.flatnonzero(np.abs(counted - verbatim) > 1e-9):
        scores = numpy_product(queries[query:query + 1], gallery)[0]
        relevant = gallery_keys == query_keys[query]
        gaps = np.abs(np.subtract.outer(scores[relevant], scores[~relevant]))
        assert gaps.min() <= 2e-6, f"query {query}: AP moved without a near tie"
