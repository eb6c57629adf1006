"""Every answer inside the contract (issue 31, point 3), through a real uvicorn on loopback, and `index --sync`
refreshing changed items (point 4).

Point 3: huge integers in metadata, a 500's ``Connection: close``, malformed HTTP answered as JSON by the HTTP
layer (400, 431 for a 1 MB URL), a request whose headers never finish (408), ``Host: [::1]``, ids the routes
could not reach (``.``, ``..``, ``/image``, ``/similar``), a 3 MB form field (413), and scores within [-1, 1].
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from shelfsight.catalog import load_catalog
from shelfsight.serve import ServeSettings, VisualSearchService, build_index, create_app, serve_in_thread
from shelfsight.serve.pipeline import cosine
from shelfsight.serve.validation import check_item_id
from test_serve import MODEL, grocery_subset, upload

HEADER_TIMEOUT = 1.0


@dataclass(frozen=True)
class Served:
    url: str
    service: VisualSearchService
    photo: Path
    query: Path


@pytest.fixture(scope="module")
def served(grocery_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    subset = grocery_subset(grocery_root, n_classes=2, per_class=2, queries_per_class=1)
    work = tmp_path_factory.mktemp("contract")
    build_index(MODEL, subset.index, work / "index", cache_dir=work / "cache", num_workers=0, progress=False,
                export_onnx=False)
    settings = ServeSettings(index_dir=work / "index", encoder="torch", header_timeout_s=HEADER_TIMEOUT)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Served(url, app.state.service, subset.others[0].image_path, subset.queries[0].image_path)


def _json_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert all(word in detail for word in words), detail
    return str(detail)


def _raw(url: str, request: bytes, *, wait: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _raw_json(answer: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("digits", [17, 4300, 5000])
def test_huge_integers_in_metadata_are_422(served: Served, digits: int) -> None:
    metadata = '{"n": ' + "9" * digits + "}"
    with httpx.Client(base_url=served.url, timeout=60) as http:
        response = http.post("/items", files=upload(served.photo), data={"id": "int", "metadata": metadata})
        _json_error(response, 422, "2**53", "string")
        assert http.get("/items/int").status_code == 404  # and the same connection still answers


def test_a_500_says_connection_close(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise RuntimeError("injected")

    with httpx.Client(base_url=served.url, timeout=60) as http:
        with monkeypatch.context() as patch:
            patch.setattr(served.service, "count", broken)
            response = http.get("/health")
        _json_error(response, 500, "RuntimeError")
        assert response.headers["connection"] == "close"
        assert http.get("/health").status_code == 200  # the client opened a new connection, not a reset one


MALFORMED = {
    "bad-content-length": b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12abc\r\n\r\n",
    "nul-in-header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n",
    "duplicate-host": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
    "1mb-url": b"GET /items/" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_is_a_json_error(served: Served, case: str) -> None:
    status, headers, body = _raw_json(_raw(served.url, MALFORMED[case]))
    assert status == (431 if case == "1mb-url" else 400), body
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "malformed HTTP request" in body["detail"]


def test_headers_that_never_finish_get_408(served: Served) -> None:
    started = time.monotonic()
    status, headers, body = _raw_json(_raw(served.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"))
    took = time.monotonic() - started
    assert status == 408 and headers["connection"] == "close" and "headers" in body["detail"], body
    assert HEADER_TIMEOUT * 0.9 <= took < HEADER_TIMEOUT + 5, took


def test_a_slow_request_on_a_kept_alive_connection_is_timed_from_the_previous_answer(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.3)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        stream = b""
        while chunk := sock.recv(65536):
            stream += chunk
    assert re.findall(rb"HTTP/1\.1 \d{3}", stream) == [b"HTTP/1.1 200", b"HTTP/1.1 408"], stream[-300:]


@pytest.mark.parametrize("host", ["[::1]", "[::1]:8000", "localhost:8000", "127.0.0.1"])
def test_loopback_hosts_are_allowed(served: Served, host: str) -> None:
    assert httpx.get(f"{served.url}/health", headers={"Host": host}).status_code == 200


def test_a_foreign_host_is_a_json_400(served: Served) -> None:
    _json_error(httpx.get(f"{served.url}/health", headers={"Host": "[::2]"}), 400, "host")


RESERVED_IDS = [".", "..", "a/./b", "a/../b", "shelf/image", "shelf/similar", "a//b", "/a"]


@pytest.mark.parametrize("item_id", RESERVED_IDS)
def test_unreachable_ids_are_refused_through_the_api(served: Served, item_id: str) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        detail = _json_error(http.post("/items", files=upload(served.photo), data={"id": item_id}), 422, "id")
        assert ("segment" in detail) or ("reserve" in detail), detail


def test_ids_with_image_or_similar_inside_are_fine() -> None:
    for item_id in ("image", "similar", "a/image/b", "a/images", "a/similarity"):
        assert check_item_id(item_id) == item_id


def test_a_3mb_id_field_is_413(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        response = http.post("/items", files=upload(served.photo), data={"id": "x" * (3 << 20)})
        _json_error(response, 413, "too large")
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_scores_are_clipped_to_the_cosine_range() -> None:
    assert [cosine(s) for s in (1.0034, 0.5, -1.2, np.float32(1.0000001))] == [1.0, 0.5, -1.0, 1.0]


# ── point 4: index --sync refreshes what changed ──────────────────────────────────────────────────────────────


def _manifest(path: Path, rows: list[tuple[Path, str, str]]) -> Path:
    path.write_text("path,label,id\n" + "".join(f"{p},{label},{i}\n" for p, label, i in rows))
    return path


def test_sync_refreshes_a_relabelled_and_a_replaced_photo(grocery_root: Path, tmp_path: Path) -> None:
    subset = grocery_subset(grocery_root, n_classes=2, per_class=2, queries_per_class=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    items = subset.index.items[:3]
    copies = [Path(shutil.copy(item.image_path, photos / f"p{n}.jpg")) for n, item in enumerate(items)]
    rows = [(copy, item.label, f"item{n}") for n, (copy, item) in enumerate(zip(copies, items, strict=True))]
    manifest = _manifest(photos / "products.csv", rows)
    options = {"cache_dir": tmp_path / "cache", "num_workers": 0, "progress": False, "export_onnx": False}
    build_index(MODEL, load_catalog(manifest), tmp_path / "index", **options)
    with VisualSearchService.open(tmp_path / "index", encoder="torch") as service:
        with service.receive(open(subset.others[0].image_path, "rb")) as path:
            service.add_item(path, "item2-api", "api")
        before = service.search(copies[1], k=1).hits[0]
        assert before.id == "item1" and before.score > 0.999
    shutil.copy(subset.others[1].image_path, copies[1])  # a new photo at the same path
    rows[0] = (copies[0], "relabelled", "item0")
    rows.append((copies[2], items[2].label, "item2-api"))  # an id the API already took
    rows.append((copies[2], items[2].label, "shelf/image"))  # an id the routes reserve
    rows.append((copies[2], items[2].label, ".."))  # an id a browser would rewrite
    report = build_index(MODEL, load_catalog(_manifest(manifest, rows)), tmp_path / "index", sync=True, **options)
    assert sorted(report.refreshed) == ["item0", "item1"] and report.added == 0 and report.already_indexed == 1
    assert report.conflicts == [("item2-api", "added through POST /items")]
    assert any(item_id == "shelf/image" and "reserve" in reason for item_id, reason in report.skipped)
    assert any(item_id == ".." and "segment" in reason for item_id, reason in report.skipped)
    with VisualSearchService.open(tmp_path / "index", encoder="torch") as service:
        assert service.item("item0").label == "relabelled"
        assert service.item("item2-api").label == "api"
        replaced = service.search(subset.others[1].image_path, k=1).hits[0]
        assert replaced.id == "item1" and replaced.score > 0.999  # its new photo's vector
        old = service.search(subset.index.items[1].image_path, k=3).hits
        assert all(hit.score < 0.999 for hit in old)  # the old photo's vector is gone
        assert service.count() == 4
    again = build_index(MODEL, load_catalog(manifest), tmp_path / "index", sync=True, **options)
    assert again.refreshed == [] and again.already_indexed == 3  # nothing changed since: nothing replaced
