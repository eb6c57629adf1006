"""Bounded decoding for serving: the budget counts pixels actually decoded (after the JPEG draft), early
reduction keeps the EXIF orientation and barely changes the model's input, and small photos decode
exactly as batch extraction decodes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shelfsight.backbones import Preprocess, build_pixel_transform
from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError
from shelfsight.serve.decode import BoundedDecoder
from shelfsight.serve.errors import UnreadableImageError


def _photo(width: int, height: int) -> Image.Image:
    """A smooth colour field with some texture, like a product shot (not noise, which no resize preserves)."""
    y, x = np.mgrid[0:height, 0:width]
    red = 128 + 100 * np.sin(x / 97.0)
    green = 128 + 100 * np.cos(y / 61.0)
    blue = 128 + 60 * np.sin((x + y) / 143.0)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8))


def _jpeg(path: Path, image: Image.Image, orientation: int | None = None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=92, exif=exif.tobytes())
    return path


def test_the_budget_counts_pixels_after_the_jpeg_draft(tmp_path: Path) -> None:
    big = _jpeg(tmp_path / "big.jpg", _photo(2400, 2000))  # 4.8 MP
    drafted = decode_image(big, draft_size=256, max_decoded_pixels=1_000_000)  # decoded at 1/4: 600x500
    assert drafted.size == (600, 500)
    with pytest.raises(ImageDecodeError, match="too large to decode here"):
        decode_image(big, max_decoded_pixels=1_000_000)  # no draft: 4.8 MP decoded, over the budget
    png = tmp_path / "big.png"
    _photo(1200, 1000).save(png)
    with pytest.raises(ImageDecodeError, match="1,200x1,000|1200x1000"):
        decode_image(png, draft_size=256, max_decoded_pixels=1_000_000)  # PNG has no draft: refused from its header


def test_early_reduction_keeps_orientation_and_the_picture(tmp_path: Path) -> None:
    rotated = _jpeg(tmp_path / "rotated.jpg", _photo(2400, 1200), orientation=6)  # shown 1200 wide, 2400 tall
    full = decode_image(rotated)
    reduced = decode_image(rotated, reduce_to=512)  # factor 1200 // 512 = 2, then rotated
    assert full.size == (1200, 2400) and reduced.size == (600, 1200)
    assert np.abs(np.asarray(full.resize(reduced.size)).astype(float) - np.asarray(reduced)).mean() < 2.0
    palette = tmp_path / "palette.png"
    _photo(1600, 1600).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(palette)
    assert decode_image(palette, reduce_to=512).size == (534, 534)  # converted, then reduced by 3 (rounding up)


def _extraction_pixels(preprocess: Preprocess) -> Callable[[Path], np.ndarray]:
    """A photo -> uint8 (3, H, W), as batch extraction decodes it (``extract._ImageDataset``: JPEG draft, transform)."""
    transform = build_pixel_transform(preprocess)
    return lambda path: transform(decode_image(path, draft_size=preprocess.resize_size)).numpy()


def test_serving_pixels_equal_extraction_pixels_for_small_photos_and_nearly_for_large(tmp_path: Path) -> None:
    preprocess = Preprocess()
    served, extracted = BoundedDecoder(preprocess), _extraction_pixels(preprocess)
    small = _jpeg(tmp_path / "small.jpg", _photo(348, 464))  # a Grocery Store photo's size: no reduction
    np.testing.assert_array_equal(served(small), extracted(small))
    large = tmp_path / "large.png"
    _photo(2000, 1500).save(large)  # reduced by 2 before the resize
    difference = np.abs(served(large).astype(float) - extracted(large).astype(float))
    assert difference.mean() < 1.0 and served(large).shape == extracted(large).shape == (3, 224, 224)
    with pytest.raises(UnreadableImageError, match="too large to decode"):
        BoundedDecoder(preprocess, max_pixels=2_000_000)(large)
    assert BoundedDecoder(preprocess).memory_bound_bytes == 2 * 16_000_000 * 8


# ── issue 31: the bound holds whatever the format ─────────────────────────────────────────────────────────────


def test_reduction_in_strips_equals_pillows_reduce() -> None:
    """Strip by strip (no full-size conversion copy) gives exactly what converting whole and reducing gives."""
    from shelfsight.catalog.images import _reduce_in_strips

    noise = np.random.default_rng(0).integers(0, 256, (1301, 997, 4), dtype=np.uint8)
    rgba = Image.fromarray(noise, "RGBA")
    palette = rgba.convert("RGB").convert("P")
    palette.info["transparency"] = 3
    for image, whole in ((rgba, rgba), (palette, palette.convert("RGBA")), (rgba.convert("LA"), rgba.convert("LA"))):
        for factor in (3, 7):
            expected, got = whole.reduce(factor), _reduce_in_strips(image, factor)
            assert got.mode == expected.mode and np.array_equal(np.asarray(got), np.asarray(expected))


def _decoder(max_pixels: int) -> BoundedDecoder:
    return BoundedDecoder(Preprocess(), max_pixels=max_pixels, concurrency=1)


def test_progressive_jpegs_are_refused_when_their_full_size_buffers_exceed_the_bound(tmp_path: Path) -> None:
    """libjpeg keeps a progressive JPEG's coefficients at full size whatever the draft: 2000 x 2000 at 4:2:0 is
    (250 x 250 + 2 x 125 x 125) blocks x 128 bytes = 12 MB, over the 8 MB a 1-MP budget allows; the same photo
    as a baseline JPEG is drafted to 500 x 500 (1 MB) and decoded."""
    photo = _photo(2000, 2000)
    photo.save(tmp_path / "progressive.jpg", "JPEG", progressive=True, quality=85)
    photo.save(tmp_path / "baseline.jpg", "JPEG", quality=85)
    decoder = _decoder(1_000_000)
    assert decoder.per_decode_bytes == 8_000_000
    with pytest.raises(UnreadableImageError, match=r"progressive .*\(12 MB, over the 8 MB"):
        decoder(tmp_path / "progressive.jpg")
    assert decoder(tmp_path / "baseline.jpg").shape == (3, 224, 224)


def test_animations_over_the_frame_limit_are_refused(tmp_path: Path) -> None:
    from shelfsight.serve.decode import MAX_FRAMES
    from test_serve_memory import animated_gif

    decoder = _decoder(16_000_000)
    assert decoder(animated_gif(tmp_path / "ok.gif", 32, MAX_FRAMES)).shape == (3, 224, 224)
    with pytest.raises(UnreadableImageError, match=f"{MAX_FRAMES + 1:,} frames"):
        decoder(animated_gif(tmp_path / "long.gif", 32, MAX_FRAMES + 1))


def test_a_narrow_image_with_alpha_is_refused_when_its_whole_conversion_exceeds_the_bound(tmp_path: Path) -> None:
    """300 x 3000 (0.9 MP, under a 1-MP budget) is too narrow to reduce early: with alpha it is converted whole,
    3 x 3.6 MB = 10.8 MB over the 8 MB bound; without alpha (two copies, 7.2 MB) it is decoded."""
    narrow = _photo(300, 3000)
    narrow.convert("RGBA").save(tmp_path / "alpha.png")
    narrow.save(tmp_path / "plain.png")
    decoder = _decoder(1_000_000)
    with pytest.raises(UnreadableImageError, match="converted at full size"):
        decoder(tmp_path / "alpha.png")
    assert decoder(tmp_path / "plain.png").shape == (3, 224, 224)
