"""The service's text side on a tiny random open_clip index (Milvus Lite): search by words and zero-shot tags
answer with the same numbers an independent computation gives, empty or over-long text is a 422, and an
index whose model has no text tower says so with a 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shelfsight.backbones import load_backbone
from shelfsight.backbones.prompts import DEFAULT_TEMPLATES, class_prompts, class_vectors
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.serve import ServeSettings, build_index, create_app
from shelfsight.serve.text import MAX_LABELS, MAX_TEXT_BYTES
from zeroshot_tiny import register_open_clip

LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_open_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def photos(grocery_root: Path) -> Catalog:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    return catalog.subset([item.item_id for item in catalog.per_class(2)], name="grocery-text")


def _index(name: str, catalog: Catalog, folder: Path) -> Path:
    build_index(name, catalog, folder, pretrained=False, num_workers=0, progress=False, export_onnx=False,
                runtime="torch", cache_dir=folder.parent / "cache")
    return folder


@pytest.fixture(scope="module")
def client(tiny_name: str, photos: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = _index(tiny_name, photos, tmp_path_factory.mktemp("text-index") / "index")
    with TestClient(create_app(ServeSettings(index_dir=folder, encoder="torch")), base_url=LOCAL) as test_client:
        yield test_client


def _stored(name: str, catalog: Catalog) -> tuple[list[str], np.ndarray]:
    embedded = embed_catalog(catalog, load_backbone(name, pretrained=False), num_workers=0, runtime="torch")
    return embedded.ids, embedded.vectors


def test_text_search_returns_the_nearest_photos_to_the_words(client: TestClient, tiny_name: str,
                                                             photos: Catalog) -> None:
    assert client.get("/text").json() == {"available": True, "model": tiny_name, "detail": None,
                                          "max_text_bytes": MAX_TEXT_BYTES}
    response = client.post("/search/text", data={"text": "a photo of a banana", "k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tags"] is None and body["encoder"] == "torch" and body["took_ms"] > 0
    ids, vectors = _stored(tiny_name, photos)
    text = load_backbone(tiny_name, pretrained=False).text_encoder
    assert text is not None
    scores = vectors @ text.encode(["a photo of a banana"])[0]
    best = np.argsort(-scores, kind="stable")[:3]
    assert [hit["id"] for hit in body["results"]] == [ids[i] for i in best]
    assert [hit["score"] for hit in body["results"]] == pytest.approx(scores[best].tolist(), abs=1e-4)
    label = body["results"][0]["label"]
    within = client.post("/search/text", data={"text": "milk", "k": "10", "category": label}).json()["results"]
    assert within and {hit["label"] for hit in within} == {label}


def test_zero_shot_tags_are_a_softmax_over_the_given_labels(client: TestClient, tiny_name: str,
                                                            photos: Catalog) -> None:
    item = photos.items[0]
    labels = ["green apple", "banana", "oat milk"]
    response = client.post("/tag", params={"zero_shot": ",".join(labels)}, data={"top": "3"},
                           files={"image": ("photo.jpg", item.image_path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    tags = response.json()["tags"]
    assert sorted(t["label"] for t in tags) == sorted(labels)
    backbone = load_backbone(tiny_name, pretrained=False)
    text = backbone.text_encoder
    assert text is not None
    ids, vectors = _stored(tiny_name, photos)
    label_vectors = class_vectors(text, [class_prompts(label, DEFAULT_TEMPLATES) for label in labels])
    logits = text.logit_scale * (label_vectors @ vectors[ids.index(item.item_id)])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {t["label"]: t["probability"] for t in tags}
    assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-3)
    assert [t["probability"] for t in tags] == sorted(got.values(), reverse=True)
    plain = client.post("/tag", files={"image": ("photo.jpg", item.image_path.read_bytes(), "image/jpeg")})
    assert plain.status_code == 404 and "top-tuned head" in plain.json()["detail"]  # no zero_shot: the head's /tag


@pytest.mark.parametrize(("data", "fragment"), [
    ({"text": ""}, "text"), ({"text": "   "}, "empty"), ({"text": "a" * (MAX_TEXT_BYTES + 1)}, "bytes"),
    ({"text": "milk\x00"}, "control character"), ({}, "text"),
])
def test_empty_or_over_long_text_is_refused(client: TestClient, data: dict[str, str], fragment: str) -> None:
    response = client.post("/search/text", data=data)
    assert response.status_code == 422 and fragment in response.json()["detail"]


@pytest.mark.parametrize(("labels", "fragment"), [
    ("", "names no label"), (" , ,", "names no label"), ("x" * 201, "bytes"),
    (",".join(f"label {i}" for i in range(MAX_LABELS + 1)), "more than"),
])
def test_bad_zero_shot_labels_are_refused(client: TestClient, photos: Catalog, labels: str, fragment: str) -> None:
    image = photos.items[0].image_path.read_bytes()
    response = client.post("/tag", params={"zero_shot": labels}, files={"image": ("p.jpg", image, "image/jpeg")})
    assert response.status_code == 422 and fragment in response.json()["detail"]


def test_one_tag_handler_answers_both_taggers(client: TestClient, photos: Catalog) -> None:
    """One ``POST /tag`` route (no route-list surgery); with ``zero_shot``, ``top`` is bounded by the labels allowed."""
    assert [getattr(route, "methods", None) for route in client.app.routes  # type: ignore[attr-defined]
            if getattr(route, "path", None) == "/tag"] == [{"POST"}]
    image = photos.items[0].image_path.read_bytes()
    response = client.post("/tag", params={"zero_shot": "apple,banana"}, data={"top": str(MAX_LABELS + 1)},
                           files={"image": ("p.jpg", image, "image/jpeg")})
    assert response.status_code == 422 and f"less than or equal to {MAX_LABELS}" in response.json()["detail"]
    schema = client.get("/openapi.json").json()["paths"]["/tag"]["post"]
    assert [parameter["name"] for parameter in schema["parameters"]] == ["zero_shot"]


def test_an_image_only_index_says_it_has_no_text_tower(photos: Catalog, tmp_path: Path) -> None:
    folder = _index("timm:test_vit", photos.subset(photos.ids[:4]), tmp_path / "index")
    with TestClient(create_app(ServeSettings(index_dir=folder, encoder="torch")), base_url=LOCAL) as client:
        status = client.get("/text").json()
        assert status["available"] is False and "no text tower" in status["detail"]
        response = client.post("/search/text", data={"text": "banana"})
        assert response.status_code == 404 and "timm:test_vit has no text tower" in response.json()["detail"]
        image = photos.items[0].image_path.read_bytes()
        tagged = client.post("/tag", params={"zero_shot": "apple"}, files={"image": ("p.jpg", image, "image/jpeg")})
        assert tagged.status_code == 404 and "no text tower" in tagged.json()["detail"]
        page = client.get("/").text
        assert "/static/text.js" in page and client.get("/static/text.js").status_code == 200


@pytest.mark.slow
def test_page_shows_a_text_box_and_searches_by_words(tiny_name: str, photos: Catalog,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """Headless Chromium on the served page: the text box appears (the model has a text tower), a query fills
    the result list with thumbnails."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from shelfsight.serve import serve_in_thread

    folder = _index(tiny_name, photos, tmp_path_factory.mktemp("page-index") / "index")
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with serve_in_thread(create_app(ServeSettings(index_dir=folder, encoder="torch"))) as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            box = page.locator("#text-query")
            sync_api.expect(box).to_be_visible()
            box.fill("a photo of a banana")
            box.press("Enter")
            results = page.locator("#results .result")
            sync_api.expect(results).to_have_count(min(10, len(photos)))
            page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            sync_api.expect(page.locator("#results-title")).to_contain_text("matching the words")
            page.screenshot(path=str(artifacts / "serve-text-search.png"), full_page=True)
        finally:
            browser.close()
