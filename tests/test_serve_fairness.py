"""One client cannot stall everyone (issue 31, point 2): `shelfsight serve` in its own process, 8 clients posting
single searches, first alone and then beside a client that sends `/search/batch` with 32 x 15-MP PNGs (1.9 MB per
request) in a loop. The singles' p95 latency with the batch client must stay under ``MAX_SLOWDOWN`` times their
p95 alone. Before the fix, a batch held the encoder for all its photos and the singles went from 0.04 s to 2-6 s.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from shelfsight.serve import build_index
from test_serve import MODEL, grocery_subset
from test_serve_browser import serve_process
from test_serve_memory import solid_png

SINGLE_CLIENTS = 8
SECONDS = 15.0
MAX_SLOWDOWN = 2.0


def _singles(url: str, photos: list[bytes], stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        turn = 0
        while not stop.is_set():
            started = time.perf_counter()
            answer = http.post("/search", files={"image": ("q.jpg", photos[turn % len(photos)], "image/jpeg")})
            assert answer.status_code == 200, answer.text
            latencies.append(time.perf_counter() - started)
            turn += 1


def _batches(url: str, body: bytes, stop: threading.Event, done: list[float]) -> None:
    files = [("images", (f"p{i}.png", body, "image/png")) for i in range(32)]
    with httpx.Client(base_url=url, timeout=300) as http:
        while not stop.is_set():
            started = time.perf_counter()
            answer = http.post("/search/batch", files=files, data={"k": "3"})
            assert answer.status_code == 200, answer.text
            assert [entry["status"] for entry in answer.json()["entries"]] == [200] * 32
            done.append(time.perf_counter() - started)


def _run(url: str, photos: list[bytes], batch_body: bytes | None,
         seconds: float = SECONDS) -> tuple[list[float], list[float]]:
    stop = threading.Event()
    singles: list[float] = []
    batches: list[float] = []
    threads = [threading.Thread(target=_singles, args=(url, photos, stop, singles)) for _ in range(SINGLE_CLIENTS)]
    if batch_body is not None:
        threads.append(threading.Thread(target=_batches, args=(url, batch_body, stop, batches)))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return singles, batches


@pytest.mark.slow  # a server process, 2 x 15 s of load: ~60 s
def test_a_batch_client_does_not_stall_single_searches(grocery_root: Path, tmp_path: Path) -> None:
    subset = grocery_subset(grocery_root, n_classes=2, per_class=2, queries_per_class=2)
    build_index(MODEL, subset.index, tmp_path / "index", cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    png = solid_png(tmp_path / "rgba.png", 4500, 3400, alpha=True).read_bytes()
    photos = [item.image_path.read_bytes() for item in subset.queries]
    with serve_process(tmp_path / "index", "--encoder", "onnx") as (url, _):
        _run(url, photos, None, seconds=3)  # warm-up: encoder, decoder, connections
        alone, _ = _run(url, photos, None)
        together, batches = _run(url, photos, png)
    p95_alone, p95_together = (float(np.percentile(values, 95)) for values in (alone, together))
    print(f"singles alone: {len(alone)} searches, median {statistics.median(alone) * 1000:.0f} ms, p95 "
          f"{p95_alone * 1000:.0f} ms; beside the batch client: {len(together)} searches, median "
          f"{statistics.median(together) * 1000:.0f} ms, p95 {p95_together * 1000:.0f} ms "
          f"({p95_together / p95_alone:.2f}x); {len(batches)} batches of 32 answered, median "
          f"{statistics.median(batches) if batches else float('nan'):.1f} s")
    assert batches, "the batch client must be answered too, not starved"
    assert p95_together < MAX_SLOWDOWN * p95_alone
