"""Duplicates judged by a real embedding (efficientnet_lite0's shipped weights) at a threshold calibrated
on real Grocery Store photos: a transformed copy is found, a different product of the same class is not,
and planted duplicates between queries and gallery are counted exactly (checked against brute force), in
``protocol_leakage``, the bench's protocol scoring and the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURES
from shelfsight import embed_catalog, load_backbone
from shelfsight.backbones import Backbone
from shelfsight.bench.evaluate import evaluate_protocol
from shelfsight.bench.leakage import DedupePolicy
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.cli import app
from shelfsight.duplicates import CalibrationSettings, calibrate, find_duplicates, protocol_leakage
from shelfsight.duplicates.transforms import get_transforms
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex

pytestmark = pytest.mark.slow  # a real backbone embeds about 130 photos: a minute on a busy 2-core CPU

PRECISION = 0.99
TRANSFORMS = ("jpeg_q75", "color_jitter", "sticker")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedding cache for the module (the autouse per-test cache would embed each photo again)."""
    folder = tmp_path_factory.mktemp("dup-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHELFSIGHT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHELFSIGHT_CACHE_DIR", str(shared_cache))
    return shared_cache


@pytest.fixture(scope="module")
def grocery() -> Catalog:
    return load_catalog("grocery-store", data_dir=FIXTURES)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def calibration(grocery: Catalog, backbone: Backbone, shared_cache: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """5 train photos, three edited copies of each, among 20 other train photos."""
    train = grocery.subset([i.item_id for i in grocery if i.split == "train"][::2])
    settings = CalibrationSettings(sources=5, distractors=25, seed=0, transforms=TRANSFORMS, precisions=(PRECISION,))
    return calibrate(train, backbone, tmp_path_factory.mktemp("calibration"), settings)


def _threshold(calibration: dict[str, object]) -> float:
    return float(calibration["methods"]["embedding"]["thresholds"][f"{PRECISION:g}"]["threshold"])  # type: ignore[index]


def _copy(item: CatalogItem, transform: str, folder: Path) -> CatalogItem:
    [chosen] = get_transforms((transform,))
    image = chosen.edit(Image.open(item.image_path).convert("RGB"), np.random.default_rng(7))
    path = folder / f"{transform}-{item.image_path.name}"
    image.save(path, quality=chosen.quality)
    return CatalogItem(f"{item.item_id}#{transform}", path, item.label, item.split, coarse_label=item.coarse_label)


def test_calibration_measures_every_method_on_every_transformation(calibration: dict[str, object]) -> None:
    methods = calibration["methods"]
    assert set(methods) == {"embedding", "phash", "dhash"}  # type: ignore[arg-type]
    assert calibration["copies"] == 15 and calibration["pairs"] == 15 * 30
    for entry in methods.values():  # type: ignore[attr-defined]
        assert list(entry["transforms"]) == list(TRANSFORMS)
        chosen = entry["thresholds"][f"{PRECISION:g}"]
        assert chosen["precision"] >= PRECISION or np.isnan(chosen["threshold"])
    assert 0.5 < _threshold(calibration) <= 1.0


@pytest.fixture(scope="module")
def judged(grocery: Catalog, backbone: Backbone, calibration: dict[str, object], shared_cache: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, list[CatalogItem], object]:
    """Two apple products' test photos, a banana test photo and two edited copies of it, judged at the
    calibrated threshold."""
    folder = tmp_path_factory.mktemp("judged")
    tests = [i for i in grocery if i.split == "test"]
    apples = [i for i in tests if i.coarse_label == "Apple"]
    banana = next(i for i in tests if i.label == "Banana")
    copies = [_copy(banana, "jpeg_q75", folder), _copy(banana, "color_jitter", folder)]
    catalog = Catalog("judged", FIXTURES, (*apples, banana, *copies))
    embeddings = embed_catalog(catalog, backbone, progress=False)
    return catalog, copies, find_duplicates(catalog, embeddings, _threshold(calibration))


def test_a_transformed_copy_is_found_at_the_calibrated_threshold(judged: tuple[Catalog, list[CatalogItem],
                                                                               object]) -> None:
    catalog, copies, report = judged
    pairs = {(p.a, p.b) for p in report.pairs}  # type: ignore[attr-defined]
    original = copies[0].item_id.split("#")[0]
    assert all((original, c.item_id) in pairs for c in copies)
    [cluster] = [c for c in report.clusters if original in c.ids]  # type: ignore[attr-defined]
    assert set(cluster.ids) == {original, *(c.item_id for c in copies)}


def test_a_different_product_of_the_same_class_is_not_flagged(judged: tuple[Catalog, list[CatalogItem],
                                                                             object]) -> None:
    catalog, _, report = judged
    labels = {i.item_id: i.label for i in catalog}
    assert {labels[i] for i in catalog.ids} >= {"Golden-Delicious", "Pink-Lady"}
    assert not [p for p in report.pairs if labels[p.a] != labels[p.b]]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- planted leakage


@pytest.fixture(scope="module")
def planted(grocery: Catalog, backbone: Backbone, shared_cache: Path,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Embeddings, set[str]]:
    """Queries: 5 banana and 5 milk test photos. Gallery: carrot and oatghurt train photos, plus byte copies of
    3 banana queries and re-encoded copies of 2 milk queries (other products: nothing else duplicates them; the
    copies keep the other queries' scores defined). Returns the planted query ids."""
    folder = tmp_path_factory.mktemp("planted")
    pick = {label: [i for i in grocery if i.label == label] for label in
            ("Banana", "Arla-Standard-Milk", "Carrots", "Oatly-Natural-Oatghurt")}
    queries = [i for label in ("Banana", "Arla-Standard-Milk") for i in pick[label] if i.split == "test"][::2]
    gallery = [i for label in ("Carrots", "Oatly-Natural-Oatghurt") for i in pick[label] if i.split == "train"][::2]
    planted: list[CatalogItem] = []
    for n, query in enumerate(queries[:3] + queries[5:7]):
        path = folder / f"planted-{n}.jpg"
        if n < 3:
            shutil.copyfile(query.image_path, path)
        else:
            Image.open(query.image_path).save(path, quality=75)
        planted.append(CatalogItem(f"planted/{n}", path, query.label, "train"))
    catalog = Catalog("planted", FIXTURES, (*queries, *gallery, *planted))
    return catalog, embed_catalog(catalog, backbone, progress=False), {q.item_id for q in queries[:3] + queries[5:7]}


PROTOCOL = RetrievalProtocol("test-train", ("test",), ("train",))


def _brute_force_leaks(catalog: Catalog, embeddings: Embeddings, threshold: float) -> set[str]:
    """Queries whose bytes equal a gallery file's, or whose vector reaches ``threshold`` with one: by hand."""
    row = {item_id: n for n, item_id in enumerate(embeddings.ids)}
    digest = {i.item_id: hashlib.sha256(i.image_path.read_bytes()).hexdigest() for i in catalog}
    queries = [i.item_id for i in catalog if i.split == "test"]
    gallery = [i.item_id for i in catalog if i.split == "train"]
    return {q for q in queries for g in gallery
            if digest[q] == digest[g] or float(embeddings.vectors[row[q]] @ embeddings.vectors[row[g]]) >= threshold}


def test_planted_duplicates_are_counted_exactly(planted: tuple[Catalog, Embeddings, set[str]],
                                                calibration: dict[str, object]) -> None:
    catalog, embeddings, expected = planted
    threshold = _threshold(calibration)
    found = protocol_leakage(PROTOCOL, catalog, embeddings, threshold)
    assert set(found.leaking) == expected == _brute_force_leaks(catalog, embeddings, threshold)
    assert found.count == 5 and found.exact == 3 and found.queries == 10
    assert [p.kind for p in found.examples] == ["exact"] * 3 + ["near"] * 2
    exact_only = protocol_leakage(PROTOCOL, catalog)  # without a model: the byte copies only
    assert exact_only.count == 3 and set(exact_only.leaking) < expected


def test_the_bench_excludes_leaking_queries_and_keeps_both_numbers(planted: tuple[Catalog, Embeddings, set[str]],
                                                                    calibration: dict[str, object]) -> None:
    catalog, embeddings, expected = planted
    threshold = _threshold(calibration)

    def score(policy: DedupePolicy) -> object:
        return evaluate_protocol(PROTOCOL, catalog, embeddings, make_index=lambda name, dim: ExactIndex(),
                                 collection="c", k=10, ks=(1, 5), full_map=False, dedupe=policy)

    warned = score(DedupePolicy(action="warn", threshold=threshold))
    excluded = score(DedupePolicy(action="exclude", threshold=threshold))
    assert len(warned.per_query) == 10 and set(excluded.per_query["query"]) == set(warned.per_query["query"]) - expected
    clean = warned.per_query[~warned.per_query["query"].isin(expected)]
    for metric in ("R@1", "mMP@5", "MAP@R"):
        assert excluded.metrics[metric] == pytest.approx(clean[metric].mean())
        assert warned.metrics[metric] == pytest.approx(warned.per_query[metric].mean())
        both = excluded.details["duplicates"]
        assert both["scores_all_queries"][metric] == pytest.approx(warned.metrics[metric])
        assert both["scores_without_duplicates"][metric] == pytest.approx(excluded.metrics[metric])
    recorded = excluded.details["duplicates"]
    assert recorded["leaking"] == 5 and set(recorded["leaking_ids"]) == expected and recorded["action"] == "exclude"
    assert "duplicates" not in score(DedupePolicy(action="off")).details


def test_cli_writes_the_files_and_the_leakage(planted: tuple[Catalog, Embeddings, set[str]], cache: Path,
                                              tmp_path: Path) -> None:
    catalog, _, expected = planted
    manifest = tmp_path / "catalogue.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "label", "split"])
        writer.writerows([i.item_id, str(i.image_path), i.label, i.split] for i in catalog)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["duplicates", str(manifest), "--model", "efficientnet_lite0", "--threshold",
                                      "0.95", "--output", str(out), "--quiet"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    [leak] = summary["leakage"]
    assert (leak["protocol"], leak["leaking"], leak["exact"]) == ("test-train", 5, 3)
    assert set(leak["leaking_ids"]) == expected and summary["threshold_source"] == "given"
    assert (out / "pairs.csv").is_file() and (out / "clusters.csv").is_file() and (out / "duplicates.html").is_file()
    assert "5" in result.output and "test-train" in result.output


def test_cli_errors_name_the_problem(cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["duplicates", "x.csv", "--model", "efficientnet_lite0", "--threshold", "0.9",
                               "--target-precision", "0.9"])
    assert both.exit_code != 0 and "not both" in str(both.exception or both.output)
    missing = runner.invoke(app, ["duplicates", "x.csv", "--model", "efficientnet_lite0", "--calibration",
                                  str(tmp_path / "none.json")])
    assert missing.exit_code != 0 and "none.json: no calibration result" in str(missing.exception or missing.output)


def test_datasets_check_with_a_model_warns_about_near_duplicates_too(planted: tuple[Catalog, Embeddings, set[str]],
                                                                    calibration: dict[str, object], cache: Path,
                                                                    tmp_path: Path) -> None:
    from shelfsight.catalog.check import check_dataset
    from shelfsight.duplicates.check import with_leakage

    catalog, _, expected = planted
    manifest = tmp_path / "catalogue.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "label", "split"])
        writer.writerows([i.item_id, str(i.image_path), i.label, i.split] for i in catalog)
    threshold = _threshold(calibration)
    exact_only = with_leakage(check_dataset(str(manifest)))
    with_model = with_leakage(check_dataset(str(manifest)), model="efficientnet_lite0", threshold=threshold)
    assert [(f.protocol, f.count, f.exact) for f in exact_only.leakage] == [("test-train", 3, 3)]
    [found] = with_model.leakage
    assert set(found.leaking) == expected and found.exact == 3 and with_model.ok
    [warning] = [w for w in with_model.warnings() if "in the gallery" in w]
    assert f"5 of 10 queries have exact or near duplicates (cosine >= {threshold:.4f})" in warning
