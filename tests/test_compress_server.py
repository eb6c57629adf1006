"""The compression frontier's ``milvus:`` methods on a real Milvus 2.3.5 server (tests/milvus_server.py):
IVF_SQ8 and IVF_PQ built by the server (no FAISS), their recall against exact float search recomputed in numpy,
their bytes per item from what the server recorded, HNSW_SQ refused naming the version before any collection is
made, a gallery too small for the server to index skipped rather than reported as exact search, and nothing left
on the server afterwards. The bench cell on the server is compared with the same cell on Milvus Lite."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from shelfsight.bench import load_config, run_bench
from shelfsight.bench.results import ResultStore
from shelfsight.compress import CompressConfig, MilvusPlace, NotApplicable, Projections, Side, parse_method, run_method
from shelfsight.report import load_run
from shelfsight.report.sections.compression import frontier_frame
from shelfsight.search import UnsupportedIndexError
from shelfsight.search.milvus_config import check_supported, server_index_types

SMALL_MODEL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0-64"}
SERVER_GROCERY = {"name": "grocery-store", "per_class": {"train": 12, "val": 2, "test": 1}}
"""972 train + 120 val = 1,092 gallery photos (above the 1,024 rows under which Milvus 2.3 builds no index),
81 test queries."""
MEASURED_2_3_5 = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Seeded unit vectors around 20 centres: an embedding's structure, so IVF lists mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _side(gallery: np.ndarray, queries: np.ndarray) -> Side:
    return Side([f"g{i}" for i in range(len(gallery))], gallery, queries, None, key=gallery.tobytes()[:64])


def _collections(uri: str) -> set[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        return set(client.list_collections())
    finally:
        client.close()


def test_a_server_version_refuses_what_it_was_measured_to_lack_and_names_collections_per_cell() -> None:
    assert server_index_types("v2.3.5-lite") == server_index_types("v2.3.5") == MEASURED_2_3_5
    assert server_index_types("v2.4.1") is None  # not measured: the server itself is asked
    with pytest.raises(UnsupportedIndexError, match=r"Milvus server v2\.3\.5-lite cannot build a HNSW_SQ index: it "
                       r"answers \"invalid index type: HNSW_SQ\".*builds FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW"):
        check_supported("HNSW_SQ", "v2.3.5-lite")
    with pytest.raises(UnsupportedIndexError, match="DISKANN.*never builds it"):
        check_supported("DISKANN", "v2.3.5")
    for index_type in MEASURED_2_3_5:
        check_supported(index_type, "v2.3.5-lite")
    check_supported("HNSW_SQ", "v2.4.1")  # unmeasured versions are not guessed at
    long = "c_" + "x" * 300 + "_fine_pca256-milvus:IVF_SQ8"
    one, other = MilvusPlace(uri="http://h:1", scope="/runs/a"), MilvusPlace(uri="http://h:1", scope="/runs/b")
    assert one.collection_name(long) == one.collection_name(long) != other.collection_name(long)
    assert one.collection_name(long + "x") != one.collection_name(long)  # a truncated name keeps its digest
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,254}", one.collection_name(long))
    assert MilvusPlace(Path("m.db")).collection_name("c_a_fine_milvus:IVF_SQ8") == "c_a_fine_milvus_IVF_SQ8"


@pytest.mark.slow  # three small builds on the server: ~20 s
def test_ivf_pq_on_the_server_is_built_there_and_what_it_cannot_index_is_not_passed_off(milvus_standalone: str,
                                                                                       tmp_path: Path) -> None:
    before = _collections(milvus_standalone)
    place, config = MilvusPlace(uri=milvus_standalone, scope=str(tmp_path)), CompressConfig(depth=10)
    gallery, queries = _clustered(2000, 64, 0), _clustered(100, 64, 1)
    run = run_method(parse_method("milvus:IVF_PQ"), _side(gallery, queries), config=config,
                     projections=Projections(), place=place, collection="c_t_fine_milvus:IVF_PQ")
    assert run.details["backend"] == "Milvus IVF_PQ"
    built = run.details["index"]
    assert built["index_type"] == "IVF_PQ" and built["indexed_rows"] == 2000
    assert built["built_by"] == f"Milvus server {milvus_standalone} (v2.3.5-lite)"  # the server, not FAISS
    assert built["params"] == {"nlist": 45, "m": 32, "nbits": 8}  # nlist round(sqrt(2000)); m: 32 divides 64
    assert run.costs["bytes_per_item"] == 32 * 8 / 8 and math.isnan(run.costs["index_bytes"])
    exact = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]  # numpy, not the package
    found = run.answer.indices
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert 0.2 < recall < 1.0, recall  # lossy codes (2-d sub-vectors), 16 of 45 lists probed
    assert np.all(np.diff(run.answer.scores, axis=1) <= 1e-6)  # each row ranked best first
    with pytest.raises(NotApplicable, match=r"holds 300 of 300 rows without the IVF_SQ8 index .*1,024"):
        run_method(parse_method("milvus:IVF_SQ8"), _side(gallery[:300], queries), config=config,
                   projections=Projections(), place=place, collection="c_t_fine_milvus:IVF_SQ8")
    with pytest.raises(UnsupportedIndexError, match=r"v2\.3\.5-lite cannot build a HNSW_SQ index"):
        run_method(parse_method("milvus:HNSW_SQ"), _side(gallery, queries), config=config,
                   projections=Projections(), place=place, collection="c_t_fine_milvus:HNSW_SQ")
    assert _collections(milvus_standalone) == before  # every collection made was dropped; none for HNSW_SQ


def _bench(run_dir: Path, grocery_root: Path, methods: list[str], uri: str | None) -> dict[str, dict]:
    config = load_config({
        "name": "compress-server", "models": [SMALL_MODEL], "datasets": [SERVER_GROCERY],
        "data_dir": str(grocery_root), "strategies": ["compress"], "index": {"backend": "exact"},
        "embedding": {"num_workers": 0}, "tracking": {"enabled": False}, "stats": {"bootstrap": 100},
        "compress": {"methods": methods, "depth": 10, "batch1_queries": 5, **({"uri": uri} if uri else {})},
    })
    summary = run_bench(config, run_dir, progress=False)
    assert summary.failed == [], summary
    [cell] = ResultStore(run_dir).load_all()
    return {row["method"]: row for row in cell.details["compression"]["fine"]}


@pytest.mark.slow  # 1,173 photos embedded at 64 px and two compress cells: ~90 s
@pytest.mark.full_data
def test_the_frontier_rows_of_the_server_methods_and_the_same_cell_on_milvus_lite(milvus_standalone: str,
                                                                                 grocery_root: Path,
                                                                                 tmp_path: Path) -> None:
    before = _collections(milvus_standalone)
    methods = ["int8", "pq32", "milvus:IVF_SQ8", "milvus:IVF_PQ", "milvus:HNSW_SQ"]
    rows = _bench(tmp_path / "server", grocery_root, methods, milvus_standalone)
    assert _collections(milvus_standalone) == before  # the cell dropped every collection it made
    assert rows["milvus:HNSW_SQ"]["status"] == "refused"
    assert re.search(r"v2\.3\.5-lite cannot build a HNSW_SQ index.*builds FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW",
                     rows["milvus:HNSW_SQ"]["reason"])
    sq8, pq = rows["milvus:IVF_SQ8"], rows["milvus:IVF_PQ"]
    assert sq8["status"] == pq["status"] == "ok"
    gallery = int(sq8["costs"]["items"])
    assert gallery == 1092 and sq8["costs"]["dim"] == pq["costs"]["dim"] == 1280
    nlist = round(math.sqrt(gallery))  # 33
    assert sq8["index"]["params"] == {"nlist": nlist} and pq["index"]["params"] == {"nlist": nlist, "m": 32, "nbits": 8}
    for row in (sq8, pq):
        assert row["index"]["built_by"].startswith(f"Milvus server {milvus_standalone} (v2.3.5")
        assert row["index"]["indexed_rows"] == gallery and row["backend"].startswith("Milvus ")
    # bytes per item by hand: int8 codes are 1 byte per dimension; IVF_PQ m=32 codes of 8 bits, FAISS pq32's size
    assert sq8["costs"]["bytes_per_item"] == 1280 == rows["int8"]["costs"]["bytes_per_item"]
    assert pq["costs"]["bytes_per_item"] == 32 * 8 / 8 == rows["pq32"]["costs"]["bytes_per_item"]
    frame = frontier_frame(load_run(tmp_path / "server")).query("protocol == 'fine'").set_index("method")
    # the server reports no index size, so the frontier budgets the codes alone; FAISS int8's measured index less
    # its fixed ranges comes to the same byte per dimension
    memory = frame["memory_per_item"]
    assert memory["milvus:IVF_SQ8"] == 1280 and memory["milvus:IVF_PQ"] == 32
    assert memory["int8"] == 1280 and math.isnan(frame.loc["milvus:IVF_SQ8", "index_bytes"])
    recall = {name: row["metrics"]["recall@10"] for name, row in rows.items() if row["status"] == "ok"}
    assert recall["milvus:IVF_SQ8"] > 0.9 and abs(recall["milvus:IVF_SQ8"] - recall["int8"]) < 0.05, recall
    # measured 0.70 and 0.68: Milvus's IVF-PQ (residual codes, 16 of 33 lists probed) and FAISS's flat PQ
    assert 0.5 < recall["milvus:IVF_PQ"] < 0.9 and abs(recall["milvus:IVF_PQ"] - recall["pq32"]) < 0.2, recall
    lite = _bench(tmp_path / "lite", grocery_root, ["int8", "milvus:IVF_SQ8", "milvus:IVF_PQ"], None)
    assert lite["float"]["metrics"] == rows["float"]["metrics"]  # the same embeddings, the same exact search
    assert lite["int8"]["metrics"] == rows["int8"]["metrics"]  # FAISS parts agree exactly
    assert lite["milvus:IVF_PQ"]["status"] == "refused" and "milvus_lite" in lite["milvus:IVF_PQ"]["reason"]
    lite_sq8 = lite["milvus:IVF_SQ8"]
    assert lite_sq8["index"]["params"] == sq8["index"]["params"] and lite_sq8["costs"]["bytes_per_item"] == 1280
    assert abs(lite_sq8["metrics"]["recall@10"] - recall["milvus:IVF_SQ8"]) < 0.05
