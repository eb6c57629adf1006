"""Safe image decoding: whatever a catalogue holds becomes an RGB image or a clear reason.

Shop catalogues contain phone photos with EXIF rotation, PNGs with alpha, CMYK print files,
16-bit scans and the odd truncated upload. Every failure is an ``ImageDecodeError`` with a
short reason, so extraction can skip the file, record why, and go on. A failure to read the file at all
(an I/O error, a path that is gone or is not a file) says nothing about the photo's bytes and is an
``ImageReadError``: the embedding cache remembers decode errors but retries read errors next run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shelfsight.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 64_000_000
"""Larger images are refused before decoding (decompression bombs): 64 megapixels ~ 8000x8000. Extraction's cap,
for a catalogue its owner chose; the service's budget for uploads is lower (``serve/decode.py`` says why)."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)



class ImageReadError(ImageDecodeError):
    """The file could not be read just now (the system's error, not its bytes): worth trying again later."""


_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited on white, the usual product-shot background."""


def decode_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
    max_decoded_pixels: int | None = None, reduce_to: int | None = None,
) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, or raise ``ImageDecodeError``.

    ``draft_size`` lets the JPEG decoder scale down by a power of two while keeping both sides
    at least that long: much faster for large photos that will be resized anyway.
    ``max_decoded_pixels`` refuses, before decoding, an image whose decoded size (after the JPEG draft)
    is above it: the memory a decode takes is bounded by it (a server's budget, lower than ``max_pixels``).
    ``reduce_to`` shrinks the decoded image at once by the largest integer factor that keeps its shorter
    side at least that long (``Image.reduce``, box averaging), before any mode conversion or rotation copies it.
    """
    name = str(path)
    try:
        if os.path.getsize(name) == 0:
            raise ImageDecodeError(name, "empty file")
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot read file ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(name)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    name, f"image too large ({width}x{height} > {max_pixels} pixels; possible decompression bomb)"
                )
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            if max_decoded_pixels is not None and image.width * image.height > max_decoded_pixels:
                raise ImageDecodeError(name, f"image too large to decode here ({image.width}x{image.height} > "
                                             f"{max_decoded_pixels:,} pixels); send a smaller photo")
            image.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(name, "image too large (possible decompression bomb)") from None
    except OSError as exc:
        if exc.errno is not None:  # the system's (EIO, ENOMEM, EISDIR...); Pillow's data errors carry no errno
            raise ImageReadError(name, f"cannot read file ({exc.strerror or exc})") from None
        raise ImageDecodeError(name, f"corrupt or truncated image data ({exc})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(name, f"corrupt or truncated image data ({exc})") from None
    if reduce_to and min(image.size) >= 2 * reduce_to:
        return to_rgb(_reduced_upright(image, min(image.size) // reduce_to))
    return to_rgb(_upright(image))


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transposition that makes the image upright (as ``ImageOps.exif_transpose``)."""


def _reduced_upright(image: Image.Image, factor: int) -> Image.Image:
    """Reduce by ``factor`` first, then rotate the small image: the EXIF orientation is read before reducing
    (the reduced copy has no EXIF), so no full-size rotated copy is ever made."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the pixels
        orientation = 1
    reduced = _reduce_in_strips(image, factor)
    method = _TRANSPOSE.get(orientation)
    return reduced.transpose(method) if method is not None else reduced


_STRIP_ROWS = 64
"""Rows of the result made at a time by :func:`_reduce_in_strips` (times the factor in the source)."""


def _reduce_in_strips(image: Image.Image, factor: int) -> Image.Image:
    """``Image.reduce(factor)``, a strip of rows at a time. Pillow's reduce takes neither palettes, bilevel nor
    16-bit modes, and premultiplies alpha through a full-size copy: converted strip by strip, the peak is the
    decoded image plus one strip (a server's memory bound), and the result is the same (both steps work within
    blocks of ``factor`` rows, and each strip is a whole number of blocks)."""
    width, height = image.size
    step = factor * _STRIP_ROWS
    result: Image.Image | None = None
    for top in range(0, height, step):
        strip = _reducible(image.crop((0, top, width, min(height, top + step)))).reduce(factor)
        if result is None:
            result = Image.new(strip.mode, (-(-width // factor), -(-height // factor)))
        result.paste(strip, (0, top // factor))
    assert result is not None
    return result


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode ``Image.reduce`` takes."""
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1" or image.mode.startswith("I;16"):
        return image.convert("L" if image.mode == "1" else "I")
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block must not lose the pixels."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: palette, alpha, CMYK, 16-bit, float and greyscale."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_to_rgb(image)
    return image.convert("RGB")


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit or float greyscale to 8-bit by the full 16-bit range (or the data range for floats)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low or 1.0) * 255.0
    else:
        scaled = array / 257.0
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return grey.convert("RGB")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
