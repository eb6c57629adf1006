"""Duplicates with no prior step: the calibrations shipped for the offline backbones (found with an empty cache),
``--calibrate`` on one's own photos (stored where the lookup finds it first; other photos of a group as hard
negatives), complete-linkage clusters that do not chain, and the report's first-screen leakage sentence."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from typer.testing import CliRunner

from conftest import FIXTURES
from shelfsight import embed_catalog, load_backbone, load_catalog
from shelfsight.backbones import Backbone
from shelfsight.catalog import Catalog, CatalogItem
from shelfsight.cli import app
from shelfsight.duplicates import (
    SHIPPED,
    TRANSFORMS,
    CalibrationError,
    CalibrationSettings,
    calibrate,
    clusters_of,
    default_path,
    find_calibration,
    load_calibration,
    self_pairs,
    shipped_path,
)
from shelfsight.duplicates.calibrate import threshold_from_curve
from shelfsight.duplicates.calibration import normalised
from shelfsight.duplicates.calibration_set import draw_items
from shelfsight.duplicates.run import default_threshold, resolve_threshold

PHOTOS = sorted((FIXTURES / "grocery-store" / "dataset" / "train").rglob("*.jpg"))


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return load_backbone("efficientnet_lite0")


def _pooled(result: dict[str, object], precision: str = "0.99") -> float:
    return float(result["methods"]["embedding"]["thresholds"][precision]["threshold"])  # type: ignore[index]


# ------------------------------------------------------------------------------------- shipped calibrations


@pytest.mark.parametrize("model", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_the_shipped_calibration_is_found_with_an_empty_cache(model: str, _isolated_cache: Path) -> None:
    backbone = load_backbone(model)
    identity = backbone.cache_identity()
    path = find_calibration(model, identity)
    assert path == shipped_path(model, identity) and path.parent == SHIPPED
    assert not (_isolated_cache / "duplicates").exists()  # nothing made or needed in the user's cache
    result = load_calibration(path)
    assert (result["catalog"], result["split"], result["seed"]) == ("grocery-store", "train", 0)
    assert (result["sources"], result["distractors"], result["pool"]) == (200, 800, 1000)
    assert result["copies"] == 200 * len(TRANSFORMS) and result["pairs"] == 200 * len(TRANSFORMS) * 1000
    assert result["model"] == model and result["model_identity"] == normalised(identity)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", result["shelfsight_version"])
    assert datetime.strptime(result["date"], "%Y-%m-%dT%H:%M:%SZ").year >= 2025
    exact = _pooled(result)
    assert result["methods"]["embedding"]["thresholds"]["0.99"]["precision"] >= 0.99
    chosen = resolve_threshold(backbone, None, None)
    assert chosen.value == exact == default_threshold(backbone) and str(path) in chosen.source
    # the shipped curve is thinned: another precision is still read from it, a little conservatively
    thinned = threshold_from_curve(result["methods"]["embedding"]["curve"], 0.99)
    assert exact <= thinned <= exact + 0.01
    assert path.stat().st_size < 100_000  # thresholds and tables, no vectors


def test_another_embedding_of_the_same_name_does_not_take_the_shipped_threshold() -> None:
    other = load_backbone("efficientnet_lite0", preprocess={"input_size": 256})
    assert shipped_path("efficientnet_lite0", other.cache_identity()) is None
    with pytest.raises(CalibrationError, match="--calibrate"):
        resolve_threshold(other, None, None)
    assert default_threshold(other) is None  # `run` then looks for byte-identical copies only


def test_duplicates_runs_on_the_fixture_with_no_prior_step(lite0: Backbone, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["duplicates", "grocery-store", "--data-dir", str(FIXTURES), "--model",
                                      "efficientnet_lite0", "--output", str(out), "--quiet"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    shipped = shipped_path("efficientnet_lite0", lite0.cache_identity())
    assert shipped is not None and summary["threshold"] == _pooled(load_calibration(shipped))
    assert str(shipped) in summary["threshold_source"]
    assert {e["protocol"] for e in summary["leakage"]} == {"fine", "coarse", "iconic"}
    # every pair against brute force over the same vectors (embedded by the command: read from the cache)
    catalog = load_catalog("grocery-store", data_dir=FIXTURES)
    embeddings = embed_catalog(catalog, lite0, progress=False)
    cosine = embeddings.vectors @ embeddings.vectors.T
    digest = {i.item_id: hashlib.sha256(i.image_path.read_bytes()).hexdigest() for i in catalog}
    ids = embeddings.ids
    expected = {tuple(sorted((ids[i], ids[j]))) for i, j in itertools.combinations(range(len(ids)), 2)
                if cosine[i, j] >= summary["threshold"] or digest[ids[i]] == digest[ids[j]]}
    with open(out / "pairs.csv", newline="") as handle:
        found = {tuple(sorted((row["id_a"], row["id_b"]))) for row in csv.DictReader(handle)}
    assert found == expected and summary["pairs"] == len(expected) > 0
    with open(out / "clusters.csv", newline="") as handle:
        members: dict[str, list[str]] = {}
        for row in csv.DictReader(handle):
            members.setdefault(row["cluster"], []).append(row["id"])
    assert members and all(tuple(sorted(pair)) in expected for group in members.values()
                           for pair in itertools.combinations(group, 2))  # every two members are a pair


# ---------------------------------------------------------------------------------------------- --calibrate


def test_calibrate_on_a_small_folder_is_a_command_whose_result_the_lookup_then_uses(lite0: Backbone,
                                                                                    tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for photo in PHOTOS[::5][:12]:
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, folder / photo.parent.name / photo.name)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["duplicates", str(folder), "--model", "efficientnet_lite0", "--calibrate",
                                      "--calibration-sample", "3", "--output", str(out), "--quiet"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    identity = lite0.cache_identity()
    stored = default_path("efficientnet_lite0", identity)  # the user's cache, not the package
    assert stored.is_file() and find_calibration("efficientnet_lite0", identity) == stored
    calibration = load_calibration(stored)
    assert (calibration["sources"], calibration["distractors"], calibration["split"]) == (3, 9, None)
    assert calibration["copies"] == 3 * len(TRANSFORMS) and calibration["pairs"] == 3 * len(TRANSFORMS) * 12
    assert calibration["hard_negative_pairs"] == 0  # a folder of class sub-folders has no groups
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == _pooled(calibration) and str(stored) in summary["threshold_source"]
    assert f"cosine >= {_pooled(calibration):.4f} reaches precision 0.99" in result.output
    assert resolve_threshold(lite0, None, None).value == _pooled(calibration)  # later runs read it


def _grouped(n: int, per_group: int) -> Catalog:
    items = tuple(CatalogItem(f"i{k:02d}", Path(f"/nowhere/{k}.jpg"), "x", "train", group=f"g{k // per_group}")
                  for k in range(n))
    return Catalog("grouped", Path("/nowhere"), items)


def test_other_photos_of_a_sources_group_join_the_pool() -> None:
    catalog = _grouped(40, per_group=5)
    plain_sources, plain_others = draw_items(catalog, 4, 6, seed=3)
    sources, others = draw_items(catalog, 4, 6, seed=3, group_negatives=2)
    assert sources == plain_sources and set(plain_others) <= set(others)
    added = set(others) - set(plain_others)
    assert added and {i.group for i in added} <= {s.group for s in sources}
    for group in {s.group for s in sources}:  # 2 more per source of the group, or as many as are left
        drawn = sum(s.group == group for s in sources)
        distractors = sum(i.group == group for i in plain_others)
        assert sum(i.group == group for i in added) == min(2 * drawn, 5 - drawn - distractors)


def test_a_planted_same_group_pair_is_a_hard_negative(lite0: Backbone, tmp_path: Path) -> None:
    """Seller A posts a photo and a re-encoded copy of it as two items: not a duplicate listing of one item, and
    the most similar negative there is. Sellers B and C post two different photos each."""
    first, second = PHOTOS[0], PHOTOS[20]
    copy = tmp_path / "a-second-item.jpg"
    Image.open(first).convert("RGB").save(copy, quality=80)
    shots = [(first, "A"), (copy, "A"), (second, "B"), (PHOTOS[25], "B"), (PHOTOS[40], "C"), (PHOTOS[45], "C")]
    items = tuple(CatalogItem(f"item{n}", path, "x", "all", group=group) for n, (path, group) in enumerate(shots))
    catalog = Catalog("sellers", tmp_path, items)
    settings = CalibrationSettings(sources=6, distractors=0, seed=0, split=None, transforms=("exact_copy",),
                                   precisions=(0.99,), hashes=())
    result = calibrate(catalog, lite0, tmp_path / "work", settings)
    vectors = embed_catalog(catalog, lite0, progress=False)
    row = {item_id: n for n, item_id in enumerate(vectors.ids)}
    same_group = [float(vectors.vectors[row[f"item{a}"]] @ vectors.vectors[row[f"item{b}"]])
                  for a, b in ((0, 1), (2, 3), (4, 5))]
    hard = result["methods"]["embedding"]["hard_negatives"]
    assert result["hard_negative_pairs"] == hard["pairs"] == 6  # each exact copy against its source's partner
    assert hard["max_similarity"] == pytest.approx(max(same_group), abs=1e-5) == pytest.approx(same_group[0],
                                                                                                abs=1e-5)
    assert same_group[0] > 0.95 and _pooled(result) > same_group[0] and hard["flagged@p0.99"] == 0
    ungrouped = Catalog("sellers", tmp_path, tuple(CatalogItem(i.item_id, i.image_path, "x", "all") for i in items))
    assert calibrate(ungrouped, lite0, tmp_path / "work", settings)["hard_negative_pairs"] == 0


# ------------------------------------------------------------------------------------------------ clusters


def _unit(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_complete_linkage_does_not_chain_where_single_linkage_does() -> None:
    ids = ["a", "b", "c", "d", "e"]
    vectors = _unit([0, 13, 27, 80, 81])  # a~b (cos 13 = 0.974), b~c (cos 14 = 0.970), a, c apart (cos 27 = 0.891)
    threshold = 0.96
    single = fcluster(linkage(pdist(vectors, "cosine"), "single"), t=1 - threshold, criterion="distance")
    assert single[0] == single[1] == single[2]  # single linkage (connected components) chains a, b and c
    clusters = clusters_of(self_pairs(ids, vectors, threshold), threshold)
    assert [c.ids for c in clusters] == [("a", "b"), ("d", "e")]
    assert clusters[0].weakest == ("a", "b") and clusters[0].min_similarity == pytest.approx(np.cos(np.deg2rad(13)))


def test_every_two_photos_of_a_cluster_reach_the_threshold_on_random_chains() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = np.repeat(centres, 8, axis=0) + rng.normal(scale=0.35, size=(160, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"p{k:03d}" for k in range(len(vectors))]
    threshold = 0.9
    cosine = vectors @ vectors.T
    single = fcluster(linkage(pdist(vectors, "cosine"), "single"), t=1 - threshold, criterion="distance")
    chained = [np.flatnonzero(single == label) for label in np.unique(single)]
    assert any(cosine[np.ix_(m, m)].min() < threshold for m in chained if len(m) > 1)  # the test can fail
    clusters = clusters_of(self_pairs(ids, vectors, threshold), threshold)
    position = {item_id: k for k, item_id in enumerate(ids)}
    assert clusters
    for cluster in clusters:
        members = [position[i] for i in cluster.ids]
        inside = cosine[np.ix_(members, members)][np.triu_indices(len(members), 1)]
        assert inside.min() >= threshold and cluster.min_similarity == pytest.approx(float(inside.min()), abs=1e-6)
        a, b = (position[i] for i in cluster.weakest)
        assert float(cosine[a, b]) == pytest.approx(cluster.min_similarity, abs=1e-6)
    assert len({i for c in clusters for i in c.ids}) == sum(len(c.ids) for c in clusters)  # a partition


# -------------------------------------------------------------------------------------------------- report


def test_the_first_screen_states_the_leaking_share_and_the_score_with_and_without(tmp_path: Path) -> None:
    from shelfsight.bench.results import Cell, CellResult
    from shelfsight.report.data import RunData
    from shelfsight.report.sections import duplicates as section

    def cell(model: str, score: float, without: float, leaking: int) -> CellResult:
        found = {"queries": 40, "leaking": leaking, "exact": 1, "threshold": 0.9596, "action": "warn",
                 "scores_all_queries": {"mMP@5": score}, "scores_without_duplicates": {"mMP@5": without}}
        return CellResult(cell=Cell(model, "shop", "pretrained"), status="ok", details={"fine": {"duplicates": found}})

    run = RunData(run_dir=tmp_path, table=pd.DataFrame(), config={}, provenance={},
                  cells=(cell("lite0", 0.5, 0.4, 3), cell("lite2", 0.6, 0.55, 3)))
    built = section.build(run)
    assert built is not None
    assert built.answers == ["Leakage (shop, fine): 3 of 40 queries (7.5%) have a copy in their gallery (cosine ≥ "
                             "0.9596 or byte-identical); mMP@5 of lite2 · pretrained is 0.600 with them, 0.550 "
                             "without."]
    clean = RunData(run_dir=tmp_path, table=pd.DataFrame(), config={}, provenance={}, cells=(cell("m", 0.5, 0.5, 0),))
    quiet = section.build(clean)
    assert quiet is not None and quiet.answers == [
        "Leakage (shop, fine): none of 40 queries has a copy in its gallery (cosine ≥ 0.9596 or byte-identical)."]
