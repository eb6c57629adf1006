"""Safe decoding: awkward-but-valid files become upright RGB; broken ones a clear reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_broken, write_oddities
from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError


@pytest.fixture
def oddities(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, write_oddities(tmp_path)


def test_every_valid_kind_becomes_8bit_rgb(oddities: tuple[Path, dict[str, str]]) -> None:
    folder, files = oddities
    for kind, name in files.items():
        image = decode_image(folder / name)
        assert image.mode == "RGB", kind
        assert np.asarray(image).dtype == np.uint8, kind


def test_exif_orientation_is_applied(oddities: tuple[Path, dict[str, str]]) -> None:
    folder, files = oddities
    image = decode_image(folder / files["exif"])
    assert image.size == (48, 64)  # stored 64x48, orientation 6 turns it upright


def test_transparent_pixels_become_white(oddities: tuple[Path, dict[str, str]]) -> None:
    folder, files = oddities
    pixels = np.asarray(decode_image(folder / files["alpha"]))
    assert (pixels[:, -5:] == 255).all()  # right half was fully transparent
    assert pixels[:, :5].mean() < 250


def test_sixteen_bit_uses_the_full_range(oddities: tuple[Path, dict[str, str]]) -> None:
    folder, files = oddities
    pixels = np.asarray(decode_image(folder / files["16bit"]))
    assert pixels.min() == 0 and pixels.max() == 255
    assert (pixels[..., 0] == pixels[..., 1]).all()


def test_cmyk_converts_close_to_original(oddities: tuple[Path, dict[str, str]]) -> None:
    folder, files = oddities
    pixels = np.asarray(decode_image(folder / files["cmyk"])).astype(int)
    assert pixels.shape == (48, 64, 3)
    assert 60 < pixels.mean() < 200


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("truncated", "truncated"), ("empty", "empty file"), ("non-image", "not an image"),
     ("corrupt", "not an image"), ("bomb", "too large")],
)
def test_broken_files_raise_with_reason(tmp_path: Path, kind: str, reason: str) -> None:
    files = write_broken(tmp_path)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(tmp_path / files[kind])
    assert reason in caught.value.reason
    assert caught.value.path.endswith(files[kind])


def test_missing_file_and_custom_pixel_limit(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    write_oddities(tmp_path)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(tmp_path / "grey.png", max_pixels=100)


def test_draft_decoding_keeps_the_requested_size(tmp_path: Path) -> None:
    from conftest import gradient

    gradient(1600, 1200).save(tmp_path / "big.jpg", quality=90)
    image = decode_image(tmp_path / "big.jpg", draft_size=256)
    assert min(image.size) >= 256
    assert image.size[0] < 1600  # decoded at a reduced scale
