"""Shared fixtures: real Grocery Store photos (the full dataset from $SHELFSIGHT_DATA_DIR, else the small copy
committed in tests/fixtures) and a catalogue of broken files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach for the network

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test writes its caches under its own temporary folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SHELFSIGHT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield launched
        launched.close()


@pytest.fixture(autouse=True, scope="session")
def _shared_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports depend on the backbone only: one folder for the session spares each test a re-export."""
    folder = tmp_path_factory.mktemp("exports")
    os.environ["SHELFSIGHT_EXPORT_DIR"] = str(folder)
    return folder


def data_root() -> Path | None:
    value = os.environ.get("SHELFSIGHT_DATA_DIR")
    return Path(value) if value else None


FIXTURES = Path(__file__).resolve().parent / "fixtures"
"""A data root holding ``grocery-store/``: six real classes in the official layout (see its README.md)."""
FULL_DATA = "full_data"
FULL_DATA_HELP = "the full Grocery Store Dataset (set SHELFSIGHT_DATA_DIR)"
REQUIRE_FULL_DATA_ENV = "SHELFSIGHT_REQUIRE_FULL_DATA"


@dataclass(frozen=True)
class GroceryExpected:
    """What the Grocery Store copy in use holds: per-split image counts, fine and coarse classes."""

    counts: dict[str, int]
    fine_classes: int
    coarse_classes: int


GROCERY_FULL = GroceryExpected(counts={"train": 2640, "val": 296, "test": 2485, "iconic": 81},
                               fine_classes=81, coarse_classes=43)
GROCERY_FIXTURE = GroceryExpected(counts={"train": 60, "val": 32, "test": 60, "iconic": 6},
                                  fine_classes=6, coarse_classes=5)


def full_grocery_root() -> Path | None:
    """The data root of $SHELFSIGHT_DATA_DIR when it holds the Grocery Store Dataset, else None."""
    root = data_root()
    if root is None or root.resolve() == FIXTURES or not (root / "grocery-store" / "dataset" / "classes.csv").is_file():
        return None
    return root


def grocery_data_root() -> Path:
    """The full dataset's data root where there is one (CI), else the committed fixture's (a fresh clone)."""
    return full_grocery_root() or FIXTURES


_DESELECTED_FULL_DATA = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``full_data`` run only beside the full dataset. Without it they are deselected and named at
    the end of the run, unless $SHELFSIGHT_REQUIRE_FULL_DATA is set (CI): then they run and fail at once."""
    if full_grocery_root() is not None or os.environ.get(REQUIRE_FULL_DATA_ENV):
        return
    needing = [item for item in items if item.get_closest_marker(FULL_DATA)]
    if needing:
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if not item.get_closest_marker(FULL_DATA)]
        config.stash[_DESELECTED_FULL_DATA] = [item.nodeid for item in needing]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    deselected = config.stash.get(_DESELECTED_FULL_DATA, [])
    if deselected:
        need = "1 test needs" if len(deselected) == 1 else f"{len(deselected)} tests need"
        terminalreporter.write_sep("=", f"{need} {FULL_DATA_HELP}, deselected", yellow=True)
        for nodeid in deselected:
            terminalreporter.write_line(nodeid)


@pytest.fixture(autouse=True)
def _full_data_or_fail(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker(FULL_DATA) and full_grocery_root() is None:
        pytest.fail(f"this test needs {FULL_DATA_HELP}; SHELFSIGHT_DATA_DIR="
                    f"{os.environ.get('SHELFSIGHT_DATA_DIR') or '(unset)'} holds no full copy of it", pytrace=False)


@pytest.fixture(scope="session")
def grocery_root() -> Path:
    """A data root holding ``grocery-store/``: the real dataset where $SHELFSIGHT_DATA_DIR holds it (CI), else
    tests/fixtures, the committed six-class copy, so that no test skips on a fresh clone."""
    return grocery_data_root()


def grocery_expected(grocery_root: Path) -> GroceryExpected:
    """The counts of the copy ``grocery_root`` points at, for tests that check exact numbers."""
    return GROCERY_FIXTURE if grocery_root.resolve() == FIXTURES else GROCERY_FULL


@pytest.fixture(autouse=True)
def _grocery_data_dir(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that uses ``grocery_root`` sees SHELFSIGHT_DATA_DIR pointing at it, so code that reads the data root
    from the environment (bench configs without data_dir, CLI subprocesses) finds the same copy."""
    if "grocery_root" in request.fixturenames:
        monkeypatch.setenv("SHELFSIGHT_DATA_DIR", str(request.getfixturevalue("grocery_root")))


@pytest.fixture(scope="session")
def grocery_photos(grocery_root: Path) -> list[Path]:
    """A few real test photos from three different products."""
    base = grocery_root / "grocery-store" / "dataset" / "test"
    picks = []
    for sub in ("Fruit/Banana", "Packages/Milk/Arla-Standard-Milk", "Vegetables/Carrots"):
        picks.extend(sorted((base / sub).glob("*.jpg"))[:4])
    return picks


def _jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_oddities(folder: Path) -> dict[str, str]:
    """Valid images of every awkward kind, named by kind; returns kind -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    image = gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when displayed
    (folder / "exif_rotated.jpg").write_bytes(_jpeg_bytes(image, exif=exif.tobytes()))
    files["exif"] = "exif_rotated.jpg"
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette_transparent.png", transparency=0)
    files["palette"] = "palette_transparent.png"
    rgba = image.convert("RGBA")
    alpha = np.zeros((image.height, image.width), dtype=np.uint8)
    alpha[:, : image.width // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "alpha.png")
    files["alpha"] = "alpha.png"
    image.convert("CMYK").save(folder / "cmyk.jpg", format="JPEG")
    files["cmyk"] = "cmyk.jpg"
    wide = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(wide).save(folder / "sixteen_bit.png")
    files["16bit"] = "sixteen_bit.png"
    image.convert("L").save(folder / "grey.png")
    files["grey"] = "grey.png"
    return files


def write_broken(folder: Path, good_source: Path | None = None) -> dict[str, str]:
    """Files that must be skipped, by kind; returns kind -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = good_source.read_bytes() if good_source else _jpeg_bytes(gradient(200, 200), quality=95)
    (folder / "truncated.jpg").write_bytes(payload[: len(payload) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not_an_image.jpg").write_text("this is a text file with an image extension\n")
    rng = np.random.default_rng(1)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(500))
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 megapixels in a tiny file
    return {"truncated": "truncated.jpg", "empty": "empty.jpg", "non-image": "not_an_image.jpg",
            "corrupt": "corrupt.png", "bomb": "bomb.png"}


@pytest.fixture
def messy_catalog(tmp_path: Path) -> Path:
    """An image-folder catalogue: good images, awkward-but-valid images and broken files."""
    root = tmp_path / "catalogue"
    for index, name in enumerate(("shoes", "bags")):
        good = root / name
        good.mkdir(parents=True)
        for k in range(3):
            gradient(80, 60, seed=10 * index + k).save(good / f"{name}_{k}.jpg", quality=90)
    write_oddities(root / "odd")
    write_broken(root / "broken")
    (root / "shoes" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "shoes" / "notes.txt").write_text("supplier notes")
    return root


@pytest.fixture
def copy_tree(tmp_path: Path):  # type: ignore[no-untyped-def]
    def copy(source: Path, name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    return copy


# ── a real Milvus 2.3.5 standalone server for the session (tests/milvus_server.py) ─────────────
from milvus_server import milvus_standalone  # noqa: E402, F401 - a fixture, registered by import

# ── a real `milvus-lite server` process, for tests that need a network server ───────────────


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    pytest.fail(f"milvus-lite server did not listen on port {port} within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first (the server then closes its database cleanly), a kill if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`milvus-lite server --data-dir D --port P` on a free loopback port; always terminated."""
    folder = tmp_path_factory.mktemp("milvus-server")
    port, log = _free_port(), folder / "server.log"
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(folder / "data"),
               "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(process, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
