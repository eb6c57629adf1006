"""The service's "no close match": a threshold calibrated on a real small index (Grocery Store photos,
efficientnet_lite0 at 64 px), stored with its provenance, and the flags it puts on answers.

The calibration is checked against ``metrics.openset`` (and scikit-learn's AUROC) on top-1 cosines recomputed here
by brute force from the stored vectors; a Fashion-MNIST photo (a garment, not a grocery) must come back "no match",
an indexed photo (cosine 1 to itself) a match, through the API and on the page in headless Chromium.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import CHROMIUM, FASHION_DEBIAN
from shelfsight.adapt import MLPHead, save_head, train_head
from shelfsight.backbones import load_backbone
from shelfsight.catalog import Catalog
from shelfsight.catalog.fashion_mnist import read_idx
from shelfsight.embeddings import embed_catalog
from shelfsight.metrics.openset import auroc, max_softmax, precision_threshold
from shelfsight.serve import IndexLayout, ServeSettings, build_index, create_app
from shelfsight.serve.indexer import open_collection
from shelfsight.serve.manifest import read_manifest
from shelfsight.serve.match import MATCH_NAME, MatchThreshold, calibrate_index, read_match, stored_rows
from shelfsight.serve.opening import open_head
from test_serve import HEAD_PARAMS, LOCAL, MODEL, GrocerySubset, grocery_subset, upload

SMALL = {"input_size": 64}
"""A small input size keeps the index and every search cheap on CPU."""


@pytest.fixture(scope="module")
def subset(grocery_root: Path) -> GrocerySubset:
    return grocery_subset(grocery_root, n_classes=8, per_class=5, queries_per_class=1)


def small_head(catalog: Catalog, folder: Path, cache_dir: Path) -> Path:
    """A small MLP head on the 64 px embeddings the index stores (fixed parameters, as test_serve's)."""
    embedded = embed_catalog(catalog, load_backbone(MODEL, preprocess=SMALL), num_workers=0, progress=False,
                             cache_dir=cache_dir)
    by_id = {item.item_id: item.label for item in catalog}
    classes = sorted(set(by_id.values()))
    y = np.array([classes.index(by_id[i]) for i in embedded.ids])
    trained = train_head(embedded.vectors, y, embedded.vectors, y, HEAD_PARAMS, epochs=80, patience=80, seed=0)
    return save_head(folder, trained.module, classes, HEAD_PARAMS, in_dim=embedded.dim)


@pytest.fixture(scope="module")
def calibrated(subset: GrocerySubset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MatchThreshold]:
    """An index of the subset's training photos with a head, calibrated with seed 0 (and closed again)."""
    work = tmp_path_factory.mktemp("match")
    head = small_head(subset.index, work / "head", work / "cache")
    build_index(MODEL, subset.index, work / "index", head=head, preprocess=SMALL, cache_dir=work / "cache",
                num_workers=0, progress=False, export_onnx=False)
    layout = IndexLayout.at(work / "index")
    index = open_collection(layout, read_manifest(layout))
    try:
        record = calibrate_index(index, layout, seed=0)
    finally:
        index.close()
    return work / "index", record


@pytest.fixture(scope="module")
def garment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first Fashion-MNIST test image (an ankle boot), upscaled to a 224 px RGB PNG."""
    images = FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz"
    if not images.is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    path = tmp_path_factory.mktemp("garment") / "boot.png"
    Image.fromarray(read_idx(images)[0]).convert("RGB").resize((224, 224)).save(path)
    return path


@pytest.fixture
def client(calibrated: tuple[Path, MatchThreshold]) -> Iterator[TestClient]:
    """Per test: closed after it, so the browser test's `shelfsight serve` process can open the index."""
    settings = ServeSettings(index_dir=calibrated[0], encoder="torch")
    with TestClient(create_app(settings), base_url=LOCAL) as test_client:
        yield test_client


def _by_hand(labels: list[str], vectors: np.ndarray, unknown: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 cosine of each item against the known items but itself, pair by pair; whether it is right."""
    unit = [v / np.linalg.norm(v) for v in vectors.astype(np.float64)]
    known = np.array([label not in unknown for label in labels])
    scores, right = np.zeros(len(labels)), np.zeros(len(labels), dtype=bool)
    for q in range(len(labels)):
        best, best_label = -math.inf, ""
        for g in range(len(labels)):
            if g != q and known[g] and float(unit[q] @ unit[g]) > best:
                best, best_label = float(unit[q] @ unit[g]), labels[g]
        scores[q], right[q] = best, known[q] and best_label == labels[q]
    return scores, right, known


def _held_out(labels: list[str]) -> set[str]:
    """The bench's stratified draw, seed 0, a quarter of the classes (2 of 8; 1 of 5 on the fixture)."""
    classes = sorted(set(labels))
    sizes = {c: labels.count(c) for c in classes}
    ordered = sorted(classes, key=lambda c: (sizes[c], c))
    rng = np.random.default_rng(0)
    bins = np.array_split(np.arange(len(classes)), round(0.25 * len(classes)))
    return {ordered[int(rng.choice(b))] for b in bins}


def _stored(folder: Path) -> tuple[list[str], np.ndarray]:
    layout = IndexLayout.at(folder)
    index = open_collection(layout, read_manifest(layout))
    try:
        _, labels, vectors = stored_rows(index)
    finally:
        index.close()
    return labels, vectors


def _check_task(record: MatchThreshold, task: str, scores: np.ndarray, right: np.ndarray, known: np.ndarray) -> None:
    """The stored threshold and figures equal ``metrics.openset`` (and scikit-learn) on the scores given."""
    one = getattr(record, f"{task}_calibration")
    chosen = precision_threshold(scores, right, 0.95)
    assert one.reached == chosen.reached
    assert getattr(record, task) == (pytest.approx(chosen.value, abs=1e-6) if chosen.reached else None)
    assert one.precision == pytest.approx(chosen.precision)
    assert one.auroc == pytest.approx(auroc(scores[known], scores[~known]), abs=1e-9)
    assert one.auroc == pytest.approx(roc_auc_score(known, scores), abs=1e-9)
    assert (one.known_queries, one.unknown_queries) == (int(known.sum()), int((~known).sum()))
    threshold = chosen.value - 1e-6
    assert one.unknown_turned_away == pytest.approx(float((scores[~known] < threshold).mean()))
    assert one.known_turned_away == pytest.approx(float((scores[known] < threshold).mean()))


def test_search_calibration_matches_metrics_openset_by_hand(calibrated: tuple[Path, MatchThreshold]) -> None:
    folder, record = calibrated
    assert read_match(IndexLayout.at(folder)) == record
    assert json.loads((folder / MATCH_NAME).read_text())["source"] == "calibrated"
    labels, vectors = _stored(folder)
    unknown = _held_out(labels)
    scores, right, known = _by_hand(labels, vectors, unknown)
    assert record.search_calibration is not None and record.search_calibration.reached
    assert record.search_calibration.precision >= 0.95
    _check_task(record, "search", scores, right, known)
    assert (record.held_out_classes, record.known_classes) == (len(unknown), len(set(labels)) - len(unknown))
    assert (record.seed, record.target_precision, record.unknown_share) == (0, 0.95, 0.25)


def test_tagging_calibration_is_the_heads_msp_over_known_classes(calibrated: tuple[Path, MatchThreshold]) -> None:
    folder, record = calibrated
    labels, vectors = _stored(folder)
    unknown = _held_out(labels)
    opened = open_head(read_manifest(IndexLayout.at(folder)))
    assert opened is not None and record.tagging_note is None
    head, classes = opened
    assert isinstance(head, MLPHead)
    import torch

    with torch.no_grad():
        logits = head(torch.from_numpy(vectors)).double().numpy()
    keep = [i for i, c in enumerate(classes) if c not in unknown]
    scores = max_softmax(logits[:, keep])  # the softmax of the known classes' logits, computed from the logits
    predicted = np.array([classes[keep[j]] for j in np.argmax(logits[:, keep], axis=1)])
    known = np.array([label not in unknown for label in labels])
    right = known & (predicted == np.array(labels))
    _check_task(record, "tagging", scores, right, known)


def test_out_of_catalogue_photo_is_no_match_and_in_catalogue_a_match(
        client: TestClient, calibrated: tuple[Path, MatchThreshold], subset: GrocerySubset, garment: Path) -> None:
    threshold = calibrated[1].search
    assert threshold is not None
    away = client.post("/search", files=upload(garment), data={"k": "3"}).json()["results"]
    assert away[0]["score"] < threshold and [r["match"] for r in away] == [False] * 3
    indexed = subset.index.items[0]
    home = client.post("/search", files=upload(indexed.image_path), data={"k": "3"}).json()["results"]
    assert home[0]["id"] == indexed.item_id and home[0]["score"] > 0.99 and home[0]["match"] is True
    assert [r["match"] for r in home] == [r["score"] >= threshold for r in home]
    tagging = calibrated[1].tagging
    assert tagging is not None
    tags = client.post("/tag", files=upload(indexed.image_path), data={"top": "3"}).json()["tags"]
    assert [t["match"] for t in tags] == [t["probability"] >= tagging for t in tags]
    health = client.get("/health").json()["match"]
    assert health["search"] == threshold and health["source"] == "calibrated"
    assert health["where"] == f"{MATCH_NAME} in the index folder" and health["held_out_classes"] >= 1


def test_hand_threshold_overrides_and_no_threshold_means_null(calibrated: tuple[Path, MatchThreshold],
                                                              subset: GrocerySubset, tmp_path: Path) -> None:
    photo = subset.index.items[0].image_path
    settings = ServeSettings(index_dir=calibrated[0], encoder="torch", match_threshold=0.999)
    with TestClient(create_app(settings), base_url=LOCAL) as by_hand:
        results = by_hand.post("/search", files=upload(photo), data={"k": "2"}).json()["results"]
        assert [r["match"] for r in results] == [r["score"] >= 0.999 for r in results] == [True, False]
        health = by_hand.get("/health").json()["match"]
        assert (health["search"], health["source"], health["where"]) == (0.999, "set by hand",
                                                                         "serve --match-threshold")
        tags = by_hand.post("/tag", files=upload(photo)).json()["tags"]
        assert health["tagging"] is None and tags[0]["match"] is None
    settings = ServeSettings(index_dir=calibrated[0], encoder="torch", tag_threshold=0.75)
    with TestClient(create_app(settings), base_url=LOCAL) as tag_only:
        tags = tag_only.post("/tag", files=upload(photo), data={"top": "3"}).json()["tags"]
        assert [t["match"] for t in tags] == [t["probability"] >= 0.75 for t in tags]
        assert tag_only.post("/search", files=upload(photo), data={"k": "1"}).json()["results"][0]["match"] is None
        health = tag_only.get("/health").json()["match"]
        assert (health["search"], health["tagging"], health["where"]) == (None, 0.75, "serve --tag-threshold")
    (calibrated[0] / MATCH_NAME).rename(tmp_path / MATCH_NAME)
    try:
        with TestClient(create_app(ServeSettings(index_dir=calibrated[0], encoder="torch")), base_url=LOCAL) as bare:
            results = bare.post("/search", files=upload(photo), data={"k": "2"}).json()["results"]
            assert [r["match"] for r in results] == [None, None] and bare.get("/health").json()["match"] is None
    finally:
        (tmp_path / MATCH_NAME).rename(calibrated[0] / MATCH_NAME)


def test_broken_match_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / MATCH_NAME).write_text('{"source": "guessed"}')
    from shelfsight.serve import ServeError

    with pytest.raises(ServeError, match=rf"{MATCH_NAME}: field source"):
        read_match(IndexLayout.at(tmp_path))


@pytest.mark.slow
def test_page_says_no_close_match_in_headless_chromium(calibrated: tuple[Path, MatchThreshold],
                                                       subset: GrocerySubset, garment: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_serve_browser import serve_process

    with serve_process(calibrated[0]) as (url, _), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.set_input_files("#file", str(garment))
            sync_api.expect(page.locator("#results-note")).to_contain_text("No close match")
            sync_api.expect(page.locator("#results")).to_have_class("no-match")
            page.set_input_files("#file", str(subset.index.items[0].image_path))
            sync_api.expect(page.locator("#results-note")).to_contain_text("Click a product")
            sync_api.expect(page.locator("#results")).not_to_have_class("no-match")
        finally:
            browser.close()



def test_index_refuses_both_ways_before_embedding(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shelfsight.cli import app as cli_app

    result = CliRunner().invoke(cli_app, ["index", "--model", MODEL, "--catalog", "grocery-store", "--index-dir",
                                          str(tmp_path / "idx"), "--calibrate", "--match-threshold", "0.7"])
    text = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "give either --calibrate or thresholds by hand" in text
    assert not (tmp_path / "idx").exists()


def test_index_stores_thresholds_by_hand_and_refuses_them_with_calibrate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shelfsight.cli import app as cli_app
    from shelfsight.cli.serve import _store_match
    from shelfsight.serve.match import read_match

    layout = IndexLayout.at(tmp_path)
    _store_match(tmp_path, "", False, (None, 0.9))
    record = read_match(layout)
    assert record is not None and (record.search, record.tagging, record.source) == (None, 0.9, "set by hand")
    assert record.tag_match(0.9) is True and record.tag_match(0.89) is False and record.is_match(0.1) is None
    _store_match(tmp_path, "", False, (0.8, None))  # replaces the file: the tag threshold is gone
    record = read_match(layout)
    assert record is not None and (record.search, record.tagging) == (0.8, None)
    result = CliRunner().invoke(cli_app, ["index", "--model", MODEL, "--catalog", "grocery-store", "--index-dir",
                                          str(tmp_path / "idx"), "--calibrate", "--tag-threshold", "0.9"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "give either --calibrate or thresholds by hand" in text
    refused = CliRunner().invoke(cli_app, ["serve", "--index-dir", str(tmp_path), "--tag-threshold", "1.5"])
    text = " ".join(refused.output.replace("│", " ").split())
    assert refused.exit_code == 2 and "--tag-threshold" in text and "less than or equal to 1" in text


def test_broken_json_in_the_index_folder_names_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    from shelfsight.serve import ServeError
    from shelfsight.serve.manifest import MANIFEST_NAME

    (tmp_path / MATCH_NAME).write_text('{"search": 0.5,\n oops}')
    with pytest.raises(ServeError, match=r"match.json: not valid JSON \(line 2\): .*; delete it or run `shelfsight "
                                         r"index --calibrate` again$"):
        read_match(IndexLayout.at(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ServeError, match=rf"{MANIFEST_NAME}: not valid JSON \(line 1\): [^;]*$"):
        read_manifest(IndexLayout.at(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text('{"format": "shelfsight-service"}')
    with pytest.raises(ServeError, match=r"field \w+: .*; rebuild the index with `shelfsight index`$"):
        read_manifest(IndexLayout.at(tmp_path))
