"""Every failure class a tester found, through a real uvicorn on loopback: each answer is a JSON 4xx that says
what was wrong, nothing is stored, and the service answers a good search right after.

Classes: deep metadata (stored-then-500 before; RecursionError deeper), control characters (in ids, labels,
categories, URL paths), integers beyond 2**53, lone surrogates, non-UTF-8 form bytes and URL paths,
NaN/Infinity, a body declared and not sent (408), an oversize declared body (413 at once), ids with
``..`` segments, cross-site writes, missing keys, and a wrong Host (DNS rebinding).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from shelfsight.cli import app as cli_app
from shelfsight.serve import (
    IndexLayout,
    ServeError,
    ServeSettings,
    VisualSearchService,
    build_index,
    create_app,
    serve_in_thread,
)
from shelfsight.serve.security import check_binding
from test_serve import MODEL, GrocerySubset, grocery_subset, upload

KEY = "s3cret-key"
WRITE = {"Authorization": f"Bearer {KEY}"}
MAX_UPLOAD = 256 * 1024
BODY_TIMEOUT = 1.0


@dataclass(frozen=True)
class Served:
    url: str
    service: VisualSearchService
    layout: IndexLayout
    items: int
    photo: Path
    """A photo not in the index, to add."""
    query: Path


@pytest.fixture(scope="module")
def served(grocery_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    subset: GrocerySubset = grocery_subset(grocery_root, n_classes=3, per_class=2, queries_per_class=1)
    work = tmp_path_factory.mktemp("hardening")
    build_index(MODEL, subset.index, work / "index", cache_dir=work / "cache", num_workers=0, progress=False,
                export_onnx=False)
    leftover = IndexLayout.at(work / "index").incoming / "upload-left-by-a-kill"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half an upload")
    settings = ServeSettings(index_dir=work / "index", encoder="torch", api_key=KEY, max_upload_bytes=MAX_UPLOAD,
                             body_timeout_s=BODY_TIMEOUT)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        assert not leftover.exists()  # leftover temporary uploads are removed at start
        yield Served(url, app.state.service, IndexLayout.at(work / "index"), len(subset.index),
                     subset.others[0].image_path, subset.queries[0].image_path)


def _healthy_and_unchanged(served: Served) -> None:
    """Nothing was stored, no upload is left behind, and a good search still works."""
    with httpx.Client(base_url=served.url, timeout=60) as http:
        assert http.get("/health").json()["items"] == served.items
        assert http.post("/search", files=upload(served.query), data={"k": "2"}).status_code == 200
    assert [p.name for p in served.layout.uploads.iterdir()] == [".incoming"]
    assert list(served.layout.incoming.iterdir()) == []


def _refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and all(word in detail for word in words), detail


def _add(http: httpx.Client, served: Served, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    data = {"id": "new-item", **fields}
    return http.post("/items", files=upload(served.photo), data=data, headers=WRITE if headers is None else headers)


DEEP = '{"a":' * 300 + "1" + "}" * 300
"""About 1.5 KB, under the size cap: stored (then a 500 on every read) before this was checked."""
METADATA_CASES = {
    "deep": (DEEP, "levels"),
    "recursion-deep": ("[" * 5000 + "]" * 5000, "levels"),
    "huge-int": (json.dumps({"n": 2**70}), "2**53"),
    "int64-edge": (json.dumps({"n": 2**63}), "2**53"),
    "lone-surrogate": ('{"s": "\\ud800"}', "UTF-8"),
    "nan": ('{"x": NaN}', "NaN"),
    "infinity": ('{"x": -Infinity}', "Infinity"),
    "overflow-float": ('{"x": 1e400}', "finite"),
    "control-in-key": ('{"a\\u0001": 1}', "U+0001"),
    "too-many-keys": (json.dumps({f"k{i}": i for i in range(300)}), "keys"),
    "not-an-object": ("[1, 2]", "object"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_bad_metadata_is_refused_before_storing(served: Served, case: str) -> None:
    text, word = METADATA_CASES[case]
    with httpx.Client(base_url=served.url, timeout=60) as http:
        _refused(_add(http, served, metadata=text), 422, "metadata", word)
        assert http.get("/items/new-item").status_code == 404
    _healthy_and_unchanged(served)


def test_control_characters_and_bad_utf8_are_refused(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        _refused(_add(http, served, id="a\x07b"), 422, "id", "U+0007")
        _refused(_add(http, served, label="fruit\x1b[31m"), 422, "label", "U+001B")
        _refused(http.post("/search", files=upload(served.query), data={"category": "Apple\x00"}), 422, "category")
        _refused(http.get("/items/a%00b"), 422, "U+0000")
        _refused(http.delete("/items/a%0Ab", headers=WRITE), 422, "U+000A")
        _refused(http.get("/items/%FF%FE"), 422, "UTF-8")
        _refused(http.get("/items/x/similar", params={"category": "a\x02"}), 422, "category", "U+0002")
        _refused(http.get("/items/x/similar?category=caf%E9"), 422, "category", "UTF-8")
        body = (b'--zz\r\nContent-Disposition: form-data; name="id"\r\n\r\nok-id\r\n'
                b'--zz\r\nContent-Disposition: form-data; name="label"\r\n\r\nLatin-1 caf\xe9\r\n'
                b'--zz\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n" + served.photo.read_bytes() + b"\r\n--zz--\r\n")
        headers = {**WRITE, "content-type": "multipart/form-data; boundary=zz"}
        _refused(http.post("/items", content=body, headers=headers), 422, "'label'", "UTF-8")
        assert http.get("/items/ok-id").status_code == 404
    _healthy_and_unchanged(served)


def test_path_like_ids_are_refused_and_stored_ones_get_a_working_image_url(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for bad in ("a/../b", "../etc", "./x", "a//b", "/lead", "trail/", ".."):
            _refused(_add(http, served, id=bad), 422, "segment")
        # an id with a '..' segment indexed from elsewhere: its image_url keeps it one path segment
        record = served.service.index.get([_first_id(served)])
        attributes = next(iter(record.values()))["attributes"]
        vector = served.service.embed_photo(served.query).vector
        served.service.index.add(["shelf/../odd"], vector[None], ["odd"], ["test"], [attributes])
        try:
            hit = http.post("/search", files=upload(served.query), data={"k": "1"}).json()["results"][0]
            assert hit["id"] == "shelf/../odd" and hit["image_url"] == "/items/shelf%2F..%2Fodd/image"
            image = http.get(hit["image_url"])
            assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"
        finally:
            served.service.index.delete(["shelf/../odd"])
    _healthy_and_unchanged(served)


def _first_id(served: Served) -> str:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        return str(http.post("/search", files=upload(served.query), data={"k": "1"}).json()["results"][0]["id"])


def test_writes_need_the_key_and_the_same_origin(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        cross_site = {"Origin": "https://shop.example", **WRITE}
        _refused(_add(http, served, headers={"Origin": "https://evil.example"}), 403, "origin")
        _refused(_add(http, served, headers=cross_site), 403, "https://shop.example")  # even with the key
        _refused(_add(http, served, headers={**WRITE, "Sec-Fetch-Site": "cross-site"}), 403, "cross-site")
        _refused(_add(http, served, headers={}), 401, "API key")
        _refused(_add(http, served, headers={"Authorization": "Bearer wrong"}), 401, "API key")
        _refused(http.delete(f"/items/{_first_id(served)}"), 401, "API key")
        assert http.get("/health").json()["items"] == served.items
        same_origin = {"Origin": served.url, "X-API-Key": KEY}
        added = _add(http, served, headers=same_origin)
        assert added.status_code == 201, added.text
        assert http.delete("/items/new-item", headers=WRITE).status_code == 200
        assert "access-control-allow-origin" not in http.get("/health", headers={"Origin": "https://x.example"}).headers
    _healthy_and_unchanged(served)


def test_wrong_host_and_offline_docs(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        _refused(http.get("/health", headers={"Host": "rebound.attacker.example"}), 400, "host")
        _refused(http.post("/search", files=upload(served.query), headers={"Host": "rebound.attacker.example:80"}),
                 400, "host")
        for viewer in ("/docs", "/redoc"):
            _refused(http.get(viewer), 404)
        assert "/items/{item_id}/similar" in http.get("/openapi.json").json()["paths"]
        _refused(http.get("/static/nothing-here.js"), 404)
    _healthy_and_unchanged(served)


def _raw_request(url: str, head: bytes, body: bytes, wait: float) -> tuple[bytes, float]:
    """Send a request head and part of a body on a raw socket; (what came back, seconds until it came)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        started = time.perf_counter()
        sock.sendall(head + body)
        answer = sock.recv(65536)
        waited = time.perf_counter() - started
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        return answer, waited


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_declared_bodies_not_sent_get_an_answer(served: Served) -> None:
    head = ("POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            "Content-Length: {}\r\n\r\n")
    oversize, waited = _raw_request(served.url, head.format(20 * 1024 * 1024).encode(), b"--zz\r\n", 10)
    assert oversize.startswith(b"HTTP/1.1 413") and b'"detail"' in oversize and waited < 0.9  # before reading
    stalled, waited = _raw_request(served.url, head.format(100_000).encode(), b"--zz\r\n", 10)
    assert stalled.startswith(b"HTTP/1.1 408") and b"did not arrive" in stalled
    assert BODY_TIMEOUT * 0.9 < waited < BODY_TIMEOUT + 3
    _healthy_and_unchanged(served)


def test_reads_can_need_the_key_and_the_binding_rules(served: Served, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    settings = ServeSettings(index_dir=served.service.layout.folder, encoder="torch", api_key=KEY, read_access="token")
    with TestClient(create_app(settings, served.service), base_url="http://localhost") as client:
        _refused(client.post("/search", files=upload(served.query)), 401, "reads")
        assert client.post("/search", files=upload(served.query), headers=WRITE).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    shop = "https://shop.example"
    cors = ServeSettings(index_dir=served.service.layout.folder, encoder="torch", api_key=KEY, cors_origins=[shop])
    with TestClient(create_app(cors, served.service), base_url="http://localhost") as client:
        assert client.get("/health", headers={"Origin": shop}).headers["access-control-allow-origin"] == shop
        assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://x.example"}).headers
        preflight = client.options("/items", headers={"Origin": shop, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        _refused(client.options("/items", headers={"Origin": "https://x.example", "Access-Control-Request-Method":
                                                    "POST"}), 400, "CORS")
        _refused(client.delete("/items/nothing-here", headers={"Origin": shop, **WRITE}), 404, "nothing-here")
    with pytest.raises(ValueError, match="api_key"):
        ServeSettings(index_dir=tmp_path, read_access="token")
    with pytest.raises(ServeError, match="--api-key"):
        check_binding("0.0.0.0", api_key="", read_only=False, allowed_hosts=["127.0.0.1"])
    with pytest.raises(ServeError, match="--allowed-host"):
        check_binding("0.0.0.0", api_key=KEY, read_only=False, allowed_hosts=["localhost"])
    check_binding("0.0.0.0", api_key="", read_only=True, allowed_hosts=["shop.internal"])
    check_binding("127.0.0.1", api_key="", read_only=False, allowed_hosts=["localhost"])
    refused = CliRunner().invoke(cli_app, ["serve", "--index-dir", str(tmp_path), "--host", "0.0.0.0"],
                                 env={"SHELFSIGHT_API_KEY": ""})
    assert refused.exit_code == 2 and "--api-key" in refused.output


def test_an_unforeseen_error_is_a_json_500(served: Served) -> None:
    """The catch-all: a collection closed under the service (a lost Milvus connection) is not the client's
    mistake; the answer is a JSON 500 naming the error kind, never a plain-text one."""
    from fastapi.testclient import TestClient

    settings = ServeSettings(index_dir=served.service.layout.folder, encoder="torch")
    broken = VisualSearchService.open(settings.index_dir, encoder="torch")
    broken.index.close()
    try:
        with TestClient(create_app(settings, broken), base_url="http://localhost",
                        raise_server_exceptions=False) as client:
            _refused(client.post("/search", files=upload(served.query)), 500, "internal error", "MilvusIndexError")
            _refused(client.get("/items/anything"), 500, "internal error")
    finally:
        broken.close()
    _healthy_and_unchanged(served)


def test_an_item_stored_before_the_checks_does_not_break_reads(served: Served) -> None:
    """Metadata 300 levels deep written straight to the collection (as the service stored it before these
    checks): the item is still found and read, its metadata left out, instead of a 500 on every search."""
    record = served.service.index.get([_first_id(served)])
    attributes = {**next(iter(record.values()))["attributes"], "metadata": json.loads(DEEP)}
    vector = served.service.embed_photo(served.query).vector
    served.service.index.add(["poisoned"], vector[None], ["old"], ["test"], [attributes])
    try:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            hit = http.post("/search", files=upload(served.query), data={"k": "1"}).json()["results"][0]
            assert hit["id"] == "poisoned" and hit["metadata"] == {}
            item = http.get("/items/poisoned")
            assert item.status_code == 200 and item.json()["metadata"] == {}
    finally:
        served.service.index.delete(["poisoned"])
    _healthy_and_unchanged(served)
