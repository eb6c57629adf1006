"""A real Milvus 2.3.5 server (tests/milvus_server.py): isolated on loopback, the bench's numbers equal Milvus
Lite's, `shelfsight index --uri` + `serve --uri` search, add and delete, and the server-only paths (IVF_PQ,
build timeout and progress, a new collection's lookups) work."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from milvus_server import group_processes, listening_addresses, skip_reason
from shelfsight.bench import ConfigError, load_config, read_table, run_bench
from shelfsight.search import MilvusIndex, MilvusIndexConfig, MilvusIndexError, MilvusRequestConfig
from shelfsight.search.milvus_config import index_options, recorded_params

SMALL_MODEL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0-64"}
SMALL_GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ivf_pq_is_accepted_by_the_bench_config_with_sizes_from_the_collection() -> None:
    config = load_config({"models": ["x"], "datasets": ["d"], "index": {
        "backend": "milvus", "uri": "http://127.0.0.1:1", "type": "IVF_PQ", "build_timeout": 900}})
    assert (config.index.type, config.index.build_timeout) == ("IVF_PQ", 900)
    with pytest.raises(ConfigError, match="IVF_PQ needs backend 'milvus'.*Milvus Lite 3.2.2 cannot build it"):
        load_config({"models": ["x"], "datasets": ["d"], "index": {"type": "IVF_PQ"}})
    assert index_options("IVF_PQ", {}, 1280) == {"pq_m": 32, "nlist": None}  # 1280 = 32 x 40
    assert index_options("IVF_PQ", {"m": 8, "nlist": 50, "nprobe": 4}, 24) == {"pq_m": 8, "nlist": 50, "nprobe": 4}
    assert index_options("IVF_PQ", {}, 24)["pq_m"] == 8 and index_options("HNSW", {"m": 8}, 24) == {"m": 8}
    with pytest.raises(MilvusIndexError, match="m=16 does not divide the embedding dimension 24"):
        index_options("IVF_PQ", {"m": 16}, 24)
    auto = MilvusIndexConfig(index_type="IVF_PQ", nlist=None, pq_m=8)
    assert auto.build_params() == {"m": 8, "nbits": 8}  # any recorded nlist is accepted on reuse
    assert auto.sized(20000).nlist == 141 and auto.sized(0).nlist == 1 and auto.sized(10).sized(99).nlist == 3
    with pytest.raises(ValueError, match="build_timeout must be positive"):
        MilvusRequestConfig(build_timeout=0)
    with pytest.raises(ValueError, match="consistency must be one of Strong, Session, Bounded, Eventually, got 'Now'"):
        MilvusRequestConfig(consistency="Now")


@pytest.mark.slow  # two clients on one collection of the server: ~15 s
def test_session_reads_see_their_own_writes_at_once_and_another_clients_within_seconds(milvus_standalone: str) -> None:
    """The service reads at Session consistency (a Strong search waits ~200 ms for the server's time tick)."""
    vectors = _unit(41, 16, 5)
    with MilvusIndex.server(milvus_standalone, "", "session", 16, overwrite=True) as writer:
        writer.add([f"w{i}" for i in range(20)], vectors[:20])
        assert writer.search(vectors[:1], 1).ids == [["w0"]]
        with MilvusIndex.server(milvus_standalone, "", "session", 16, reuse=True, consistency="Session") as reader:
            assert reader.requests.consistency == "Session" and writer.requests.consistency == "Strong"
            reader.add([f"r{i}" for i in range(20)], vectors[20:40])
            assert reader.search(vectors[20:22], 1).ids == [["r0"], ["r1"]]  # its own writes: at once
            writer.add(["late"], vectors[40:])
            deadline, seen = time.monotonic() + 10, []
            while time.monotonic() < deadline and seen != [["late"]]:
                seen = reader.search(vectors[40:], 1).ids
                time.sleep(0.05)
            assert seen == [["late"]]  # another client's write, within the server's tick
            strong = writer.search(vectors, 3)
            session = reader.search(vectors, 3)
            assert strong.ids == session.ids and np.allclose(strong.scores, session.scores, atol=1e-6)
            result, records = reader.search_records(vectors[:3], 2)  # one call on a server: the hits' fields
            assert result.ids == reader.search(vectors[:3], 2).ids and records == reader.get(sorted(records))
            assert set(records) == {i for row in result.ids for i in row} and records["w0"]["position"] == 0
            reader.delete(["r1"])  # its own delete: gone from its next search, whenever the server applies it
            assert reader.search(vectors[21:22], 1).ids != [["r1"]] and "r1" not in reader.search(vectors, 41).ids[0]


@pytest.mark.slow  # a second server, started and stopped by the CLI: ~30 s
def test_the_cli_starts_a_server_on_loopback_only_and_stops_every_process(tmp_path: Path) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from typer.testing import CliRunner

    from shelfsight.cli import app
    from shelfsight.search.milvus_server import MilvusServer, free_port

    port, data = free_port(), tmp_path / "milvus-data"
    started = CliRunner().invoke(app, ["milvus", "start", "--data", str(data), "--port", str(port)])
    assert started.exit_code == 0, started.output
    server = MilvusServer(**__import__("json").loads((data / "server.json").read_text()))
    try:
        assert server.uri == f"http://127.0.0.1:{port}" and server.version == "2.3.5" and server.isolated
        pids = {int(line.split()[0]) for line in group_processes(server.pid)}
        assert len(pids) == 2  # the forwarding script and Milvus under it
        assert listening_addresses(pids) == {f"127.0.0.1:{port}"}  # nothing else reachable from this host
        client = __import__("pymilvus").MilvusClient(uri=server.uri)
        assert client.get_server_version() == "v2.3.5-lite"
        client.close()
    finally:
        stopped = CliRunner().invoke(app, ["milvus", "stop", "--data", str(data)])
    assert stopped.exit_code == 0 and f"stopped Milvus at {server.uri}" in stopped.output, stopped.output
    assert group_processes(server.pid) == [] and not (data / "server.json").exists()


@pytest.mark.slow  # two small bench runs, one on the server: ~40 s
def test_a_bench_on_the_server_reproduces_the_milvus_lite_cell_exactly(milvus_standalone: str, grocery_root: Path,
                                                                       tmp_path: Path) -> None:
    tables = {}
    for backend in ("milvus-lite", "milvus"):
        index = {"backend": backend, "type": "FLAT", **({"uri": milvus_standalone} if backend == "milvus" else {})}
        config = load_config({"name": "t", "models": [SMALL_MODEL], "datasets": [SMALL_GROCERY], "index": index,
                              "retrieval": {"k": 20}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False}})
        summary = run_bench(config, tmp_path / backend, progress=False)
        assert summary.failed == [], summary
        table = read_table(tmp_path / backend)
        tables[backend] = table[table["protocol"] != "cost"].set_index(["protocol", "metric"])["mean"].sort_index()
    lite, server = tables["milvus-lite"], tables["milvus"]
    assert list(lite.index) == list(server.index) and len(lite) > 20
    np.testing.assert_array_equal(server.to_numpy(), lite.to_numpy())  # exactly, metric by metric
    assert lite[("fine", "index_recall@20")] == 1.0 and lite[("fine", "mMP@5")] > 0.1  # 0.18 on the 81 classes


@pytest.mark.slow  # one IVF_PQ build on the server: ~30 s
def test_ivf_pq_on_the_server_sizes_nlist_and_a_short_build_timeout_says_what_to_raise(milvus_standalone: str) -> None:
    vectors, dim = _unit(3000, 32, 4), 32
    ids = [f"i{i}" for i in range(3000)]
    with MilvusIndex.server(milvus_standalone, "", "pq", dim, overwrite=True, index_type="IVF_PQ",
                            **index_options("IVF_PQ", {"nprobe": 64}, dim)) as index:
        assert index.get(ids[:5]) == {}  # a new collection: no query (the server refuses an unloaded one)
        index.add(ids, vectors)
        assert index.get(["i7", "nope"]) == {"i7": {"label": "", "split": "", "position": 7}}
        info = index._index_info() or {}
        assert info["index_type"] == "IVF_PQ", info
        recorded = recorded_params(info, {"nlist": 0, "m": 0, "nbits": 0})
        assert recorded == {"nlist": 55, "m": 32, "nbits": 8}  # nlist: round(sqrt(3000))
        assert index.config.nlist == 55 and info["indexed_rows"] == 3000
        found = index.search(vectors[:50], 5)
        assert np.mean([row[0] == f"i{q}" for q, row in enumerate(found.ids)]) >= 0.9
    with MilvusIndex.server(milvus_standalone, "", "slow", dim, overwrite=True, index_type="IVF_FLAT",
                            build_timeout=0.001) as index:
        index.add(ids, vectors)
        started = time.monotonic()
        with pytest.raises(MilvusIndexError, match=r"not built within 0 s .*raise build_timeout \(index.build_timeout"):
            index.search(vectors[:1], 1)
        assert time.monotonic() - started < 60
        index.drop()


@pytest.mark.slow  # `shelfsight index --uri` then `shelfsight serve --uri`: ~60 s
def test_index_and_serve_on_the_server_search_add_and_delete(milvus_standalone: str, grocery_root: Path,
                                                             tmp_path: Path) -> None:
    import httpx
    from typer.testing import CliRunner

    from shelfsight.catalog import load_catalog
    from shelfsight.cli import app
    from test_serve import upload
    from test_serve_browser import serve_process

    photos = tmp_path / "photos"
    chosen = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",)).per_class(1).items[:6]
    for item in chosen:
        (photos / item.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(item.image_path, photos / item.label / item.image_path.name)
    command = ["index", "--model", "efficientnet_lite0", "--catalog", str(photos), "--index-dir", str(tmp_path / "idx"),
               "--uri", milvus_standalone, "--collection", "served_cli", "--quiet", "--no-onnx", "--workers", "0",
               "--build-timeout", "600"]
    built = CliRunner().invoke(app, command)  # a new collection: failed with "collection not loaded" before
    assert built.exit_code == 0, built.output
    assert "6 added" in built.output and "6 items in" in built.output
    again = CliRunner().invoke(app, command)  # extending: lookups of stored ids on the loaded collection
    assert again.exit_code == 0 and "0 added" in again.output and "6 already indexed" in again.output, again.output
    catalog, total = load_catalog(str(photos)), 6
    probe = catalog.items[1]
    with serve_process(tmp_path / "idx", "--uri", milvus_standalone, "--api-key", "k") as (url, _), \
            httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/health").json()["items"] == total
        best = http.post("/search", files=upload(probe.image_path), data={"k": "3"}).json()["results"][0]
        assert best["id"] == probe.item_id and best["score"] == pytest.approx(1.0, abs=1e-5)
        added = http.post("/items", files=upload(probe.image_path), data={"id": "added-copy"},
                          headers={"Authorization": "Bearer k"})
        assert added.status_code == 201, added.text
        ids = [hit["id"] for hit in http.post("/search", files=upload(probe.image_path),
                                              data={"k": "2"}).json()["results"]]
        assert set(ids) == {probe.item_id, "added-copy"}
        assert http.get("/health").json()["items"] == total + 1
        assert http.delete("/items/added-copy", headers={"X-API-Key": "k"}).status_code == 200
        after = [hit["id"] for hit in http.post("/search", files=upload(probe.image_path),
                                                data={"k": "2"}).json()["results"]]
        assert "added-copy" not in after and after[0] == probe.item_id
    assert math.isfinite(best["score"])
