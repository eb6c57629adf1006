"""A served compressed index (``shelfsight index --compress``) answers as the bench's compression does.

Real Milvus Lite, real uvicorn, real Grocery Store photos (the test_serve subset: 70 indexed photos of 14 classes
and 42 queries on the full dataset; 25 and 15 on the committed fixture). The bench side is
``compress.run_method`` itself on the same catalogue embeddings: same PCA fit (the gallery), same Milvus index
type and parameters; the service's top-k through HTTP must list the same ids in the same order (an adjacent pair
may swap only where the two scores tie to 1e-4: the service encodes each photo alone, the bench in batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from shelfsight.backbones import load_backbone
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.cli import app as cli_app
from shelfsight.compress import (
    CompressConfig,
    MethodRun,
    Projections,
    Side,
    fit_projection,
    parse_method,
    run_method,
)
from shelfsight.compress.indexes import MilvusPlace
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.search import ExactIndex
from shelfsight.serve import (
    IndexReport,
    ServeError,
    ServeSettings,
    VisualSearchService,
    build_index,
    create_app,
    serve_in_thread,
)
from shelfsight.serve.compression import load_projection, parse_compression, recorded_method
from shelfsight.serve.manifest import IndexLayout, read_manifest
from shelfsight.serve.pipeline import Lookup
from test_serve import MODEL, GrocerySubset, grocery_subset, upload

PCA = 16
"""PCA dimensions: fewer than the fixture's 25 indexed photos (a PCA needs at least as many items)."""
K = 5
TIE = 1e-4


@pytest.fixture(scope="module")
def subset(grocery_root: Path) -> GrocerySubset:
    return grocery_subset(grocery_root)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compress-cache")


@pytest.fixture(scope="module")
def queries(subset: GrocerySubset, grocery_root: Path) -> Catalog:
    every = load_catalog("grocery-store", data_dir=grocery_root, splits=("test",))
    return every.subset([item.item_id for item in subset.queries], name="compress-queries")


def _build(subset: GrocerySubset, cache: Path, folder: Path, compress: str | None, **options: Any) -> IndexReport:
    return build_index(MODEL, subset.index, folder, cache_dir=cache, num_workers=0, progress=False,
                       export_onnx=False, compress=compress, **options)


def _bench_answer(subset: GrocerySubset, queries: Catalog, cache: Path, method: str,
                  folder: Path) -> tuple[MethodRun, Embeddings, Embeddings]:
    """The bench's compress strategy on this catalogue: run_method with the gallery's own PCA and Milvus index."""
    backbone = load_backbone(MODEL)
    gallery = embed_catalog(subset.index, backbone, cache_dir=cache, num_workers=0, progress=False)
    asked = embed_catalog(queries, backbone, cache_dir=cache, num_workers=0, progress=False)
    side = Side(gallery.ids, gallery.vectors, asked.vectors, None, b"serve-compress")
    run = run_method(parse_method(method), side, config=CompressConfig(depth=K), projections=Projections(),
                     place=MilvusPlace(path=folder / "bench.db"), collection="bench")
    return run, gallery, asked


def _served(url: str, queries: Catalog) -> dict[str, list[tuple[str, float]]]:
    """Each query photo's top K from POST /search/batch (32 photos a request at most)."""
    answers: dict[str, list[tuple[str, float]]] = {}
    items = list(queries)
    with httpx.Client(base_url=url, timeout=120) as http:
        for start in range(0, len(items), 32):
            chunk = items[start:start + 32]
            files = [("images", (i.image_path.name, i.image_path.read_bytes(), "image/jpeg")) for i in chunk]
            response = http.post("/search/batch", files=files, data={"k": str(K)})
            assert response.status_code == 200, response.text
            for item, entry in zip(chunk, response.json()["entries"], strict=True):
                assert entry["status"] == 200, entry
                answers[item.item_id] = [(hit["id"], hit["score"]) for hit in entry["results"]]
    return answers


def _same_ranking(served: list[tuple[str, float]], bench_ids: list[str], bench_scores: np.ndarray) -> int:
    """Asserts the two top-k lists agree; returns how many positions differ only by a tie (within ``TIE``)."""
    assert len(served) == len(bench_ids) == K
    bench = dict(zip(bench_ids, bench_scores.tolist(), strict=True))
    ties = 0
    for position, (item_id, score) in enumerate(served):
        assert score == pytest.approx(min(1.0, float(bench_scores[position])), abs=2e-3)  # the service clips
        if item_id != bench_ids[position]:
            assert item_id in bench and abs(bench[item_id] - bench_scores[position]) < TIE, (served, bench_ids)
            ties += 1
    return ties


def test_service_projects_queries_with_the_stored_pca(subset: GrocerySubset, queries: Catalog, cache: Path,
                                                      tmp_path: Path) -> None:
    """The PCA read back from projection.npz is the bench's fit, and the service's query vectors go through it."""
    _build(subset, cache, tmp_path / "index", "pca16")
    layout = IndexLayout.at(tmp_path / "index")
    backbone = load_backbone(MODEL)
    gallery = embed_catalog(subset.index, backbone, cache_dir=cache, num_workers=0, progress=False)
    asked = embed_catalog(queries, backbone, cache_dir=cache, num_workers=0, progress=False)
    fitted, stored = fit_projection(gallery.vectors, PCA), load_projection(layout, read_manifest(layout).compression)
    np.testing.assert_allclose(stored.apply(asked.vectors), fitted.apply(asked.vectors), atol=1e-6)
    with VisualSearchService.open(layout.folder, encoder="torch") as service:
        vector = service.embed_photo(queries.items[0].image_path).vector
        assert vector.shape == (PCA,) and float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, fitted.apply(asked.vectors[:1])[0], atol=1e-4)
        unprojected = service.search_stage([Lookup(asked.vectors[0], K)])[0]  # e.g. a text query's vector
        assert [hit.id for hit in unprojected] == [hit.id for hit in service.search_stage([Lookup(vector, K)])[0]]
        health = service.health()["compression"]
        assert health == {"method": "pca16", "index_type": "FLAT", "source_dim": 1280, "bytes_per_item": 64}


# ── (a) the served compressed index answers like the bench's ─────────────────────────────────────────────────


@pytest.mark.parametrize(("compress", "index_type", "bench_method", "built"), [
    ("pca16", "FLAT", f"pca{PCA}", "FLAT"),
    ("sq8", "FLAT", "milvus:IVF_SQ8", "IVF_SQ8"),
    ("pca16-sq8", "FLAT", f"pca{PCA}-milvus:IVF_SQ8", "IVF_SQ8"),
    ("pca16-int8", "HNSW", f"pca{PCA}-milvus:HNSW_SQ", "HNSW_SQ"),
])
def test_served_compressed_index_answers_like_the_bench(subset: GrocerySubset, queries: Catalog, cache: Path,
                                                        tmp_path: Path, compress: str, index_type: str,
                                                        bench_method: str, built: str) -> None:
    report = _build(subset, cache, tmp_path / "index", compress, index_type=index_type)
    n = len(subset.index)
    dim = PCA if compress.startswith("pca") else 1280
    assert (report.added, report.total, report.dim) == (n, n, dim)
    assert report.bytes_per_item == (4 * dim if compress == "pca16" else dim)  # int8 codes: a byte per dimension
    manifest = read_manifest(IndexLayout.at(tmp_path / "index"))
    assert manifest.milvus.index_type == built and manifest.dim == dim
    run, gallery, asked = _bench_answer(subset, queries, cache, bench_method, tmp_path)
    assert run.costs["dim"] == dim and run.costs["bytes_per_item"] == report.bytes_per_item
    with serve_in_thread(create_app(ServeSettings(index_dir=tmp_path / "index", encoder="torch"))) as url:
        served = _served(url, queries)
    ties = sum(_same_ranking(served[item_id], run.answer.ids[row], run.answer.scores[row])
               for row, item_id in enumerate(asked.ids))
    projection = fit_projection(gallery.vectors, PCA if compress.startswith("pca") else None)
    exact = ExactIndex()
    exact.add(gallery.ids, projection.apply(gallery.vectors))
    truth = exact.search(projection.apply(asked.vectors), K).ids
    recall = np.mean([len(set(truth[row]) & {i for i, _ in served[item_id]}) / K
                      for row, item_id in enumerate(asked.ids)])
    print(f"{compress} ({built}): {len(asked.ids)} queries, top-{K} equal to the bench's ({ties} tie swaps); "
          f"recall@{K} against exact search in the projected space {recall:.3f}")
    assert ties <= len(asked.ids) // 10
    assert recall >= (1.0 if built == "FLAT" else 0.9)


# ── (b) an item added through the API is stored projected and found by its own photo ─────────────────────────


def test_added_item_is_found_by_its_own_photo(subset: GrocerySubset, cache: Path, tmp_path: Path) -> None:
    _build(subset, cache, tmp_path / "index", "pca16-sq8")
    settings = ServeSettings(index_dir=tmp_path / "index", encoder="torch")
    new = subset.others[:2]
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as http:
        for n, item in enumerate(new):
            added = http.post("/items", files=upload(item.image_path), data={"id": f"new-{n}", "label": "New"})
            assert added.status_code == 201, added.text
        for n, item in enumerate(new):
            best = http.post("/search", files=upload(item.image_path), data={"k": "3"}).json()["results"][0]
            assert best["id"] == f"new-{n}" and best["score"] == pytest.approx(1.0, abs=2e-2)
            assert -1.0 <= best["score"] <= 1.0  # an 8-bit index scores its own photo up to 1.003: clipped
        similar = http.get("/items/new-0/similar", params={"k": "3"}).json()["results"]
        assert len(similar) == 3 and "new-0" not in {hit["id"] for hit in similar}
    with VisualSearchService.open(tmp_path / "index", encoder="torch") as service:  # stored in the 16-d space
        stored = service.index.get(["new-0"])
        assert "new-0" in stored and service.count() == len(subset.index) + 2
        hits = service.search(new[1].image_path, k=1).hits
        assert hits[0].id == "new-1"


# ── (c) the manifest records the compression; another one on the same folder is refused ─────────────────────


def test_manifest_records_compression_and_refuses_another(subset: GrocerySubset, cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    _build(subset, cache, folder, "pca16-sq8")
    stored = json.loads((folder / "service.json").read_text())
    record = stored["compression"]
    assert (record["method"], record["pca"], record["sq8"], record["source_dim"], record["dim"]) == \
        ("pca16-sq8", 16, True, 1280, 16)
    assert record["projection"] == "projection.npz" and (folder / "projection.npz").is_file()
    assert record["bytes_per_item"] == 16 and stored["dim"] == 16 and stored["milvus"]["index_type"] == "IVF_SQ8"
    assert stored["milvus"]["params"]["nlist"] == round(len(subset.index) ** 0.5)
    with pytest.raises(ServeError, match=r"indexed with --compress pca16-sq8, not pca32.*--overwrite"):
        _build(subset, cache, folder, "pca32")
    with pytest.raises(ServeError, match="indexed with --compress pca16-sq8, not none"):
        _build(subset, cache, folder, "none")
    again = _build(subset, cache, folder, None)  # no --compress: the folder's own
    assert (again.added, again.already_indexed, again.compression) == (0, len(subset.index), "pca16-sq8")
    rebuilt = _build(subset, cache, folder, "sq8", overwrite=True)
    assert (rebuilt.compression, rebuilt.dim, rebuilt.added) == ("sq8", 1280, len(subset.index))
    assert not (folder / "projection.npz").exists()
    _build(subset, cache, folder, "pca16", overwrite=True)
    (folder / "projection.npz").write_bytes(b"changed")
    with pytest.raises(ServeError, match="projection.*changed since indexing"):
        VisualSearchService.open(folder, encoder="torch")


def test_unservable_compressions_are_refused_with_the_reason() -> None:
    assert parse_compression("pca256-int8").name == "pca256-sq8"
    assert parse_compression("milvus:HNSW_SQ").index_type("FLAT") == "HNSW_SQ"
    assert parse_compression("sq8").index_type("HNSW") == "HNSW_SQ"
    assert parse_compression(None, "IVF_SQ8").name == "sq8"  # --index-type IVF_SQ8 is recorded as sq8
    assert recorded_method(None, "IVF_SQ8") == "sq8"  # and so is a folder built that way before --compress
    for method in ("binary", "binary-rerank4", "pca256-binary-rerank4", "pq32", "milvus:IVF_PQ"):
        with pytest.raises(ServeError, match=r"supports sq8, pcaD, pcaD-sq8.*no binary index.*IVF_PQ"):
            parse_compression(method)
    with pytest.raises(ServeError, match="cannot read 'bogus'.*supports sq8"):
        parse_compression("bogus")
    with pytest.raises(ServeError, match="no int8 variant"):
        parse_compression("sq8").index_type("DISKANN")


# ── (d) `shelfsight index` prints the bytes per stored vector ────────────────────────────────────────────────


def test_cli_index_prints_bytes_per_stored_vector(subset: GrocerySubset, cache: Path, tmp_path: Path) -> None:
    products = tmp_path / "products.csv"
    products.write_text("\n".join(["path,label,id"] + [f"{item.image_path},{item.label},{item.item_id}"
                                                         for item in subset.index]) + "\n")
    runner = CliRunner()
    base = ["index", "--model", MODEL, "--catalog", str(products), "--no-onnx", "--workers", "0", "--quiet",
            "--cache-dir", str(cache)]
    expected = {"pca16": "64 bytes per stored vector (16-d float32)",
                "pca16-sq8": "16 bytes per stored vector (16-d int8)",
                "none": "5,120 bytes per stored vector (1280-d float32)"}
    for method, line in expected.items():
        result = runner.invoke(cli_app, [*base, "--index-dir", str(tmp_path / method), "--compress", method])
        assert result.exit_code == 0, result.output
        assert f"compression {method}: {line}" in result.output and "measured" in result.output
        print(next(text for text in result.output.splitlines() if text.startswith("compression")))
    refused = runner.invoke(cli_app, [*base, "--index-dir", str(tmp_path / "pca16"), "--compress", "binary"])
    assert refused.exit_code != 0 and "no binary index" in str(refused.exception)
