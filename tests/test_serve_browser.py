"""End to end: `shelfsight serve` in its own process on loopback, the page driven by headless Chromium.

A Grocery Store photo is picked with the file input, a result is clicked (its similar items must appear,
without itself, with loaded thumbnails), another photo is dropped on the drop zone, and a text file is
uploaded; the page must show thumbnails (loaded images) with scores and the predicted tags, then a clear
error. A screenshot goes to $SHELFSIGHT_TEST_ARTIFACTS (default: test-artifacts/ at the repo root).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shelfsight.serve import build_index
from test_serve import MODEL, grocery_subset, train_subset_head

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SHELFSIGHT_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_process(index_dir: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`shelfsight serve` as a subprocess; waits for /health, yields (URL, process), stops it (SIGTERM, graceful)."""
    port = _free_port()
    log = index_dir.parent / "serve.log"
    command = [sys.executable, "-m", "shelfsight.cli", "serve", "--index-dir", str(index_dir), "--port", str(port),
               "--encoder", "torch", "--log-level", "warning", *options]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    pytest.fail(f"shelfsight serve exited with {process.returncode}:\n{log.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"shelfsight serve did not answer within 120 s:\n{log.read_text()}")
                time.sleep(0.2)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _serving(index_dir: Path, *options: str) -> Iterator[str]:
    with serve_process(index_dir, *options) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser_index(grocery_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api")
    subset = grocery_subset(grocery_root, n_classes=8, per_class=4, queries_per_class=1)
    work = tmp_path_factory.mktemp("browser")
    head = train_subset_head(subset.index, work / "head", work / "cache")
    build_index(MODEL, subset.index, work / "index", head=head, cache_dir=work / "cache", num_workers=0,
                progress=False, export_onnx=False)
    return work / "index", [q.image_path for q in subset.queries], [q.label for q in subset.queries]


def test_page_searches_a_photo_in_headless_chromium(browser_index: tuple[Path, list[Path], list[str]],
                                                     tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    index_dir, photos, labels = browser_index
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("supplier notes, not a photo\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _serving(index_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(
                (url, "blob:", "data:")) else None)
            page.goto(url)
            # 4 photos of each class, one query per class: 32 items (8 classes); 20 on the fixture (5)
            expect(page.locator("#status")).to_contain_text(f"{4 * len(labels)} items")

            page.set_input_files("#file", str(photos[0]))
            results = page.locator("#results .result")
            expect(results).to_have_count(10)
            expect(page.locator("#tags .tag")).to_have_count(5)
            page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            top_labels = [results.nth(i).get_attribute("data-label") for i in range(3)]
            top_tags = [page.locator("#tags .tag").nth(i).get_attribute("data-label") for i in range(3)]
            assert labels[0] in top_labels and labels[0] in top_tags
            assert "score 0." in results.first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

            clicked = results.nth(1)  # click a result: its similar items, from its stored vector
            clicked_id, clicked_label = clicked.get_attribute("data-id"), clicked.get_attribute("data-label")
            clicked.click()
            similar = page.locator("#similar .result")
            expect(similar).to_have_count(10)
            expect(page.locator("#similar-box")).to_have_attribute("data-source", clicked_id or "")
            page.wait_for_function("() => [...document.querySelectorAll('#similar img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            similar_ids = [similar.nth(i).get_attribute("data-id") for i in range(10)]
            assert clicked_id not in similar_ids and len(set(similar_ids)) == 10
            assert clicked_label in [similar.nth(i).get_attribute("data-label") for i in range(3)]
            page.screenshot(path=str(ARTIFACTS / "serve-page-similar.png"), full_page=True)

            _drop(page, photos[1])  # drag and drop path, a photo of another class
            expect(results.first).to_have_attribute("data-label", labels[1], timeout=30_000)
            expect(page.locator("#preview")).to_be_visible()

            page.set_input_files("#file", str(not_an_image))
            expect(page.locator("#error")).to_contain_text("415")
            expect(page.locator("#error")).to_contain_text("not an image")
            page.screenshot(path=str(ARTIFACTS / "serve-page-error.png"))
            assert outside == []  # the page works offline: nothing fetched beyond the service
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
    shutil.copy(index_dir.parent / "serve.log", ARTIFACTS / "serve-page.log")


def _drop(page: object, photo: Path) -> None:
    """Dispatch a real drop event carrying the photo as a File, as a user's drag and drop does."""
    payload = base64.b64encode(photo.read_bytes()).decode()
    page.evaluate(  # type: ignore[attr-defined]
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [payload, photo.name],
    )
