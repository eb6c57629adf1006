"""Bulk indexing from Parquet shards: bounded, resumable, and the same metrics on a Milvus server as on Lite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelfsight.backbones import load_backbone
from shelfsight.bench.evaluate import evaluate_protocol, split_for
from shelfsight.catalog import DATASETS, Catalog, CatalogItem, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.shards import export_shards, read_shard, write_shard
from shelfsight.metrics import retrieval_report
from shelfsight.search import ExactIndex, MilvusIndex
from shelfsight.search.bulk import bulk_index


@pytest.fixture(params=["milvus-lite server", "milvus 2.3.5"])
def any_server(request: pytest.FixtureRequest) -> str:
    """The URI of a `milvus-lite server` process, then of a real Milvus 2.3.5 standalone server."""
    return str(request.getfixturevalue("milvus_server" if request.param.startswith("milvus-lite")
                                       else "milvus_standalone"))


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _catalog(ids: list[str]) -> Catalog:
    items = tuple(CatalogItem(item_id=i, image_path=Path(f"/nowhere/{i}.jpg"), label=f"c{k % 3}",
                              split="train" if k % 2 else "test") for k, i in enumerate(ids))
    return Catalog(name="synthetic", root=Path("/nowhere"), items=items)


def test_shards_round_trip_exactly(tmp_path: Path) -> None:
    vectors = _unit(10, 7, 0)
    path = write_shard(tmp_path / "a.parquet", [f"id{i}" for i in range(10)], vectors)
    ids, back = read_shard(path)
    assert ids == [f"id{i}" for i in range(10)]
    np.testing.assert_array_equal(back, vectors)
    with pytest.raises(ValueError, match="3 ids for vectors of shape"):
        write_shard(tmp_path / "b.parquet", ["a", "b", "c"], vectors)


def test_bulk_index_streams_every_shard_with_labels_from_the_catalogue(tmp_path: Path) -> None:
    ids = [f"item-{i:03d}" for i in range(250)]
    vectors = _unit(250, 16, 1)
    shards = export_shards(ids, vectors, tmp_path / "shards", rows_per_shard=40)
    assert len(shards) == 7
    catalog = _catalog(ids[:-5])  # five rows the catalogue does not know
    index = ExactIndex()
    report = bulk_index(index, shards, read=read_shard, catalog=catalog, batch_rows=17, read_ahead=1)
    assert (report.inserted, report.not_in_catalog, report.shards) == (245, 5, 7)
    assert len(index) == 245
    expected = ExactIndex()
    expected.add(ids[:-5], vectors[:-5])
    found, reference = index.search(vectors[:20], 5), expected.search(vectors[:20], 5)
    assert found.ids == reference.ids
    filtered = index.search(vectors[:20], 5, label="c1")
    assert all(int(i.split("-")[1]) % 3 == 1 for row in filtered.ids for i in row if i)


def test_an_interrupted_bulk_load_is_finished_by_running_it_again(tmp_path: Path) -> None:
    ids = [f"item-{i:03d}" for i in range(120)]
    shards = export_shards(ids, _unit(120, 8, 2), tmp_path / "shards", rows_per_shard=30)
    with MilvusIndex.lite(tmp_path / "bulk.db", "items", 8) as index:
        first = bulk_index(index, shards[:2], read=read_shard)  # the load stopped after two shards
        again = bulk_index(index, shards, read=read_shard)
        assert (first.inserted, again.inserted, again.already_present) == (60, 60, 60)
        assert len(index) == 120


@pytest.mark.slow  # a server process and a real embedding run: ~35 s per server
def test_retrieval_on_a_milvus_server_with_bulk_indexed_shards_equals_milvus_lite(
        any_server: str, grocery_root: Path, tmp_path: Path) -> None:
    """Grocery fine protocol: gallery bulk-loaded from shards into a `milvus-lite server` process over the
    network, queries searched there; the metrics equal the bench's Milvus Lite evaluation."""
    full = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "val", "test"))
    catalog = full.subset([i for split in ("train", "val", "test") for i in full.select_splits(split).per_class(2).ids])
    backbone = load_backbone("efficientnet_lite0", preprocess={"input_size": 64})
    embeddings = embed_catalog(catalog, backbone, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    protocol = DATASETS["grocery-store"].protocols[0]
    data = split_for(protocol, catalog, embeddings)
    shards = export_shards(embeddings.ids, embeddings.vectors, tmp_path / "shards", rows_per_shard=64)

    def lite(collection: str, dim: int) -> MilvusIndex:
        return MilvusIndex.lite(tmp_path / "lite.db", collection, dim, overwrite=True)

    expected = evaluate_protocol(protocol, catalog, embeddings, make_index=lite, collection="fine", k=20).metrics
    with MilvusIndex.server(any_server, "", "grocery_fine", embeddings.dim, overwrite=True) as server:
        report = bulk_index(server, shards, read=read_shard, catalog=catalog, keep_ids=set(data.gallery_ids),
                            batch_rows=100)
        assert report.inserted == len(data.gallery_ids) == len(server)
        answer = server.search(data.query_vectors, 20)
    position = {item_id: row for row, item_id in enumerate(data.gallery_ids)}
    indices = np.array([[position[i] for i in row] for row in answer.ids])
    found = retrieval_report(data.query_keys, data.gallery_keys, indices, same_set=False, ks=(1, 5, 10)).metrics
    for name in ("mMP@5", "R@1", "R@10", "P@5", "MRR"):
        assert found[name] == pytest.approx(expected[name], abs=1e-9), name
    assert expected["mMP@5"] > 0.2  # real features, not noise


def test_bulk_index_command_loads_shards_and_finishes_an_interrupted_load(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shelfsight.cli import app

    ids = [f"item-{i:03d}" for i in range(90)]
    export_shards(ids, _unit(90, 12, 3), tmp_path / "shards", rows_per_shard=30)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "chunk-00000.parquet").write_bytes((tmp_path / "shards" / "chunk-00000.parquet").read_bytes())
    db = tmp_path / "bulk.db"
    base = ["bulk-index", "--collection", "items", "--db", str(db), "--index-type", "FLAT", "--quiet"]
    first = CliRunner().invoke(app, [*base, "--shards", str(partial)])
    assert first.exit_code == 0, first.output
    assert "30 rows inserted" in first.output
    second = CliRunner().invoke(app, [*base, "--shards", str(tmp_path / "shards")])
    assert second.exit_code == 0, second.output
    assert "60 rows inserted (30 already present" in second.output and "holds 90 rows" in second.output
    neither = CliRunner().invoke(app, ["bulk-index", "--collection", "x", "--shards", str(partial)])
    assert neither.exit_code != 0 and "exactly one of --uri" in neither.output


@pytest.mark.slow  # a Milvus server, an embedding run, `shelfsight serve` and a browser: ~60 s per server
def test_bulk_indexed_shards_are_served_from_a_milvus_server(any_server: str, grocery_root: Path,
                                                             tmp_path: Path) -> None:
    """Shards -> `milvus-lite server` (bulk-index --index-dir --model) -> `shelfsight serve --uri` -> a search from
    the web page: catalogue photos find themselves, thumbnails load, similar items and additions work."""
    import httpx
    from typer.testing import CliRunner

    from shelfsight.cli import app
    from test_serve import upload
    from test_serve_browser import CHROMIUM, serve_process

    full = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    catalog = full.subset(full.per_class(2).ids)
    embeddings = embed_catalog(catalog, load_backbone("efficientnet_lite0"), cache_dir=tmp_path / "cache",
                               num_workers=0, progress=False)
    export_shards(embeddings.ids, embeddings.vectors, tmp_path / "shards", rows_per_shard=16)
    loaded = CliRunner().invoke(app, [
        "bulk-index", "--shards", str(tmp_path / "shards"), "--uri", any_server, "--collection", "served",
        "--dataset", "grocery-store", "--data-dir", str(grocery_root), "--model", "efficientnet_lite0",
        "--index-dir", str(tmp_path / "index"), "--index-type", "HNSW", "--quiet"])
    assert loaded.exit_code == 0, loaded.output
    assert f"{len(catalog)} rows inserted" in loaded.output and "shelfsight serve --index-dir" in loaded.output
    probe = catalog.items[3]
    with serve_process(tmp_path / "index", "--uri", any_server, "--api-key", "k") as (url, _):
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/health").json()["items"] == len(catalog)
            best = http.post("/search", files=upload(probe.image_path), data={"k": "3"}).json()["results"][0]
            assert best["id"] == probe.item_id and best["score"] == pytest.approx(1.0, abs=1e-5)
            assert best["metadata"]["coarse_label"] == probe.coarse_label
            assert http.get(best["image_url"]).content == probe.image_path.read_bytes()
            similar = http.get(f"/items/{probe.item_id}/similar", params={"k": "3"}).json()["results"]
            assert probe.item_id not in [hit["id"] for hit in similar] and len(similar) == 3
            added = http.post("/items", files=upload(catalog.items[0].image_path), data={"id": "added"},
                              headers={"Authorization": "Bearer k"})
            assert added.status_code == 201, added.text
            assert http.delete("/items/added", headers={"X-API-Key": "k"}).status_code == 200
        if CHROMIUM.is_file():
            _search_from_the_page(url, probe.image_path, probe.label)


def _search_from_the_page(url: str, photo: Path, label: str) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    from test_serve_browser import CHROMIUM

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.set_input_files("#file", str(photo))
            results = page.locator("#results .result")
            playwright_api.expect(results).to_have_count(10)
            assert results.first.get_attribute("data-label") == label
            page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
        finally:
            browser.close()


def test_a_bare_bulk_load_is_served_read_only(grocery_photos: list[Path], tmp_path: Path) -> None:
    """A collection bulk-loaded without --index-dir has no attributes field: given the folder's service.json, the
    service opens it (no longer refused), searches it, and refuses additions with a 409 that says what to do."""
    from fastapi.testclient import TestClient

    from shelfsight.serve import ServeSettings, create_app
    from shelfsight.serve.bulk_serving import served_bulk
    from shelfsight.serve.manifest import MilvusTarget

    ids = [f"sku-{i:03d}" for i in range(40)]
    export_shards(ids, _unit(40, 1280, 4), tmp_path / "shards", rows_per_shard=16)
    folder = served_bulk(tmp_path / "index", model="efficientnet_lite0", dim=1280,
                         target=MilvusTarget(collection="bare"), catalog=None)
    with MilvusIndex.lite(folder.layout.milvus_lite, "bare", 1280) as bare:  # no attributes field
        assert bulk_index(bare, sorted((tmp_path / "shards").glob("*.parquet")), read=read_shard).inserted == 40
    folder.finish(40)
    photo = {"image": ("p.jpg", grocery_photos[0].read_bytes(), "image/jpeg")}
    settings = ServeSettings(index_dir=tmp_path / "index", encoder="torch")
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        health = client.get("/health").json()
        assert health["items"] == 40 and health["writable"] is False
        results = client.post("/search", files=photo, data={"k": "5"}).json()["results"]
        assert len(results) == 5 and {r["id"] for r in results} <= set(ids) and results[0]["metadata"] == {}
        assert client.get(results[0]["image_url"]).status_code == 404
        refused = client.post("/items", files=photo, data={"id": "new"})
        assert refused.status_code == 409 and "--index-dir" in refused.json()["detail"]
