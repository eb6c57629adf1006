"""Compression methods against independent references: scikit-learn PCA fitted on the gallery alone, sign codes
and Hamming ranking by brute force in numpy, re-ranking against the float order of the candidates, FAISS's own
decoded codes; then real bench cells (cost columns for every method) and the report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.config import ConfigError
from shelfsight.bench.results import ResultStore
from shelfsight.bench.strategies.compress_scoring import COST_COLUMNS
from shelfsight.catalog import load_catalog
from shelfsight.compress import (
    CompressConfig,
    MilvusPlace,
    NotApplicable,
    Projections,
    Side,
    parse_method,
    run_method,
)
from shelfsight.report import load_run
from shelfsight.report.sections import compression
from shelfsight.search import ExactIndex
from shelfsight.search.faiss_binary import FaissBinaryIndex, sign_codes
from shelfsight.search.faiss_codec import FaissCodecIndex
from shelfsight.search.faiss_compat import faiss_threads
from shelfsight.search.faiss_topk import stable_top_k


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, seed: int, centres: int = 12) -> np.ndarray:
    """Seeded unit vectors around a few centres, with a dominant direction, as embeddings are."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * np.linspace(3, 0.2, dim)
    return _unit(middle[rng.integers(0, centres, n)] + 0.4 * rng.normal(size=(n, dim)))


def _brute_force(scores: np.ndarray, k: int, excluded: list[int], allowed: np.ndarray) -> np.ndarray:
    """Positions of the k best scores per row (higher first, ties by lower position), numpy only."""
    out = np.full((len(scores), k), -1)
    for row, values in enumerate(scores):
        keep = np.flatnonzero(allowed & (np.arange(len(values)) != excluded[row]))
        ranked = keep[np.lexsort((keep, -values[keep]))][:k]
        out[row, :len(ranked)] = ranked
    return out


def test_method_names_parse_to_one_spelling_and_mistakes_name_the_grammar() -> None:
    method = parse_method("pca256w-binary-rerank4")
    assert (method.pca, method.whiten, method.codec, method.rerank, method.name) == (256, True, "binary", 4,
                                                                                     "pca256w-binary-rerank4")
    assert parse_method("milvus:ivf_sq8").milvus == "IVF_SQ8" and parse_method("pq32").pq_m == 32
    assert parse_method("pca128-float").name == "pca128"
    for wrong in ("int8-pca256", "rerank4", "int8-rerank4", "pca0", "binary-rerank1", "sq4", "milvus:IVF_RABITQ"):
        with pytest.raises(ValueError, match="compression method"):
            parse_method(wrong)
    with pytest.raises(ValueError, match="twice"):
        CompressConfig(methods=("pca64", "pca64-float"))


def test_a_bench_config_refuses_a_misspelt_method_naming_the_section() -> None:
    base = {"models": ["efficientnet_lite0"], "datasets": ["grocery-store"], "strategies": ["compress"]}
    assert load_config(base).section("compress").methods[0] == "float"
    with pytest.raises(ConfigError, match=r"compress.*cannot read 'pca'"):
        load_config({**base, "compress": {"methods": ["pca-int8"]}})


def test_stable_top_k_breaks_ties_by_position_and_honours_exclusions_and_filters() -> None:
    scores = np.repeat(np.array([[1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1]], np.float32), 2, axis=0)

    def search(rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:  # returns ties in reverse order
        order = np.lexsort((-np.arange(10), -scores[0]))[:depth]
        return scores[rows][:, order], np.tile(order, (len(rows), 1))

    allowed = np.ones(10, bool)
    allowed[3] = False
    values, positions = stable_top_k(search, 2, 10, 5, allowed, [0, -1], margin=0)
    assert positions.tolist() == [[1, 2, 4, 5, 6], [0, 1, 2, 4, 5]]
    assert values[0].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]


def test_pca_is_fitted_on_the_gallery_only(tmp_path: Path) -> None:
    """The pca16 method answers exactly as scikit-learn's PCA fitted on the gallery alone, whatever the queries
    are: queries far off the gallery's directions would turn a PCA fitted with them, and the answer with it."""
    gallery = _clustered(600, 48, seed=1)
    queries = _unit(np.random.default_rng(2).normal(size=(80, 48)) * np.linspace(0.2, 5, 48))
    ids = [f"g{i}" for i in range(len(gallery))]
    side = Side(ids, gallery, queries, None, b"gallery")
    run = run_method(parse_method("pca16"), side, config=CompressConfig(depth=5), projections=(fits := Projections()),
                     place=MilvusPlace(tmp_path / "m.db"), collection="pca")
    [projection] = fits._fitted.values()
    assert projection.pca is not None and projection.pca.n_samples_ == len(gallery)

    def answer(pca: PCA) -> np.ndarray:
        exact = ExactIndex()
        exact.add(ids, _unit(pca.transform(gallery)))
        return exact.search(_unit(pca.transform(queries)), 5).indices

    np.testing.assert_array_equal(run.answer.indices, answer(PCA(16, svd_solver="full").fit(gallery)))
    leaky = answer(PCA(16, svd_solver="full").fit(np.concatenate([gallery, queries])))
    assert (leaky != run.answer.indices).any()  # the test can tell the two fits apart
    with pytest.raises(NotApplicable, match="PCA to 64"):
        run_method(parse_method("pca64"), side, config=CompressConfig(), projections=fits,
                   place=MilvusPlace(tmp_path / "m.db"), collection="wide")


def test_sign_codes_and_hamming_ranking_equal_a_brute_force_reference() -> None:
    """20-d codes (padded to 24 bits) tie a lot: the order must still be by Hamming distance, then position,
    with the excluded item and the filtered-out label never returned."""
    rng = np.random.default_rng(3)
    gallery, queries = rng.normal(size=(300, 20)).astype(np.float32), rng.normal(size=(40, 20)).astype(np.float32)
    codes = sign_codes(gallery)
    assert codes.shape == (300, 3)
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1)[:, :20], (gallery > 0).astype(np.uint8))
    index = FaissBinaryIndex()
    labels = ["a" if i % 4 else "b" for i in range(300)]
    index.add([f"i{i}" for i in range(300)], gallery, labels=labels)
    excluded = [f"i{q * 7}" for q in range(40)]
    found = index.search(queries, 12, label="a", exclude_ids=excluded)
    hamming = ((queries[:, None, :] > 0) != (gallery[None, :, :] > 0)).sum(axis=2)
    allowed = np.array([label == "a" for label in labels])
    expected = _brute_force(-hamming.astype(float), 12, [q * 7 for q in range(40)], allowed)
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.scores, 1 - 2 * np.take_along_axis(hamming, expected, 1) / 24, atol=1e-6)
    assert index.code_bytes == 3 and index.rerank_bytes == 0


def test_reranking_restores_the_float_order_within_the_candidate_set() -> None:
    gallery, queries = _clustered(500, 32, seed=4), _clustered(30, 32, seed=5)
    index = FaissBinaryIndex(rerank=4)
    index.add([f"i{i}" for i in range(500)], gallery)
    found = index.search(queries, 5)
    _, candidates = index.hamming_top_k(queries, 20, np.ones(500, bool), [-1] * 30)
    floats = queries @ gallery.T
    for row in range(30):
        pool = candidates[row]
        ranked = pool[np.lexsort((pool, -floats[row, pool]))][:5]
        np.testing.assert_array_equal(found.indices[row], ranked)
        np.testing.assert_allclose(found.scores[row], floats[row, ranked], atol=1e-5)
    exact = ExactIndex()
    exact.add([f"i{i}" for i in range(500)], gallery)
    plain = FaissBinaryIndex()
    plain.add([f"i{i}" for i in range(500)], gallery)
    truth = exact.search(queries, 5).indices

    def hits(indices: np.ndarray) -> int:
        return sum(len(set(a) & set(b)) for a, b in zip(indices, truth, strict=True))

    assert hits(found.indices) > hits(plain.search(queries, 5).indices)  # re-ranking recovers neighbours


@pytest.mark.parametrize("factory", ["SQ8", "PQ8x8np"])
def test_codec_index_ranks_as_faiss_decoded_codes_do(factory: str) -> None:
    """int8 and PQ answers equal an exact search over FAISS's own encode/decode of the gallery (scores equal,
    rank by rank), with the excluded item left out."""
    import faiss

    gallery, queries = _clustered(800, 32, seed=6), _clustered(50, 32, seed=7)
    index = FaissCodecIndex(factory)
    index.add([f"i{i}" for i in range(800)], gallery)
    with faiss_threads(1):  # PQ training on a busy 2-core CPU: 0.4 s with one thread, up to 100 s with two
        found = index.search(queries, 10, exclude_ids=[f"i{q}" for q in range(50)])
    decoded = index._index.sa_decode(index._index.sa_encode(gallery))
    reference = _brute_force(queries @ decoded.T, 10, list(range(50)), np.ones(800, bool))
    expected_scores = np.take_along_axis(queries @ decoded.T, reference, 1)
    np.testing.assert_allclose(found.scores, expected_scores, atol=1e-4)
    assert (found.indices[:, 0] == reference[:, 0]).mean() >= 0.95
    assert not (found.indices == np.arange(50)[:, None]).any()
    assert index.code_bytes == (32 if factory == "SQ8" else 8)
    assert index.fixed_bytes < index.index_bytes() and isinstance(index._index, faiss.Index)


def _bench(tmp_path: Path, grocery_root: Path, strategies: list[str], methods: list[str]) -> Path:
    config = load_config({
        "name": "compress", "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}],
        "datasets": [{"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}],
        "data_dir": str(grocery_root), "strategies": strategies, "index": {"backend": "exact"},
        "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
        "stats": {"bootstrap": 100, "permutations": 200},
        "toptune": {"trials": 1, "trial_epochs": 2, "trial_repeats": 1, "final_max_epochs": 3, "patience": 2,
                    "widths": [64]},
        "compress": {"methods": methods, "depth": 5, "batch1_queries": 5},
    })
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == []
    return tmp_path / "run"


def test_compress_cell_has_cost_columns_for_every_method_and_a_report_section(tmp_path: Path,
                                                                             grocery_root: Path) -> None:
    methods = ["pca16-int8", "binary-rerank4", "int8", "milvus:IVF_SQ8", "milvus:IVF_PQ", "pca4096"]
    run_dir = _bench(tmp_path, grocery_root, ["compress"], methods)
    [cell] = ResultStore(run_dir).load_all()
    rows = {row["method"]: row for row in cell.details["compression"]["fine"]}
    assert list(rows) == ["float", *methods]  # the float reference comes first
    assert rows["milvus:IVF_PQ"]["status"] == "refused" and "IVF_PQ" in rows["milvus:IVF_PQ"]["reason"]
    assert rows["pca4096"]["status"] == "skipped"
    assert rows["milvus:IVF_SQ8"]["index"]["index_type"] == "IVF_SQ8"  # as describe_index reported it
    for name, row in rows.items():
        if row["status"] == "ok":
            assert set(COST_COLUMNS) <= set(row["costs"]), name
            costs = row["costs"]
            assert costs["index_bytes"] > 0 and costs["build_seconds"] > 0 and costs["qps_batch1"] > 0, name
            assert costs["qps_batched"] > 0 and 0 <= row["metrics"]["recall@5"] <= 1, name
    # test photos query train + val: the gallery holds no query, so it is what PCA and the codecs learn from
    assert {name: row["fitted_on"] for name, row in rows.items()} == {
        "float": "nothing fitted", "pca16-int8": "gallery", "binary-rerank4": "nothing fitted", "int8": "gallery",
        "milvus:IVF_SQ8": "gallery", "milvus:IVF_PQ": "gallery", "pca4096": "gallery"}
    [fold] = cell.details["compression_fit"]["fine"]["folds"]  # fitted on the whole gallery: train + val photos
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    gallery = len(catalog.select_splits("train").per_class(3)) + len(catalog.select_splits("val").per_class(1))
    assert fold["fit_items"] == rows["int8"]["costs"]["items"] == gallery
    assert fold["queries"] == len(catalog.select_splits("test").per_class(2))
    code = {name: row["costs"]["bytes_per_item"] for name, row in rows.items() if row["status"] == "ok"}
    assert code == {"float": 4 * 1280, "pca16-int8": 16, "binary-rerank4": 160, "int8": 1280, "milvus:IVF_SQ8": 1280}
    assert rows["float"]["metrics"]["recall@5"] == 1.0 and rows["float"]["retained"]["mMP@5"] == 1.0
    table = read_table(run_dir).set_index(["protocol", "metric"])
    row = table.loc[("fine", "int8/mMP@5")]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]  # per-query columns give each method an interval
    section = compression.build(load_run(run_dir))
    assert section is not None and section.plots and section.plots[0].png.startswith(b"\x89PNG")
    assert "20 M photos in 16 GB" in section.markdown and "| pca16-int8 |" in section.markdown
    assert "refused" in section.markdown


@pytest.mark.slow
def test_compress_toptune_compresses_the_toptune_cells_head(tmp_path: Path, grocery_root: Path) -> None:
    run_dir = _bench(tmp_path, grocery_root, ["toptune", "compress-toptune"], ["pca8", "binary"])
    cells = {c.cell.strategy: c for c in ResultStore(run_dir).load_all()}
    tuned = cells["compress-toptune"]
    assert tuned.details["head"].endswith("a__grocery-store__toptune__seed0/head")  # the toptune cell's head
    rows = {row["method"]: row for row in tuned.details["compression"]["fine"]}
    assert rows["float"]["costs"]["dim"] == tuned.costs["embed_dim"] == cells["toptune"].costs["embed_dim"]
    assert rows["float"]["metrics"]["mMP@5"] == pytest.approx(cells["toptune"].metrics["fine"]["mMP@5"], abs=1e-9)
    assert rows["binary"]["costs"]["bytes_per_item"] == tuned.costs["embed_dim"] / 8


def test_renamed_settings_are_refused_naming_their_new_names() -> None:
    """``compress.k`` (not ``retrieval.k``) is ``compress.depth``; ``compress.milvus_uri`` is ``compress.uri`` as
    ``index.uri``; the top-level ``knn_k`` is ``knn: {k}``, whose default keeps the kNN cells' key."""
    base = {"models": ["efficientnet_lite0"], "datasets": ["grocery-store"], "strategies": ["compress"]}
    for given, said in (({"compress": {"k": 5}}, r"compress: .*'compress.k' is now 'compress.depth'"),
                        ({"compress": {"milvus_uri": "http://h:19530"}}, "'compress.milvus_uri' is now 'compress.uri'"),
                        ({"knn_k": 7}, r"'knn_k' is now 'knn.k': write knn: \{k: 7\}")):
        with pytest.raises(ConfigError, match=said):
            load_config({**base, **given})
    config = load_config({**base, "compress": {"depth": 5, "uri": "http://h:19530"}, "knn": {"k": 7}})
    assert config.section("compress").depth == 5 and config.section("knn").k == 7
    assert load_config(base).section("knn").k == 5
