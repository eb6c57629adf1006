"""`shelfsight serve` fails fast and says why: a port in use, an index another process holds; and images of items
outside their catalogue's folder are served only from folders the user allows.

Real processes (`python -m shelfsight.cli serve`), a real Milvus Lite index of three fixture photos
(efficientnet_lite0), real sockets; the image routes through the real app.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from shelfsight.catalog import Catalog, CatalogItem
from shelfsight.serve import ServeSettings, VisualSearchService, build_index, create_app, read_manifest
from shelfsight.serve.manifest import IndexLayout

MODEL = "efficientnet_lite0"
CLI = [sys.executable, "-m", "shelfsight.cli"]
LOCAL = "http://localhost"


@dataclass(frozen=True)
class TinyIndex:
    folder: Path
    inside: Path
    """The catalogue's folder (its root)."""
    elsewhere: Path
    """A folder outside it, holding the photo of item ``outside``."""


@pytest.fixture(scope="module")
def tiny(grocery_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyIndex:
    """Two photos inside the catalogue's folder and one outside it, indexed with the real model."""
    base = tmp_path_factory.mktemp("tiny")
    inside, elsewhere = base / "catalogue", base / "elsewhere"
    inside.mkdir()
    elsewhere.mkdir()
    photos = sorted((grocery_root / "grocery-store" / "dataset" / "train" / "Fruit").rglob("*.jpg"))
    items = []
    for number, (photo, folder) in enumerate(zip(photos[:3], (inside, inside, elsewhere), strict=True)):
        target = folder / f"photo{number}.jpg"
        shutil.copyfile(photo, target)
        items.append(CatalogItem("outside" if folder == elsewhere else f"item{number}", target, "fruit"))
    catalog = Catalog("tiny", inside, tuple(items))
    report = build_index(MODEL, catalog, base / "index", export_onnx=False, progress=False, num_workers=0,
                         cache_dir=base / "cache")
    assert (report.added, report.outside_root) == (3, 1)
    return TinyIndex(base / "index", inside, elsewhere)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The whole output of a refused start: exactly one line, no traceback."""
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, lines
    return lines[0]


def test_a_port_in_use_fails_at_once_in_one_line(tiny: TinyIndex) -> None:
    """Before the fix: the model loaded (45 s for the user's), then uvicorn's own error. Now the port is taken first:
    the run takes about as long as `serve --help` (the CLI's imports), measured in the same test."""
    _, bare = _cli("serve", "--help")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done, elapsed = _cli("serve", "--index-dir", str(tiny.folder), "--port", str(port))
    assert done.returncode == 2
    line = _one_line(done)
    assert f"port {port} is already in use on 127.0.0.1" in line and "--port" in line
    assert elapsed < max(5.0, bare + 2.0), (elapsed, bare)


@contextlib.contextmanager
def _serving(index: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """A real `shelfsight serve` until /health answers; stopped with Ctrl-C (a kill if it lingers)."""
    process = subprocess.Popen([*CLI, "serve", "--index-dir", str(index), "--port", str(port), "--encoder", "torch",
                                "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.communicate()[0]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the first serve did not answer /health in 180 s"
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def test_a_second_serve_on_the_same_index_names_the_process_that_holds_it(tiny: TinyIndex) -> None:
    with _serving(tiny.folder, _free_port()) as first:
        done, _ = _cli("serve", "--index-dir", str(tiny.folder), "--port", str(_free_port()))
    assert done.returncode == 2
    line = _one_line(done)
    assert f"is open in process {first.pid} (" in line and "stop it first" in line, line
    assert "serve" in line.split(f"process {first.pid}", 1)[1]  # the holder's command line, from /proc


def _image(client: TestClient, item_id: str) -> httpx.Response:
    return client.get(f"{LOCAL}/items/{item_id}/image")


def test_images_outside_the_catalogue_are_served_only_from_allowed_folders(tiny: TinyIndex, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    shutil.copyfile(tiny.elsewhere / "photo2.jpg", secret)
    (tiny.elsewhere / "link.jpg").unlink(missing_ok=True)
    (tiny.elsewhere / "link.jpg").symlink_to(secret)  # inside the allowed folder by name, outside once resolved
    closed = ServeSettings(index_dir=tiny.folder, encoder="torch")
    with TestClient(create_app(closed)) as client:
        refused = _image(client, "outside")
        assert refused.status_code == 404
        assert "--allow-images-from" in refused.json()["detail"] and str(tiny.elsewhere) not in refused.text
        assert "not served" in client.get(f"{LOCAL}/health").json()["access"]["images_outside_catalogue_folders"]
    allowed = ServeSettings(index_dir=tiny.folder, encoder="torch", allow_images_from=[tiny.elsewhere])
    with TestClient(create_app(allowed)) as client:
        served = _image(client, "outside")
        assert served.status_code == 200 and served.content == (tiny.elsewhere / "photo2.jpg").read_bytes()
        assert _image(client, "item0").content == (tiny.inside / "photo0.jpg").read_bytes()
        service: VisualSearchService = client.app.state.service  # type: ignore[attr-defined]
        root_key = next(iter(read_manifest(IndexLayout.at(tiny.folder)).roots))
        planted = {"escape": str(tiny.elsewhere / ".." / "catalogue" / "photo0.jpg"),
                   "symlink": str(tiny.elsewhere / "link.jpg")}
        for item_id, file in planted.items():
            _add_raw(service, item_id, {"root": root_key, "path": None, "file": file, "metadata": {}})
            answer = _image(client, item_id)
            assert answer.status_code == 403, (item_id, answer.text)
            assert "refused" in answer.json()["detail"]
            assert str(tmp_path) not in answer.text and str(tiny.folder.parent) not in answer.text
            service.delete_item(item_id)


def _add_raw(service: VisualSearchService, item_id: str, attributes: dict[str, object]) -> None:
    """A row as an index built elsewhere might hold it (a crafted path): the stored vector of ``outside``."""
    import numpy as np

    from shelfsight.search.milvus_fields import VECTOR_FIELD, id_filter

    client = service.index.client
    assert client is not None
    row = client.query(service.index.collection, filter=id_filter(["outside"]), output_fields=[VECTOR_FIELD])[0]
    service.index.add([item_id], np.asarray([row[VECTOR_FIELD]], dtype=np.float32), ["fruit"], ["all"], [attributes])
