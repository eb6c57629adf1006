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
    report = bulk_index(index, shards, catalog=catalog, batch_rows=17, read_ahead=1)
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
        first = bulk_index(index, shards[:2])  # the load stopped after two shards
        again = bulk_index(index, shards)
        assert (first.inserted, again.inserted, again.already_present) == (60, 60, 60)
        assert len(index) == 120


@pytest.mark.slow  # a server process and a real embedding run: ~35 s
def test_retrieval_on_a_milvus_server_with_bulk_indexed_shards_equals_milvus_lite(
        milvus_server: str, grocery_root: Path, tmp_path: Path) -> None:
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
    with MilvusIndex.server(milvus_server, "", "grocery_fine", embeddings.dim, overwrite=True) as server:
        report = bulk_index(server, shards, catalog=catalog, keep_ids=set(data.gallery_ids), batch_rows=100)
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
