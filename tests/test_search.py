"""Search backends against the exact reference: Milvus Lite (file and server), FAISS, on random and real vectors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import shelfsight
from shelfsight.search import (
    ExactIndex,
    FaissFlatIndex,
    MilvusIndex,
    MilvusIndexConfig,
    MilvusIndexError,
    SearchResult,
    UnsupportedIndexError,
    VectorIndex,
    open_index,
    recall_against_exact,
)
from shelfsight.search.milvus import filter_expression, quote

K = 10
AWKWARD_LABEL = 'bob\'s "best" \\ crisps'


@dataclass(frozen=True)
class Items:
    ids: list[str]
    vectors: np.ndarray
    labels: list[str]
    splits: list[str]


def _random_items(n: int = 2000, dim: int = 64, seed: int = 0) -> Items:
    """Seeded unit vectors; some ids and one label carry quotes and backslashes, as a filter must survive."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"sku-{i}" if i % 7 else f"sku'{i}\"\\x" for i in range(n)]
    names = ["apple", AWKWARD_LABEL, "déjà vu", "dairy", "bread"]
    return Items(ids, vectors, [names[i % len(names)] for i in range(n)],
                 ["train" if i % 3 else "val" for i in range(n)])


@pytest.fixture(scope="module")
def random_items() -> Items:
    return _random_items()


@pytest.fixture(scope="module")
def grocery_items(grocery_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Items:
    """Real EfficientNet-Lite0 embeddings of two validation photos per Grocery Store class."""
    catalog = shelfsight.load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).per_class(2)
    backbone = shelfsight.load_backbone("efficientnet_lite0", preprocess={"input_size": 64})
    embeddings = shelfsight.embed_catalog(catalog, backbone, num_workers=0, progress=False,
                                          cache_dir=tmp_path_factory.mktemp("embedding-cache"))
    by_id = {item.item_id: item for item in catalog}
    return Items(embeddings.ids, embeddings.vectors, [by_id[i].label for i in embeddings.ids],
                 [by_id[i].split for i in embeddings.ids])


@pytest.fixture(params=["random", "grocery"])
def items(request: pytest.FixtureRequest) -> Items:
    return request.getfixturevalue(f"{request.param}_items")  # type: ignore[no-any-return]


def _filled(index: VectorIndex, items: Items) -> VectorIndex:
    index.add(items.ids, items.vectors, items.labels, items.splits)
    return index


def _exact(items: Items) -> ExactIndex:
    return _filled(ExactIndex(block_size=256), items)  # type: ignore[return-value]


@contextlib.contextmanager
def _lite(tmp_path: Path, items: Items, name: str = "items", **options: object) -> Iterator[MilvusIndex]:
    index = MilvusIndex.lite(tmp_path / "search.db", name, items.vectors.shape[1], **options)  # type: ignore[arg-type]
    try:
        _filled(index, items)
        yield index
    finally:
        index.close()


def _assert_same(found: SearchResult, expected: SearchResult) -> None:
    assert recall_against_exact(found, expected) == 1.0
    np.testing.assert_array_equal(found.indices, expected.indices)
    assert found.ids == expected.ids
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)


def _stored_rows(index: MilvusIndex, ids: list[str]) -> dict[str, dict[str, object]]:
    assert index.client is not None
    rows = index.client.query(index.collection, filter=f"id in [{', '.join(quote(i) for i in ids)}]",
                              output_fields=["id", "label", "split", "position"])
    return {str(row["id"]): dict(row) for row in rows}


# ── Milvus Lite ─────────────────────────────────────────────────────────────────────────────


def test_lite_round_trip_keeps_ids_labels_splits_and_positions(tmp_path: Path, random_items: Items) -> None:
    items = random_items
    with _lite(tmp_path, items, insert_batch=700) as index:  # three insert batches
        assert len(index) == len(items.ids)
        every = np.arange(0, len(items.ids), 37)
        result = index.search(items.vectors[every], 1)
        assert [row[0] for row in result.ids] == [items.ids[i] for i in every]  # each vector finds itself first
        np.testing.assert_array_equal(result.indices[:, 0], every)
        np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
        stored = _stored_rows(index, items.ids[:21] + items.ids[1395:1405])
        assert [stored[i]["position"] for i in items.ids[1395:1405]] == list(range(1395, 1405))
        assert set(stored) == set(items.ids[:21] + items.ids[1395:1405])
        for position, item_id in enumerate(items.ids[:21]):
            assert stored[item_id]["label"] == items.labels[position]
            assert stored[item_id]["split"] == items.splits[position]
            assert stored[item_id]["position"] == position


def test_flat_equals_exact_search(tmp_path: Path, items: Items) -> None:
    queries = items.vectors[::3]
    with _lite(tmp_path, items) as index:
        _assert_same(index.search(queries, K), _exact(items).search(queries, K))


def test_l2_metric_gives_the_same_neighbours_and_cosine_scores(tmp_path: Path, random_items: Items) -> None:
    queries = random_items.vectors[:40]
    with _lite(tmp_path, random_items, metric="L2") as index:
        _assert_same(index.search(queries, K), _exact(random_items).search(queries, K))


def test_ivf_flat_searches_its_cells_and_is_exact_with_every_cell_probed(tmp_path: Path, random_items: Items) -> None:
    queries = random_items.vectors[:200]
    exact = _exact(random_items).search(queries, K)
    with _lite(tmp_path, random_items, index_type="IVF_FLAT", nlist=16, nprobe=16) as index:
        full = recall_against_exact(index.search(queries, K), exact)
        index.tune(nprobe=1)
        one_cell = recall_against_exact(index.search(queries, K), exact)
        info = index._index_info() or {}
    print(f"IVF_FLAT recall@{K} on 2,000 random 64-d: nprobe=16/16 {full:.3f}, nprobe=1/16 {one_cell:.3f}")
    assert full == 1.0
    assert one_cell < 0.9  # probing one cell of 16 must lose neighbours: the IVF index is really used
    assert info["index_type"] == "IVF_FLAT" and info["params"]["nlist"] == 16  # nlist reached the server


def test_rebuild_swaps_the_index_over_the_same_rows(tmp_path: Path, random_items: Items) -> None:
    queries = random_items.vectors[:50]
    exact = _exact(random_items).search(queries, K)
    with _lite(tmp_path, random_items) as index:
        _assert_same(index.search(queries, K), exact)
        index.rebuild("IVF_FLAT", nlist=8)
        index.tune(nprobe=8)
        info = index._index_info() or {}
        assert (info["index_type"], info["params"]["nlist"]) == ("IVF_FLAT", 8)
        assert len(index) == len(random_items.ids)
        _assert_same(index.search(queries, K), exact)
        with pytest.raises(UnsupportedIndexError, match="DISKANN"):
            index.rebuild("DISKANN")


@pytest.mark.parametrize(("index_type", "params"), [("IVF_SQ8", {"nlist": 16}), ("HNSW_SQ", {"M": 16,
                                                                                  "efConstruction": 100})])
def test_compressing_index_types_really_build_on_lite(tmp_path: Path, random_items: Items, index_type: str,
                                                      params: dict[str, int]) -> None:
    """describe_index reports the type and parameters asked for with every row indexed, the index file is an
    int8 code per dimension (not the float rows), and recall stays close to exact search."""
    queries = random_items.vectors[:200]
    exact = _exact(random_items).search(queries, K)
    options = {"nlist": 16, "nprobe": 16} if index_type == "IVF_SQ8" else {"m": 16, "ef_construction": 100}
    with _lite(tmp_path, random_items, index_type=index_type, **options) as index:
        recall = recall_against_exact(index.search(queries, K), exact)
        info = index._index_info() or {}
        disk = index.disk_bytes()
    print(f"{index_type} recall@{K} on 2,000 random 64-d: {recall:.3f}; index file {disk}")
    assert info["index_type"] == index_type and {k: int(v) for k, v in info["params"].items() if k in params} == params
    assert int(info["indexed_rows"]) == len(random_items.ids)
    n, dim = random_items.vectors.shape
    assert disk is not None and n * dim <= disk.index < n * dim * 4  # one byte per dimension, plus ids / links
    assert disk.total > disk.index  # the float rows stay in the collection's segments
    assert recall >= 0.9


def test_hnsw_recall(tmp_path: Path, random_items: Items) -> None:
    queries = random_items.vectors[:200]
    with _lite(tmp_path, random_items, index_type="HNSW", m=16, ef_construction=100, ef=64) as index:
        recall = recall_against_exact(index.search(queries, K), _exact(random_items).search(queries, K))
    print(f"HNSW recall@{K} on 2,000 random 64-d (M=16, efConstruction=100, ef=64): {recall:.3f}")
    assert recall >= 0.9


def test_filtered_search_equals_exact_with_the_same_filter(tmp_path: Path, items: Items) -> None:
    label = AWKWARD_LABEL if AWKWARD_LABEL in items.labels else items.labels[0]
    split = items.splits[0]
    queries = items.vectors[:60]
    exact = _exact(items)
    with _lite(tmp_path, items) as index:
        by_label = index.search(queries, K, label=label)
        by_both = index.search(queries, K, label=label, split=split)
        _assert_same(by_label, exact.search(queries, K, label=label))
        _assert_same(by_both, exact.search(queries, K, label=label, split=split))
    positions = by_label.indices[by_label.indices >= 0]
    assert len(positions) and {items.labels[p] for p in positions} == {label}
    both = by_both.indices[by_both.indices >= 0]
    assert {(items.labels[p], items.splits[p]) for p in both} == {(label, split)}


def test_a_query_is_never_its_own_neighbour(tmp_path: Path, items: Items) -> None:
    queries, own = items.vectors[:80], items.ids[:80]
    with _lite(tmp_path, items) as index:
        result = index.search(queries, K, exclude_ids=own)
    assert all(own[q] not in row for q, row in enumerate(result.ids))
    _assert_same(result, _exact(items).search(queries, K, exclude_ids=own))


def test_deleted_items_are_never_returned(tmp_path: Path, random_items: Items) -> None:
    gone = random_items.ids[:70]  # includes ids with quotes and backslashes
    exact = _exact(random_items)
    exact.delete(gone)
    with _lite(tmp_path, random_items) as index:
        index.delete(gone + ["never-added"])
        result = index.search(random_items.vectors[:70], K)
        assert len(index) == len(random_items.ids) - len(gone)
    assert not set(gone) & {i for row in result.ids for i in row}
    _assert_same(result, exact.search(random_items.vectors[:70], K))


def test_reopening_the_db_keeps_every_item_and_continues_positions(tmp_path: Path, random_items: Items) -> None:
    items, dim = random_items, random_items.vectors.shape[1]
    with _lite(tmp_path, items, index_type="IVF_FLAT", nlist=8, nprobe=8) as index:
        before = index.search(items.vectors[:30], K)
        index.delete(items.ids[:5])
    with MilvusIndex.lite(tmp_path / "search.db", "items", dim, index_type="IVF_FLAT", nlist=8, nprobe=8,
                          reuse=True) as reopened:
        assert len(reopened) == len(items.ids) - 5
        after = reopened.search(items.vectors[5:30], K)
        np.testing.assert_array_equal(after.indices, before.indices[5:])
        with pytest.raises(ValueError, match="duplicate id"):
            reopened.add([items.ids[10]], items.vectors[:1])
        reopened.add(["late"], items.vectors[:1])  # item 0 was deleted: "late" is now its vector's only match
        top = reopened.search(items.vectors[:1], 1)
        assert top.ids == [["late"]] and top.indices.tolist() == [[len(items.ids)]]


def test_an_existing_collection_is_never_silently_replaced_or_misread(tmp_path: Path, random_items: Items) -> None:
    db, dim = tmp_path / "search.db", random_items.vectors.shape[1]
    with _lite(tmp_path, random_items) as index:
        assert len(index) == len(random_items.ids)  # readiness builds the FLAT index
    with pytest.raises(MilvusIndexError, match="already exists.*reuse=True"):
        MilvusIndex.lite(db, "items", dim)
    with pytest.raises(MilvusIndexError, match=f"holds {dim}-d vectors, not 32-d"):
        MilvusIndex.lite(db, "items", 32, reuse=True)
    with pytest.raises(MilvusIndexError, match="has a FLAT/IP index"):
        MilvusIndex.lite(db, "items", dim, reuse=True, index_type="HNSW")
    with MilvusIndex.lite(db, "items", dim, overwrite=True) as fresh:
        assert len(fresh) == 0
        assert fresh.search(random_items.vectors[:2], 3).ids == [["", "", ""], ["", "", ""]]


def test_an_index_type_milvus_lite_lacks_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedIndexError, match="cannot build a DISKANN index; Milvus Lite supports FLAT, IVF"):
        MilvusIndex.lite(tmp_path / "x.db", "items", 8, index_type="DISKANN")
    with pytest.raises(UnsupportedIndexError, match="cannot build a IVF_PQ index"):  # reserved in Lite 3.2.2
        MilvusIndex.lite(tmp_path / "x.db", "items", 8, index_type="IVF_PQ")
    with pytest.raises(ValueError, match="unknown index type 'IVF_RABITQ'"):  # unknown to Lite 3.2.2 as well
        MilvusIndex.lite(tmp_path / "x.db", "items", 8, index_type="IVF_RABITQ")


def test_an_unknown_option_is_refused_naming_it_before_anything_opens(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown MilvusIndex option 'nprobes'"):
        MilvusIndex.lite(tmp_path / "x.db", "items", 8, nprobes=4)
    assert not (tmp_path / "x.db").exists()  # no Lite server was started
    with pytest.raises(TypeError, match="unknown MilvusIndex option 'index'"):  # refused before connecting
        open_index("milvus", uri="http://127.0.0.1:9", collection="items", dim=8, index="HNSW")
    with pytest.raises(TypeError, match="'nlist' given together with config="):
        MilvusIndex.lite(tmp_path / "x.db", "items", 8, config=MilvusIndexConfig(), nlist=4)
    with pytest.raises(ValueError, match="nprobe must be a positive integer, got 0"):
        MilvusIndexConfig(nprobe=0)


def test_the_config_object_is_the_index_built(tmp_path: Path, random_items: Items) -> None:
    config = MilvusIndexConfig(index_type="ivf_flat", metric="ip", nlist=8, nprobe=8)
    assert (config.index_type, config.metric) == ("IVF_FLAT", "IP")
    with _lite(tmp_path, random_items, config=config) as index:
        assert index.config == config and len(index) == len(random_items.ids)  # readiness builds the index
        info = index._index_info() or {}
        assert (info["index_type"], info["params"]["nlist"]) == ("IVF_FLAT", 8)
        index.tune(nprobe=2)
        assert index.config.nprobe == 2 and index.config.nlist == 8


def test_bad_input_is_refused_before_reaching_milvus(tmp_path: Path, random_items: Items) -> None:
    with _lite(tmp_path, random_items) as index:
        with pytest.raises(ValueError, match="shape"):
            index.add(["a"], np.ones((1, 3), np.float32))
        with pytest.raises(ValueError, match="L2-normalised"):
            index.add(["a"], np.ones((1, random_items.vectors.shape[1]), np.float32))
        with pytest.raises(ValueError, match="duplicate id 'b'"):
            index.add(["b", "b"], random_items.vectors[:2])
        with pytest.raises(ValueError, match="exclude_ids has 1 entries for 2 queries"):
            index.search(random_items.vectors[:2], 3, exclude_ids=["a"])
        assert index.search(random_items.vectors[:2], 0).indices.shape == (2, 0)
    with pytest.raises(MilvusIndexError, match="closed"):
        index.search(random_items.vectors[:1], 1)


def test_filter_expressions_escape_quotes_and_backslashes() -> None:
    assert quote('a"b\\c\'d') == '"a\\"b\\\\c\'d"'
    assert filter_expression(label="x", split='y"') == 'label == "x" and split == "y\\""'
    assert filter_expression() == ""
    with pytest.raises(ValueError, match="control character"):
        quote("bell\x07")


# ── a real `milvus-lite server` process (the `milvus_server` fixture is in conftest.py) ──────────────


def test_round_trip_through_a_milvus_lite_server_process(milvus_server: str, random_items: Items) -> None:
    items, dim = random_items, random_items.vectors.shape[1]
    queries = items.vectors[:40]
    exact = _exact(items).search(queries, K, label="apple", exclude_ids=items.ids[:40])
    with MilvusIndex.server(milvus_server, "", "items", dim, overwrite=True) as index:
        assert index.is_lite and not index.where.startswith("Milvus Lite database")
        _filled(index, items)
        _assert_same(index.search(queries, K, label="apple", exclude_ids=items.ids[:40]), exact)
        index.delete(items.ids[:3])
    with MilvusIndex.server(milvus_server, "", "items", dim, reuse=True) as again:
        assert len(again) == len(items.ids) - 3
        stored = _stored_rows(again, items.ids[3:10])
        assert [stored[i]["position"] for i in items.ids[3:10]] == list(range(3, 10))
        assert [stored[i]["label"] for i in items.ids[3:10]] == items.labels[3:10]
        assert [stored[i]["split"] for i in items.ids[3:10]] == items.splits[3:10]


# ── FAISS, helpers ──────────────────────────────────────────────────────────────────────────


def test_faiss_flat_equals_exact(items: Items) -> None:
    exact, faiss_index = _exact(items), _filled(FaissFlatIndex(), items)
    queries, own, label = items.vectors[:100], items.ids[:100], items.labels[1]
    _assert_same(faiss_index.search(queries, K), exact.search(queries, K))
    _assert_same(faiss_index.search(queries, K, exclude_ids=own), exact.search(queries, K, exclude_ids=own))
    _assert_same(faiss_index.search(queries, K, label=label, split=items.splits[0]),
                 exact.search(queries, K, label=label, split=items.splits[0]))
    for index in (exact, faiss_index):
        index.delete(items.ids[::2])
    after = faiss_index.search(queries, K)
    assert not set(items.ids[::2]) & {i for row in after.ids for i in row}
    _assert_same(after, exact.search(queries, K))
    assert len(faiss_index) == len(exact)


def test_faiss_pads_when_fewer_than_k_items_qualify_and_breaks_ties_by_position() -> None:
    vector = np.array([[1.0, 0.0]], np.float32)
    index = FaissFlatIndex(2)
    index.add(["a", "b", "c"], np.repeat(vector, 3, axis=0), ["x", "y", "y"])
    result = index.search(vector, 3, label="y")
    assert result.ids == [["b", "c", ""]] and result.indices.tolist() == [[1, 2, -1]]
    assert result.scores[0, 2] == -np.inf
    assert index.search(vector, 2).ids == [["a", "b"]]


def test_recall_against_exact_ignores_padding() -> None:
    def result(ids: list[list[str]]) -> SearchResult:
        indices = np.array([[0 if i else -1 for i in row] for row in ids])
        return SearchResult(indices=indices, scores=np.zeros(indices.shape, np.float32), ids=ids)

    exact = result([["a", "b"], ["c", ""], ["", ""]])
    assert recall_against_exact(result([["b", "x"], ["c", ""], ["", ""]]), exact) == pytest.approx(0.75)
    assert np.isnan(recall_against_exact(result([["", ""]]), result([["", ""]])))
    with pytest.raises(ValueError, match="not the same queries"):
        recall_against_exact(result([["a"]]), exact)


def test_open_index_by_backend_name(tmp_path: Path, random_items: Items) -> None:
    dim = random_items.vectors.shape[1]
    assert isinstance(open_index("exact"), ExactIndex)
    assert isinstance(open_index("faiss", dim=dim), FaissFlatIndex)
    lite = open_index("milvus-lite", path=tmp_path / "o.db", collection="c", dim=dim)
    try:
        assert isinstance(lite, MilvusIndex) and isinstance(lite, VectorIndex)
    finally:
        lite.close()
    with pytest.raises(ValueError, match="unknown search backend 'annoy'"):
        open_index("annoy")


def test_indexes_survive_faiss_torch_utils(tmp_path: Path, random_items: Items) -> None:
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps FAISS's numpy methods
    for torch ones that reject params=; shelfsight's calls must still work, and the swap must stay."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401

    torch_search = faiss.IndexFlatIP.search
    exact = ExactIndex()
    exact.add(random_items.ids, random_items.vectors)
    expected = exact.search(random_items.vectors[:20], K)
    flat = FaissFlatIndex(random_items.vectors.shape[1])
    flat.add(random_items.ids, random_items.vectors)
    assert flat.search(random_items.vectors[:20], K).ids == expected.ids
    with MilvusIndex.lite(tmp_path / "torch.db", "items", random_items.vectors.shape[1]) as index:
        index.add(random_items.ids, random_items.vectors)
        assert index.search(random_items.vectors[:20], K).ids == expected.ids
    assert faiss.IndexFlatIP.search is torch_search


# ── non-finite vectors are refused by every backend, through one shared check ────────────────


def _poisoned(items: Items, rows: list[int], value: float) -> np.ndarray:
    vectors = items.vectors.copy()
    vectors[rows, 3] = value
    return vectors


@pytest.mark.parametrize("backend", ["exact", "faiss", "milvus-lite"])
def test_non_finite_vectors_are_refused_naming_the_items(backend: str, tmp_path: Path, random_items: Items) -> None:
    items, dim = random_items, random_items.vectors.shape[1]
    options: dict[str, object] = {"exact": {}, "faiss": {"dim": dim},
                                  "milvus-lite": {"path": tmp_path / "nan.db", "collection": "c", "dim": dim}}[backend]
    index = open_index(backend, **options)
    try:
        bad_rows = [5, 17, 18, 40, 41, 42, 99]  # 7: the message names the first 5 and counts the rest
        vectors = _poisoned(items, bad_rows, np.nan)
        vectors[41, 0] = np.inf
        with pytest.raises(ValueError, match=r"7 of 200 vectors to add hold NaN or infinite values") as caught:
            index.add(items.ids[:200], vectors[:200], items.labels[:200], items.splits[:200])
        message = str(caught.value)
        assert all(repr(items.ids[r]) in message for r in bad_rows[:5])
        assert repr(items.ids[bad_rows[5]]) not in message and "and 2 more" in message
        assert len(index) == 0  # refused before anything was stored
        index.add(items.ids[:200], items.vectors[:200], items.labels[:200], items.splits[:200])
        queries = _poisoned(items, [1, 3], -np.inf)[:6]
        queries[4, 0] = np.nan
        with pytest.raises(ValueError, match=r"3 of 6 query vectors hold NaN or infinite values: rows 1, 3, 4$"):
            index.search(queries, K)
        assert index.search(items.vectors[:6], K).ids[0][0] == items.ids[0]
    finally:
        index.close()


def test_the_finiteness_check_is_shared_by_every_backend() -> None:
    from shelfsight.search import base, exact, faiss_index, milvus_fields

    assert exact.check_finite is faiss_index.check_finite is milvus_fields.check_finite is base.check_finite
    base.check_finite(np.zeros((0, 4), np.float32), [])  # nothing to check is fine
    with pytest.raises(ValueError, match="rows 0$"):
        base.check_finite(np.array([[np.nan, 0.0]], np.float32))
