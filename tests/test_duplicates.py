"""Duplicates without a model: content digests, near pairs against brute force (exact and Milvus Lite),
clusters, the CSV and HTML files, perceptual hashes against imagehash, calibration metrics against naive
versions, and the exact-copy leakage `datasets check` reports."""

from __future__ import annotations

import csv
import hashlib
import itertools
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.catalog.check import check_dataset
from shelfsight.duplicates import (
    CalibrationError,
    Pair,
    calibrated_threshold,
    clusters_of,
    cross_pairs,
    find_duplicates,
    load_calibration,
    protocol_leakage,
    self_pairs,
    write_outputs,
)
from shelfsight.duplicates.calibrate import at_threshold, threshold_at
from shelfsight.duplicates.check import with_leakage
from shelfsight.duplicates.perceptual import hash_images, hash_similarity
from shelfsight.protocols import RetrievalProtocol

PHOTOS = sorted((FIXTURES / "grocery-store" / "dataset" / "train").rglob("*.jpg"))


def _catalog(folder: Path, files: list[tuple[str, Path]]) -> Catalog:
    """Items named ``split/stem`` from (split, photo) pairs, copied under ``folder``."""
    items = []
    for n, (split, source) in enumerate(files):
        target = folder / split / f"{n:03d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        items.append(CatalogItem(f"{split}/{n:03d}", target, source.parent.name, split))
    return Catalog("planted", folder, tuple(items))


def _reencoded(source: Path, target: Path, quality: int = 90) -> Path:
    Image.open(source).convert("RGB").save(target, quality=quality)
    return target


# ------------------------------------------------------------------------------------------------ exact


def test_exact_duplicates_are_found_by_content_and_nothing_else(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [("all", p) for p in PHOTOS[:8]] + [("all", PHOTOS[2]), ("all", PHOTOS[2]),
                                                                      ("all", PHOTOS[5])])
    # a re-encoded copy has other bytes: not an exact duplicate (without embeddings nothing else is judged)
    extra = _reencoded(PHOTOS[0], tmp_path / "reencoded.jpg")
    catalog = Catalog("planted", tmp_path, (*catalog.items, CatalogItem("all/reencoded", extra, "x", "all")))
    report = find_duplicates(catalog, None, None)
    by_bytes: dict[bytes, list[str]] = {}
    for item in catalog:
        by_bytes.setdefault(item.image_path.read_bytes(), []).append(item.item_id)
    expected = {tuple(sorted(pair)) for ids in by_bytes.values() for pair in itertools.combinations(ids, 2)}
    assert {(p.a, p.b) for p in report.pairs} == expected and len(expected) == 4  # 3 pairs of one photo, 1 of another
    assert all(p.kind == "exact" and p.similarity == 1.0 for p in report.pairs)
    assert sorted(len(c.ids) for c in report.clusters) == [2, 3] and all(c.exact for c in report.clusters)


# ------------------------------------------------------------------------------------------- near pairs


def _planted_vectors(seed: int = 0, n: int = 300, dim: int = 32, group: int = 40) -> tuple[list[str], np.ndarray]:
    """Random unit vectors with one tight group of ``group`` (more than the first top-k, so the index search
    has to widen) and a few close pairs."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[:group] = vectors[0] + 0.05 * rng.standard_normal((group, dim)).astype(np.float32)
    for i in range(group, group + 20, 2):
        vectors[i + 1] = vectors[i] + 0.2 * rng.standard_normal(dim).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"v{i:03d}" for i in range(n)], vectors


def _brute_force(ids: list[str], vectors: np.ndarray, threshold: float) -> set[tuple[str, str]]:
    return {(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))
            if float(np.dot(vectors[i], vectors[j])) >= threshold}


@pytest.mark.parametrize("backend", ["exact", "milvus-lite"])
def test_near_pairs_equal_brute_force(backend: str, tmp_path: Path) -> None:
    ids, vectors = _planted_vectors()
    expected = _brute_force(ids, vectors, 0.9)
    found = self_pairs(ids, vectors, 0.9, backend=backend, db_path=tmp_path / "dup.db")
    assert len(expected) > 40 * 39 // 2  # the group alone is 780 pairs: widening was needed
    assert {(p.a, p.b) for p in found} == expected
    reference = {(p.a, p.b): float(np.dot(vectors[ids.index(p.a)], vectors[ids.index(p.b)])) for p in found}
    assert all(abs(p.similarity - reference[(p.a, p.b)]) < 1e-4 for p in found)


def test_cross_pairs_between_two_sets_equal_brute_force() -> None:
    ids, vectors = _planted_vectors(seed=1)
    queries, gallery = ids[::2], ids[1::2]
    q, g = vectors[::2], vectors[1::2]
    found = cross_pairs(queries, q, gallery, g, 0.8)
    expected = {(a, b) for (a, va), (b, vb) in itertools.product(zip(queries, q, strict=True),
                                                                 zip(gallery, g, strict=True)) if va @ vb >= 0.8}
    assert {(p.a, p.b) for p in found} == expected and expected


def test_a_threshold_outside_cosine_range_is_refused() -> None:
    ids, vectors = _planted_vectors(n=50, group=5)
    with pytest.raises(ValueError, match=r"in \[-1, 1\], got 1.5"):
        self_pairs(ids, vectors, 1.5)


def test_clusters_are_complete_linkage_cliques_of_the_pairs() -> None:
    pairs = [Pair("a", "b", 0.97, "near"), Pair("b", "c", 0.95, "near"), Pair("d", "e", 1.0, "exact"),
             Pair("f", "g", 0.99, "near"), Pair("g", "h", 0.96, "near"), Pair("h", "f", 0.98, "near")]
    clusters = clusters_of(pairs, 0.95)
    assert [c.ids for c in clusters] == [("f", "g", "h"), ("a", "b"), ("d", "e")]  # a~b~c is a chain, not a clique
    assert [c.max_similarity for c in clusters] == [0.99, 0.97, 1.0] and [c.exact for c in clusters] == [
        False, False, True]
    assert [c.weakest for c in clusters] == [("g", "h"), ("a", "b"), ("d", "e")]


# ---------------------------------------------------------------------------------------------- outputs


def test_csv_and_html_are_written_with_every_pair_and_cluster(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "photos", [("all", p) for p in PHOTOS[:6]] + [("all", PHOTOS[1])] * 2)
    ids = [i.item_id for i in catalog]
    vectors = np.eye(len(ids), dtype=np.float32)  # every item its own direction ...
    vectors[3] = vectors[0]  # ... but item 3, a near-duplicate of item 0 (items 6 and 7 are byte copies of 1)
    from shelfsight.embeddings import Embeddings

    report = find_duplicates(catalog, Embeddings(ids, vectors, [], "test"), 0.99)
    assert [c.ids for c in report.clusters] == [(ids[1], ids[6], ids[7]), (ids[0], ids[3])]
    files = write_outputs(report, tmp_path / "out")
    with open(files["pairs"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["id_a"], r["id_b"], r["kind"]) for r in rows} == {(p.a, p.b, p.kind) for p in report.pairs}
    assert all(Path(r["path_a"]).is_file() and Path(r["path_b"]).is_file() for r in rows)
    with open(files["clusters"], newline="") as handle:
        members = list(csv.DictReader(handle))
    assert sorted(r["id"] for r in members) == sorted(i for c in report.clusters for i in c.ids)
    page = files["html"].read_text()
    assert page.count("data:image/jpeg;base64,") == sum(len(c.ids) for c in report.clusters)
    assert "http" not in page.replace("http-equiv", "") and all(i in page for c in report.clusters for i in c.ids)


# --------------------------------------------------------------------------------------- perceptual hashes


def test_packed_hash_similarity_equals_imagehash_hamming_distance() -> None:
    paths = PHOTOS[:12]
    for method, function in (("phash", imagehash.phash), ("dhash", imagehash.dhash)):
        packed = hash_images(paths, method)
        similarity = hash_similarity(packed, packed)
        hashes = [function(Image.open(p).convert("RGB")) for p in paths]
        reference = np.array([[1 - (a - b) / 64 for b in hashes] for a in hashes], dtype=np.float32)
        np.testing.assert_allclose(similarity, reference, atol=1e-6)


# ----------------------------------------------------------------------------------- calibration metrics


def test_threshold_for_a_target_precision_matches_a_naive_scan() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random((60, 40)) < 0.03
    scores = np.where(positive, rng.normal(0.8, 0.1, positive.shape), rng.normal(0.3, 0.15, positive.shape))
    for precision in (0.99, 0.9, 0.7):
        chosen = threshold_at(scores, positive, precision)
        best = (-1.0, np.nan)
        for t in np.unique(scores):  # every candidate threshold: keep the one with most recall at the precision
            flagged = scores >= t
            p = (flagged & positive).sum() / flagged.sum()
            r = (flagged & positive).sum() / positive.sum()
            if p >= precision and r > best[0]:
                best = (r, t)
        assert chosen["recall"] == pytest.approx(best[0]) and chosen["threshold"] == pytest.approx(best[1])
        measured = at_threshold(scores, positive, chosen["threshold"])
        assert measured["precision"] >= precision and measured["recall"] == pytest.approx(best[0])


def test_calibration_file_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"nothing\.json: no calibration result"):
        load_calibration(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"methods": {}}')
    with pytest.raises(CalibrationError, match=r"bad\.json: not a calibration result"):
        load_calibration(bad)
    result = {"model": "m", "methods": {"embedding": {"curve": {"threshold": [0.9, 0.95], "precision": [0.8, 0.97],
                                                                 "recall": [0.9, 0.5]}}}}
    assert calibrated_threshold(result, 0.95) == 0.95
    with pytest.raises(CalibrationError, match="never reaches precision 0.99"):
        calibrated_threshold(result, 0.99)
    with pytest.raises(CalibrationError, match="of model 'm', not 'other'"):
        calibrated_threshold(result, 0.9, model="other")


# ---------------------------------------------------------------------------------------- exact leakage


def _grocery_copy(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "grocery-store", root / "grocery-store")
    return root


def test_check_warns_about_test_photos_copied_into_train(tmp_path: Path) -> None:
    root = _grocery_copy(tmp_path)
    dataset = root / "grocery-store" / "dataset"
    catalog = load_catalog("grocery-store", data_dir=root)
    tests = [i for i in catalog if i.split == "test"][:3]
    trains = [i for i in catalog if i.split == "train"][:3]
    for query, gallery in zip(tests, trains, strict=True):  # three train files replaced by test photos
        shutil.copyfile(query.image_path, gallery.image_path)
    report = with_leakage(check_dataset("grocery-store", data_dir=root,
                                        expected={"train": 60, "val": 32, "test": 60, "iconic": 6}))
    leakage = {found.protocol: found for found in report.leakage}
    assert set(leakage) == {"fine", "coarse", "iconic"}
    assert sorted(leakage["fine"].leaking) == sorted(i.item_id for i in tests) and leakage["fine"].exact == 3
    assert leakage["iconic"].count == 0 and report.ok  # a warning, not a failed check
    [line_fine, line_coarse] = [w for w in report.warnings() if "in the gallery" in w]
    assert "protocol 'fine': 3 of 60 queries have exact duplicates" in line_fine
    assert str(dataset) not in line_fine and tests[0].item_id in line_fine


def test_leave_one_out_leakage_counts_both_members_of_a_pair(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [("all", p) for p in PHOTOS[:5]] + [("all", PHOTOS[0])])
    protocol = RetrievalProtocol("loo", ("all",), ("all",))
    found = protocol_leakage(protocol, catalog)
    digests = [hashlib.sha256(i.image_path.read_bytes()).hexdigest() for i in catalog]
    expected = [i.item_id for i, d in zip(catalog, digests, strict=True) if digests.count(d) > 1]
    assert list(found.leaking) == expected == ["all/000", "all/005"] and len(found.examples) == 1


# ------------------------------------------------------------------------------------------ report section


def test_report_section_shows_clusters_leakage_both_numbers_and_calibration(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from shelfsight.bench.results import Cell, CellResult
    from shelfsight.report.data import RunData
    from shelfsight.report.sections import duplicates as section

    run = RunData(run_dir=tmp_path, table=pd.DataFrame(), cells=(), config={}, provenance={})
    assert section.build(run) is None  # nothing stored: no section
    folder = tmp_path / "duplicates"
    folder.mkdir()
    photo = str(PHOTOS[0])
    (folder / "summary.json").write_text(json.dumps({
        "catalog": "grocery-store", "model": "m", "threshold": 0.96, "threshold_source": "given", "items": 10,
        "pairs": 1, "exact_pairs": 0, "clusters": 1, "duplicated_items": 2,
        "largest_clusters": [{"number": 1, "size": 2, "max_similarity": 0.99, "exact": False,
                              "items": [{"id": "a", "path": photo, "label": "x"}, {"id": "b", "path": photo,
                                                                                    "label": "x"}]}],
        "leakage": [{"protocol": "fine", "queries": 40, "leaking": 3, "exact": 1}]}))
    transforms = {"crop_90": {"recall@p0.99": 0.25}, "flip": {"recall@p0.99": 0.875}}
    (folder / "calibration-m.json").write_text(json.dumps({
        "model": "m", "sources": 2, "copies": 4, "distractors": 3, "transforms": list(transforms),
        "methods": {"embedding": {"transforms": transforms, "thresholds": {"0.99": {"threshold": 0.9596}}},
                    "phash": {"transforms": {k: {"recall@p0.99": 0.0} for k in transforms},
                              "thresholds": {"0.99": {"threshold": 0.875}}}}}))
    details = {"fine": {"duplicates": {"queries": 40, "leaking": 3, "exact": 1, "threshold": 0.96, "action": "warn",
                                       "scores_all_queries": {"mMP@5": 0.5}, "scores_without_duplicates":
                                           {"mMP@5": 0.4}}}}
    cell = CellResult(cell=Cell("m", "grocery-store", "pretrained"), status="ok", details=details)
    built = section.build(RunData(run_dir=tmp_path, table=pd.DataFrame(), cells=(cell,), config={}, provenance={}))
    assert built is not None and built.id == "duplicates"
    assert "| fine | 40 | 3 | 1 | 7.5% |" in built.markdown
    assert "| grocery-store | fine | m | pretrained | 3 / 40 | warn | 0.500 | 0.400 |" in built.markdown
    assert "| flip | 0.875 | 0.000 |" in built.markdown and "| threshold | 0.960 | 0.875 |" in built.markdown
    assert built.html.count("data:image/jpeg;base64,") == 2
