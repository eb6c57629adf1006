"""Retrieval and classification metrics: a hand-worked case, then cross-checks against
pytorch-metric-learning, scikit-learn and naive loops on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import average_precision_score, ndcg_score
from sklearn.metrics import classification_report as sk_classification_report

from shelfsight.metrics import (
    average_precision_per_query,
    classification_report,
    count_relevant,
    full_ranking_average_precision,
    map_at_r_per_query,
    mmp_at_k_per_query,
    mrr_per_query,
    ndcg_at_k_per_query,
    relevance,
    retrieval_report,
)
from shelfsight.search.exact import ExactIndex

# --- (a) a hand-worked example -----------------------------------------------------------------------------------
#
# gallery positions:  0   1   2   3   4   5   6   7   8   9
# gallery labels:     a   b   a   c   b   a   c   a   d   a     -> a: 5 items, b: 2, c: 2, d: 1
#
# query q0, label a (R=5): neighbours [0, 1, 2, 3, 5]    -> relevant [1 0 1 0 1]
# query q1, label b (R=2): neighbours [4, 0, 1, -1, -1]  -> relevant [1 0 1 0 0]  (padding never relevant)
# query q2, label e (R=0): nothing relevant in the gallery -> excluded from every average, counted
# query q3, label d (R=1): neighbours [3, 6, 8, 0, 2]    -> relevant [0 0 1 0 0]  (R < K: mMP divides by 1)
#
#              q0                             q1                        q3
# P@1          1                              1                         0
# P@5          3/5                            2/5                       1/5
# R@1 / R@5    1 / 1                          1 / 1                     0 / 1
# mMP@1        1/min(1,5) = 1                 1                         0
# mMP@5        3/min(5,5) = 3/5               2/min(5,2) = 1            1/min(5,1) = 1
# R-precision  top 5: 3/5                     top 2: [1 0] -> 1/2       top 1: [0] -> 0
# MAP@R        (1/1 + 2/3 + 3/5)/5            (1/1)/2                   0  (its hit is at rank 3 > R)
# MAP@K (K=5)  (1/1 + 2/3 + 3/5)/5            (1/1 + 2/3)/2             (1/3)/1
# MRR          1                              1                         1/3
# DCG@5        1 + 1/log2(4) + 1/log2(6)      1 + 1/log2(4)             1/log2(4)
# IDCG@5       sum_{i=1..5} 1/log2(i+1)       1 + 1/log2(3)             1
# NDCG@1       1                              1                         0
#
# Means are over q0, q1, q3 (n_queries=3, n_excluded=1).
GALLERY = np.array(list("abacbacada"))
QUERIES = np.array(list("abed"))
NEIGHBOURS = np.array([[0, 1, 2, 3, 5], [4, 0, 1, -1, -1], [0, 1, 2, 3, 4], [3, 6, 8, 0, 2]])
L2 = math.log2
NDCG5 = ((1 + 1 / L2(4) + 1 / L2(6)) / sum(1 / L2(i + 1) for i in range(1, 6)),
         (1 + 1 / L2(4)) / (1 + 1 / L2(3)),
         (1 / L2(4)) / 1)
EXPECTED = {
    "P@1": 2 / 3, "R@1": 2 / 3, "mMP@1": 2 / 3, "NDCG@1": 2 / 3,
    "P@5": (3 / 5 + 2 / 5 + 1 / 5) / 3,
    "R@5": 1.0,
    "mMP@5": (3 / 5 + 1 + 1) / 3,
    "R-precision": (3 / 5 + 1 / 2 + 0) / 3,
    "MAP@R": ((1 + 2 / 3 + 3 / 5) / 5 + 1 / 2 + 0) / 3,
    "MAP@K": ((1 + 2 / 3 + 3 / 5) / 5 + (1 + 2 / 3) / 2 + 1 / 3) / 3,
    "MRR": (1 + 1 + 1 / 3) / 3,
    "NDCG@5": sum(NDCG5) / 3,
}


def test_hand_worked_report() -> None:
    report = retrieval_report(QUERIES, GALLERY, NEIGHBOURS, same_set=False, ks=(1, 5))
    assert report.metrics.keys() == EXPECTED.keys()
    for name, value in EXPECTED.items():
        assert report.metrics[name] == pytest.approx(value, abs=1e-12), name
    assert (report.n_queries, report.n_excluded, report.k, report.warning) == (3, 1, 5, None)


def test_hand_worked_per_query_values() -> None:
    rel = relevance(QUERIES, GALLERY, NEIGHBOURS)
    n_rel = count_relevant(QUERIES, GALLERY, same_set=False)
    assert n_rel.tolist() == [5, 2, 0, 1]
    assert rel.astype(int).tolist() == [[1, 0, 1, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    np.testing.assert_allclose(mmp_at_k_per_query(rel, n_rel, 5), [3 / 5, 1, np.nan, 1])
    np.testing.assert_allclose(mrr_per_query(rel, n_rel), [1, 1, np.nan, 1 / 3])
    np.testing.assert_allclose(map_at_r_per_query(rel, n_rel), [(1 + 2 / 3 + 3 / 5) / 5, 1 / 2, np.nan, 0])
    np.testing.assert_allclose(ndcg_at_k_per_query(rel, n_rel, 5), [NDCG5[0], NDCG5[1], np.nan, NDCG5[2]])


def test_padding_never_wraps_to_the_last_gallery_item() -> None:
    assert relevance(["a"], ["b", "a"], np.array([[-1, 1]])).tolist() == [[False, True]]


def test_same_set_counts_exclude_the_query_and_self_matches_are_refused() -> None:
    labels = np.array([7, 7, 7, 3, 9])
    assert count_relevant(labels, labels, same_set=True).tolist() == [2, 2, 2, 0, 0]
    with pytest.raises(ValueError, match="own neighbours"):
        retrieval_report(labels, labels, np.array([[1], [1], [0], [4], [3]]), same_set=True, ks=(1,))


def test_truncated_k_is_reported_not_silent() -> None:
    report = retrieval_report(QUERIES, GALLERY, NEIGHBOURS[:, :3], same_set=False, ks=(1,))
    assert report.warning is not None and "truncated" in report.warning and "k >= 5" in report.warning
    # q0 sees only ranks 1-3 of its R=5: R-precision 2/5 is a lower bound of the exact 3/5.
    assert report.metrics["R-precision"] == pytest.approx((2 / 5 + 1 / 2 + 0) / 3)
    with pytest.raises(ValueError, match="neighbour columns"):
        retrieval_report(QUERIES, GALLERY, NEIGHBOURS[:, :3], same_set=False, ks=(1, 5))


def test_full_ranking_ap_breaks_ties_by_lower_gallery_index() -> None:
    # scores for query [1, 0]: g0 0, g1 1 (label y), g2 1 (tied with g1, comes second), g3 -1.
    gallery = np.array([[0, 1], [1, 0], [1, 0], [-1, 0]], dtype=np.float32)
    ap = full_ranking_average_precision(np.array([[1, 0]], np.float32), gallery, ["x"], ["x", "y", "x", "x"],
                                        exclude_self=False)
    # ranking g1 (y), g2 (x), g0 (x), g3 (x): relevant at ranks 2, 3, 4 of R=3.
    assert ap[0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)



def test_full_ranking_ap_keeps_index_order_among_many_ties() -> None:
    # 200 gallery items drawn from 3 distinct vectors: long runs of exactly tied scores (duplicate photos).
    rng = np.random.default_rng(5)
    gallery = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 200)]
    queries, q_labels, g_labels = gallery[:20] + 0.1, rng.integers(0, 4, 20), rng.integers(0, 4, 200)
    ap = full_ranking_average_precision(queries, gallery, q_labels, g_labels, exclude_self=False)
    for q in range(20):
        ranked = sorted(range(200), key=lambda j: (-float(queries[q] @ gallery[j]), j))  # ties: lower index first
        hits = [g_labels[j] == q_labels[q] for j in ranked]
        expected = sum(sum(hits[: i + 1]) / (i + 1) for i, hit in enumerate(hits) if hit) / sum(hits)
        assert ap[q] == pytest.approx(expected, abs=1e-12)

# --- (b) cross-checks on seeded clustered data ------------------------------------------------------------------

def _clustered(n: int = 300, n_classes: int = 40, dim: int = 32, noise: float = 0.25, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points around random unit centres; one singleton class, so exclusion is exercised."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    labels[0] = n_classes  # a class with a single member: no relevant item in leave-one-out
    centres = rng.normal(size=(n_classes + 1, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[labels] + noise * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def _exact_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, *, same_set: bool) -> np.ndarray:
    ids = [str(i) for i in range(len(gallery))]
    index = ExactIndex(block_size=64)
    index.add(ids, gallery)
    return index.search(queries, k, exclude_ids=ids if same_set else None).indices


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    return _clustered()


def test_same_set_matches_pytorch_metric_learning(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, labels = clustered
    k = int(np.bincount(labels).max()) - 1
    sku = np.char.add("sku-", labels.astype(str))  # string labels go through the same encoding
    report = retrieval_report(sku, sku, _exact_neighbours(vectors, vectors, k, same_set=True), same_set=True, ks=(1,))
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count", device=torch.device("cpu"))
    pml = calculator.get_accuracy(vectors, labels, vectors, labels, ref_includes_query=True)
    singletons = int((np.bincount(labels)[labels] == 1).sum())
    assert report.warning is None and report.n_excluded == singletons >= 1
    assert report.n_queries == len(labels) - singletons
    assert 0.3 < report.metrics["MAP@R"] < 0.95  # a discriminating case, not all-perfect
    assert report.metrics["P@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert report.metrics["MAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert report.metrics["R-precision"] == pytest.approx(pml["r_precision"], abs=1e-9)


def test_separate_gallery_matches_pytorch_metric_learning() -> None:
    vectors, labels = _clustered(n=400, seed=1)
    queries, gallery, q_labels, g_labels = vectors[:150], vectors[150:], labels[:150], labels[150:]
    k = int(np.bincount(g_labels).max())
    report = retrieval_report(q_labels, g_labels, _exact_neighbours(queries, gallery, k, same_set=False),
                              same_set=False, ks=(1,))
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count", device=torch.device("cpu"))
    pml = calculator.get_accuracy(queries, q_labels, gallery, g_labels, ref_includes_query=False)
    assert report.metrics["P@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert report.metrics["MAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert report.metrics["R-precision"] == pytest.approx(pml["r_precision"], abs=1e-9)


def test_full_ranking_metrics_match_scikit_learn(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, labels = clustered
    n = len(labels)
    off_diagonal = ~np.eye(n, dtype=bool)
    scores = (vectors @ vectors.T)[off_diagonal].reshape(n, n - 1)  # self dropped from every row
    truth = (labels[:, None] == labels[None, :])[off_diagonal].reshape(n, n - 1)
    kept = truth.any(axis=1)
    neighbours = _exact_neighbours(vectors, vectors, n - 1, same_set=True)  # the whole gallery, ranked
    rel, n_rel = relevance(labels, labels, neighbours), count_relevant(labels, labels, same_set=True)

    sk_ap = [average_precision_score(truth[q], scores[q]) for q in np.flatnonzero(kept)]
    np.testing.assert_allclose(average_precision_per_query(rel, n_rel)[kept], sk_ap, atol=1e-9)
    full = full_ranking_average_precision(vectors, vectors, labels, labels, exclude_self=True, block_size=64)
    np.testing.assert_allclose(full[kept], sk_ap, atol=1e-9)
    assert np.isnan(full[~kept]).all()
    for k in (10, n - 1):
        sk_ndcg = [ndcg_score(truth[q][None], scores[q][None], k=k) for q in np.flatnonzero(kept)]
        np.testing.assert_allclose(ndcg_at_k_per_query(rel, n_rel, k)[kept], sk_ndcg, atol=1e-9)


def test_full_ranking_ap_does_not_depend_on_the_block_size(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, labels = clustered
    small = full_ranking_average_precision(vectors[:50], vectors, labels[:50], labels, exclude_self=False,
                                           block_size=7)
    large = full_ranking_average_precision(vectors[:50], vectors, labels[:50], labels, exclude_self=False)
    np.testing.assert_array_equal(small, large)


def _naive(rel_rows: list[list[bool]], n_rel: list[int], k: int) -> dict[str, list[float]]:
    """Obviously-correct loops, one query at a time."""
    out: dict[str, list[float]] = {"mmp": [], "mrr": [], "map_r": [], "ap": []}
    for row, r in zip(rel_rows, n_rel, strict=True):
        if r == 0:
            for values in out.values():
                values.append(math.nan)
            continue
        out["mmp"].append(sum(row[:k]) / min(k, r))
        out["mrr"].append(next((1 / (i + 1) for i, hit in enumerate(row) if hit), 0.0))
        hits, map_r, ap = 0, 0.0, 0.0
        for i, hit in enumerate(row):
            if hit:
                hits += 1
                ap += hits / (i + 1)
                map_r += hits / (i + 1) if i < r else 0.0
        out["map_r"].append(map_r / r)
        out["ap"].append(ap / r)
    return out


def test_vectorised_metrics_match_naive_loops() -> None:
    rng = np.random.default_rng(3)
    q, n, k_cols = 200, 60, 8
    q_labels, g_labels = rng.integers(0, 12, q), rng.integers(0, 10, n)  # labels 10, 11: nothing relevant
    neighbours = np.stack([rng.permutation(n)[:k_cols] for _ in range(q)])
    neighbours[rng.random((q, k_cols)) < 0.1] = -1  # scattered padding
    rel = relevance(q_labels, g_labels, neighbours)
    n_rel = count_relevant(q_labels, g_labels, same_set=False)
    rel_rows = [[bool(i >= 0 and g_labels[i] == label) for i in row]
                for row, label in zip(neighbours, q_labels, strict=True)]
    assert n_rel.tolist() == [int((g_labels == lab).sum()) for lab in q_labels]
    naive = _naive(rel_rows, n_rel.tolist(), k=5)
    np.testing.assert_allclose(mmp_at_k_per_query(rel, n_rel, 5), naive["mmp"])
    np.testing.assert_allclose(mrr_per_query(rel, n_rel), naive["mrr"])
    np.testing.assert_allclose(map_at_r_per_query(rel, n_rel), naive["map_r"])
    np.testing.assert_allclose(average_precision_per_query(rel, n_rel), naive["ap"])


# --- (c) classification -----------------------------------------------------------------------------------------

def test_classification_report_matches_scikit_learn() -> None:
    y_true = ["cat", "cat", "dog", "dog", "dog", "fox"]
    y_pred = ["cat", "dog", "dog", "dog", "cat", "cat"]  # fox is never predicted: precision 0, not NaN
    report = classification_report(y_true, y_pred)
    # precision cat 1/3, dog 2/3, fox 0; recall cat 1/2, dog 2/3, fox 0; F1 cat 0.4, dog 2/3, fox 0
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.macro_precision == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert report.macro_recall == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert report.macro_f1 == pytest.approx((0.4 + 2 / 3 + 0) / 3)
    assert report.labels == ("cat", "dog", "fox")
    assert report.confusion.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    sk = sk_classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for name in report.labels:
        assert report.per_class[name] == pytest.approx(sk[name])
    assert report.macro_f1 == pytest.approx(sk["macro avg"]["f1-score"])


def test_a_neighbour_listed_twice_is_refused_and_per_query_scores_match_the_means() -> None:
    labels = np.array(["a", "b"])
    gallery = np.array(["a", "a", "b"])
    with pytest.raises(ValueError, match="query 1 lists gallery item 2 more than once"):
        retrieval_report(labels, gallery, np.array([[0, 1], [2, 2]]), same_set=False, ks=(1,))
    padded = retrieval_report(labels, gallery, np.array([[0, -1, -1], [2, -1, -1]]), same_set=False, ks=(1,))
    assert padded.metrics["R@1"] == 1.0  # padding may repeat
    report = retrieval_report(labels, gallery, np.array([[2, 0], [2, 1]]), same_set=False, ks=(1, 2))
    assert report.per_query["R@1"].tolist() == [0.0, 1.0] and report.per_query["mMP@2"].tolist() == [0.5, 1.0]
    for name, values in report.per_query.items():
        assert report.metrics[name] == pytest.approx(float(np.nanmean(values))), name


def test_a_protocol_without_any_relevant_item_scores_nan_everywhere_map_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shelfsight.bench.evaluate import evaluate_protocol
    from shelfsight.catalog import Catalog, CatalogItem
    from shelfsight.embeddings import Embeddings
    from shelfsight.protocols import RetrievalProtocol

    items = tuple(CatalogItem(f"i{n}", tmp_path / f"{n}.jpg", label, split)
                  for n, (label, split) in enumerate([("a", "test"), ("b", "test"), ("c", "train"), ("d", "train")]))
    catalog = Catalog("t", tmp_path, items)
    vectors = np.eye(4, dtype=np.float32)
    embeddings = Embeddings(ids=catalog.ids, vectors=vectors, skipped=[], key="k")
    result = evaluate_protocol(RetrievalProtocol("p", ("test",), ("train",)), catalog, embeddings,
                               make_index=lambda name, dim: ExactIndex(), collection="c", k=2, ks=(1,))
    scored = {name: value for name, value in result.metrics.items() if not name.startswith("index_recall")}
    assert scored and all(math.isnan(value) for value in scored.values()), scored  # MAP is NaN, not 0
    assert result.details["excluded_queries"] == 2 and result.per_query["query"].tolist() == ["i0", "i1"]
