"""Micro-batching and similar items, through a real uvicorn on loopback over a real Milvus Lite index.

Concurrent requests are batched (the service's own counters must show batches larger than one), and every
answer equals the answer to the same request sent alone, to 1e-5, in its own order; one bad photo fails
only its own request. ``/search/batch`` answers in upload order with a per-photo error. Similar items come
from the stored vector and equal a search by the item's own photo, without the item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shelfsight.serve import ServeSettings, build_index, create_app, serve_in_thread
from shelfsight.serve.batching import MicroBatcher
from test_serve import MODEL, GrocerySubset, grocery_subset, train_subset_head, upload

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def subset(grocery_root: Path) -> GrocerySubset:
    return grocery_subset(grocery_root)


@pytest.fixture(scope="module")
def served(subset: GrocerySubset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An index with a head, served with batches of up to 8 and a generous wait, so concurrent requests meet."""
    work = tmp_path_factory.mktemp("batching")
    head = train_subset_head(subset.index, work / "head", work / "cache")
    build_index(MODEL, subset.index, work / "index", head=head, cache_dir=work / "cache", num_workers=0,
                progress=False, export_onnx=False)
    settings = ServeSettings(index_dir=work / "index", encoder="torch", max_batch=8, max_wait_ms=200)
    with serve_in_thread(create_app(settings)) as url:
        yield url


def _concurrently(url: str, calls: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """Send every call at once (one thread and connection each) and return the answers in call order."""
    answers: list[httpx.Response | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def send(position: int) -> None:
        path, arguments = calls[position]
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            answers[position] = http.post(path, **arguments)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [answer for answer in answers if answer is not None]


def _same_results(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert abs(mine["score"] - theirs["score"]) <= TOLERANCE


def _batching(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health").json()["batching"]  # type: ignore[no-any-return]


def test_concurrent_searches_are_batched_and_equal_single_requests(served: str, subset: GrocerySubset) -> None:
    photos = [item.image_path for item in subset.queries[:8]]
    with httpx.Client(base_url=served, timeout=120) as http:
        alone = [http.post("/search", files=upload(p), data={"k": "5"}).json() for p in photos]
    largest_before = _batching(served)["encoder"]["largest"]
    assert largest_before == 1  # one request at a time: nothing to batch with
    answers = _concurrently(served, [("/search", {"files": upload(p), "data": {"k": "5"}}) for p in photos])
    assert [a.status_code for a in answers] == [200] * len(photos)
    for answer, expected in zip(answers, alone, strict=True):  # each answer is its own photo's, in order
        _same_results(answer.json()["results"], expected["results"])
        assert [t["label"] for t in answer.json()["tags"]] == [t["label"] for t in expected["tags"]]
    stats = _batching(served)
    print(f"batching after 8 concurrent searches: {stats}")
    assert stats["encoder"]["largest"] > 1 and stats["milvus"]["largest"] > 1


def test_one_bad_photo_fails_only_its_own_request(served: str, subset: GrocerySubset) -> None:
    photos = [item.image_path for item in subset.queries[:6]]
    truncated = photos[0].read_bytes()[:2000]
    with httpx.Client(base_url=served, timeout=120) as http:
        alone = [http.post("/tag", files=upload(p), data={"top": "3"}).json() for p in photos]
    calls = [("/tag", {"files": upload(p), "data": {"top": "3"}}) for p in photos]
    calls.insert(3, ("/tag", {"files": {"image": ("bad.jpg", truncated, "image/jpeg")}, "data": {"top": "3"}}))
    answers = _concurrently(served, calls)
    assert answers[3].status_code == 422 and "decoded" in answers[3].json()["detail"]
    good = answers[:3] + answers[4:]
    assert [a.status_code for a in good] == [200] * len(photos)
    for answer, expected in zip(good, alone, strict=True):
        got, want = answer.json()["tags"], expected["tags"]
        assert [t["label"] for t in got] == [t["label"] for t in want]
        assert all(abs(a["probability"] - b["probability"]) <= TOLERANCE for a, b in zip(got, want, strict=True))


def test_search_batch_answers_in_upload_order_with_per_photo_errors(served: str, subset: GrocerySubset) -> None:
    photos = [item.image_path for item in subset.queries[:4]]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    files.insert(2, ("images", ("notes.txt", b"not a photo at all\n" * 10, "text/plain")))
    with httpx.Client(base_url=served, timeout=120) as http:
        alone = [http.post("/search", files=upload(p), data={"k": "4"}).json()["results"] for p in photos]
        answer = http.post("/search/batch", files=files, data={"k": "4"})
        too_many = http.post("/search/batch", files=[files[0]] * 33)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entries"]
    assert [e["status"] for e in entries] == [200, 200, 415, 200, 200]
    assert "not an image" in entries[2]["detail"] and entries[2]["results"] is None
    for entry, expected in zip(entries[:2] + entries[3:], alone, strict=True):
        _same_results(entry["results"], expected)
    assert too_many.status_code == 422 and "at most 32" in too_many.json()["detail"]


def test_similar_items_come_from_the_stored_vector(served: str, subset: GrocerySubset) -> None:
    item = subset.index.items[7]
    with httpx.Client(base_url=served, timeout=120) as http:
        similar = http.get(f"/items/{item.item_id}/similar", params={"k": "5"})
        by_photo = http.post("/search", files=upload(item.image_path), data={"k": "6"}).json()["results"]
        filtered = http.get(f"/items/{item.item_id}/similar", params={"k": "50", "category": item.label})
        missing = http.get("/items/no-such-item/similar")
        too_deep = http.get(f"/items/{item.item_id}/similar", params={"k": "0"})
    assert similar.status_code == 200, similar.text
    results = similar.json()["results"]
    assert by_photo[0]["id"] == item.item_id  # the photo finds itself first; similar items leave it out
    _same_results(results, by_photo[1:])
    assert item.item_id not in [r["id"] for r in filtered.json()["results"]]
    assert {r["label"] for r in filtered.json()["results"]} == {item.label}
    assert len(filtered.json()["results"]) == sum(1 for i in subset.index if i.label == item.label) - 1
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]
    assert too_deep.status_code == 422 and "k" in too_deep.json()["detail"]


def test_micro_batcher_isolates_a_failing_item_and_waits_only_for_announced_work() -> None:
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("13 is unlucky")
        return [i * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(square, max_batch=8, max_wait_ms=500)
    try:
        started = time.perf_counter()
        assert batcher.submit(3) == 9  # nothing announced: no wait for company
        assert time.perf_counter() - started < 0.4
        results: dict[int, int | str] = {}
        gate = threading.Barrier(6)

        def one(value: int) -> None:
            with batcher.expecting():
                gate.wait()
            try:
                results[value] = batcher.submit(value)
            except ValueError as error:
                results[value] = str(error)

        threads = [threading.Thread(target=one, args=(v,)) for v in (2, 4, 13, 5, 6, 7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == {2: 4, 4: 16, 13: "13 is unlucky", 5: 25, 6: 36, 7: 49}
        assert batcher.stats.largest > 1 and batcher.stats.split >= 1
        assert [13] in calls  # the failing batch was retried one item at a time
    finally:
        batcher.close()


def test_the_serving_process_runs_blas_on_one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``shelfsight serve`` holds BLAS at one thread while it serves (OpenBLAS's second thread busy-waits on the
    cores the encoder and the requests need), PCA's own one-thread blocks inside it keep it, and it is restored."""
    import contextlib

    from threadpoolctl import threadpool_info

    from shelfsight.serve import server
    from shelfsight.serve.compression import one_blas_thread

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []

    def fake_run(app: Any, **options: Any) -> None:
        seen.append(blas_threads())
        with one_blas_thread():
            pass
        seen.append(blas_threads())

    class FakeServer:  # uvicorn's server, run on the socket run_server bound
        def __init__(self, config: Any) -> None:
            self.config = config

        def run(self, sockets: list[Any]) -> None:
            fake_run(self.config.app)

    monkeypatch.setattr(server, "open_service", lambda settings: contextlib.nullcontext(object()))
    monkeypatch.setattr(server, "create_app", lambda settings, service: None)
    monkeypatch.setattr(server.uvicorn, "Server", FakeServer)
    server.run_server(ServeSettings(index_dir=tmp_path), sock=server.bind_port("127.0.0.1", 0))
    assert seen and all(threads == 1 for run in seen for threads in run)
    assert blas_threads() == before
