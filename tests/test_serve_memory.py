"""Memory per request is bounded: `shelfsight serve` in its own process, its peak RSS (VmHWM) read from /proc.

Before the bounds, a 63-megapixel PNG of a few hundred KB cost about 1 GB per request and four at once
added 4.1 GB. Now: four concurrent 63-MP PNGs are refused from their header (422, over the 16-MP serving
budget) and four concurrent 15.3-MP PNGs (under the budget, reduced right after decoding, two decodes at a
time) are answered; the peak RSS of the server grows by less than ``RSS_BOUND`` over both rounds.
Measured on the build machine (2 cores, shared), two runs: +0 MB for the refused round, +135 to +169 MB in all
(from a peak of about 970 MB after warm-up).
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import httpx
import pytest

from shelfsight.serve import build_index
from test_serve import MODEL, grocery_subset, upload
from test_serve_browser import serve_process

RSS_BOUND = 600 * 1024 * 1024
"""The stated bound for both rounds together (issue 16); decode.py states 256 MB for the pixels of decoding."""


def solid_png(path: Path, width: int, height: int) -> Path:
    """A grey RGB PNG written row by row (a few hundred KB on disk, never whole in this process's memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (3 * width)  # filter byte 0, then the pixels
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        out.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def peak_rss(pid: int) -> int:
    """VmHWM (the peak resident set) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _post_four(url: str, photo: Path) -> list[httpx.Response]:
    answers: list[httpx.Response] = []
    start = threading.Barrier(4)

    def send() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            answers.append(http.post("/search", files={"image": (photo.name, photo.read_bytes(), "image/png")}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.slow  # a server process, an index and two rounds of huge PNGs: ~50 s
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to read the peak RSS")
def test_four_concurrent_huge_pngs_stay_within_the_memory_bound(grocery_root: Path, tmp_path: Path) -> None:
    subset = grocery_subset(grocery_root, n_classes=2, per_class=2, queries_per_class=1)
    build_index(MODEL, subset.index, tmp_path / "index", cache_dir=tmp_path / "cache", num_workers=0, progress=False,
                export_onnx=False)
    huge, large = solid_png(tmp_path / "huge.png", 9000, 7000), solid_png(tmp_path / "large.png", 4500, 3400)
    assert huge.stat().st_size < 1024 * 1024 and large.stat().st_size < 1024 * 1024
    with serve_process(tmp_path / "index") as (url, process):
        pid = process.pid
        with httpx.Client(base_url=url, timeout=120) as http:  # warm: model, encoder and one decode done
            assert http.post("/search", files=upload(subset.queries[0].image_path)).status_code == 200
        before = peak_rss(pid)
        refused = _post_four(url, huge)
        after_refused = peak_rss(pid)
        answered = _post_four(url, large)
        after = peak_rss(pid)
        assert httpx.get(f"{url}/health").json()["decode"]["max_pixels"] == 16_000_000
    print(f"peak RSS {before / 2**20:.0f} MB; +{(after_refused - before) / 2**20:.0f} MB after four 63-MP PNGs, "
          f"+{(after - before) / 2**20:.0f} MB after four 15.3-MP PNGs too (bound {RSS_BOUND / 2**20:.0f} MB)")
    assert [r.status_code for r in refused] == [422] * 4
    assert all("16,000,000 pixels" in r.json()["detail"] for r in refused)
    assert [r.status_code for r in answered] == [200] * 4
    assert after - before < RSS_BOUND
