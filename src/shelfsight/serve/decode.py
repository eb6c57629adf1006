"""Uploaded photo -> pixels with bounded work: a serving pixel budget, early reduction, few decodes at once.

The model needs 224 px; a 63-megapixel PNG of 245 KB would otherwise cost about 1 GB to decode and
convert. Three bounds, so that the memory of a decode is stated, not a property of the upload:

- **Budget**: an image whose *decoded* size is over ``max_pixels`` (default ``DEFAULT_DECODE_PIXELS``, 16 MP;
  extraction's cap is 64 MP, and the constant says why they differ) is refused from its header, before any
  pixel is decoded (422). JPEGs are measured after the draft
  (the decoder scales by 1/2..1/8 while decoding), so a large JPEG photo is served at a fraction of
  its size; PNG and the other formats decode at full size, so the budget is what bounds them.
- **Early reduction**: right after decoding, an image whose shorter side is at least twice the model's
  resize size is shrunk by an integer factor (``Image.reduce``, a strip of rows at a time, so that a palette's
  or alpha's conversion never copies the whole image) before any mode conversion or EXIF rotation copies it.
  Photos smaller than that are decoded exactly as batch extraction decodes them; such an image with alpha or a
  palette is converted whole (three copies), and refused (422) when that exceeds the per-decode bound.
- **Concurrency**: at most ``concurrency`` decodes run at once (a semaphore); others wait their turn.

- **Full-size buffers**: a progressive (or multi-scan) JPEG is decoded by libjpeg through coefficient buffers
  of the *whole* image, whatever the draft scale (2 bytes per coefficient, 64 per 8x8 block of each component:
  3 to 6 bytes per full-size pixel): a 64-MP progressive JPEG of 784 KB, drafted to 1 MP, cost 371 MB. Its cost
  (those buffers plus the drafted pixels) is computed from its header and scans before decoding, and refused
  (422) when it exceeds the per-decode bound. Animated formats (GIF, APNG, WebP) decode their first frame only,
  so their frame count does not change the memory; more than ``MAX_FRAMES`` frames is refused all the same
  (counting them reads the file, not its pixels).

So each decode's pixel memory is at most ``max_pixels x 8`` bytes (4 bytes per decoded pixel and one converted
copy, or libjpeg's buffers; 128 MB with the defaults), and all decodes together at most
``concurrency x max_pixels x 8`` bytes: 2 x 16 MP x 8 B = 256 MB. ``serve.memory`` makes the allocator give
those buffers back when a decode ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading

import numpy as np
from PIL import Image

from shelfsight.backbones import Preprocess, build_pixel_transform
from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError
from shelfsight.serve.errors import UnreadableImageError, UnsupportedImageError
from shelfsight.serve.memory import LARGE_DECODE_BYTES, large_decode

DEFAULT_DECODE_PIXELS = 16_000_000
"""The serving budget of decoded pixels per image (``--max-decode-megapixels``); a 12-MP phone photo fits.

Lower than extraction's ``catalog.images.DEFAULT_MAX_PIXELS`` (64 MP), which still applies here, to the size in
the header, on purpose: extraction decodes a catalogue its owner chose, one photo per worker process, and skipping
a large but genuine photo would lose an item, so its cap only stops decompression bombs; the service decodes
uploads from anyone, ``DEFAULT_DECODE_CONCURRENCY`` at once, inside a long-running server whose decoding memory
has a stated bound (concurrency x budget x 8 bytes: 256 MB here, 1 GB at 64 MP). The budget counts pixels after
the JPEG draft, so large JPEG photos are still served; it bounds PNG and the other formats."""
DEFAULT_DECODE_CONCURRENCY = 2
REDUCING_GAP = 2
"""Reduce early only while the shorter side stays at least this many times the resize size (as Pillow's
``reducing_gap``): the final resize then sees enough pixels that the result barely changes."""
BYTES_PER_BUDGET_PIXEL = 8
BYTES_PER_DECODED_PIXEL = 4
"""Pillow keeps RGB, RGBA and CMYK pixels in 4 bytes."""
MAX_FRAMES = 1000
"""Most frames an animated upload may declare (only the first is decoded)."""
_COEFFICIENT_BLOCK = 64 * 2
_ALPHA_MODES = frozenset({"RGBA", "LA", "P", "PA", "RGBa", "La"})
_WHOLE_COPIES = 3
"""An image too narrow to reduce early is converted whole: with alpha or a palette, the decoded image, an RGBA
copy and the RGB result on its background (``catalog.images.to_rgb``)."""
"""libjpeg's JBLOCK: 64 coefficients of 2 bytes per 8x8 block of each component."""
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class BoundedDecoder:
    """A photo file -> ``uint8`` (3, H, W) array within the budget, or a 415/422 ``ServeError``."""

    def __init__(self, preprocess: Preprocess, *, max_pixels: int = DEFAULT_DECODE_PIXELS,
                 concurrency: int = DEFAULT_DECODE_CONCURRENCY) -> None:
        if max_pixels < 1 or concurrency < 1:
            raise ValueError(f"max_pixels and concurrency must be positive, got {max_pixels} and {concurrency}")
        self.transform = build_pixel_transform(preprocess)
        self.draft_size = preprocess.resize_size
        self.reduce_to = REDUCING_GAP * preprocess.resize_size
        self.max_pixels = max_pixels
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)

    @property
    def memory_bound_bytes(self) -> int:
        """The stated bound on the pixel memory of the decodes running at once."""
        return self.concurrency * self.max_pixels * BYTES_PER_BUDGET_PIXEL

    @property
    def per_decode_bytes(self) -> int:
        """The stated bound on one decode's pixel memory (full-size JPEG buffers included)."""
        return self.max_pixels * BYTES_PER_BUDGET_PIXEL

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        with self._slots:
            large = self.check_cost(path) >= LARGE_DECODE_BYTES
            with large_decode() if large else contextlib.nullcontext():  # its buffers go back to the system
                try:
                    image = decode_image(path, draft_size=self.draft_size, max_decoded_pixels=self.max_pixels,
                                         reduce_to=self.reduce_to)
                except ImageDecodeError as error:
                    raise _refusal(path, error.reason) from None
                pixels = self.transform(image).numpy()
                del image
            return pixels  # type: ignore[no-any-return]

    def check_cost(self, path: str | os.PathLike[str]) -> int:
        """The bytes decoding ``path`` will hold at its peak, from its header; a 422 over the per-decode bound or
        over ``MAX_FRAMES``. 0 for what Pillow cannot open (``decode_image`` says why)."""
        try:
            with Image.open(path) as image:
                frames = _frame_count(image)
                whole = image.mode in _ALPHA_MODES and min(image.size) < 2 * self.reduce_to  # as decode_image
                cost, buffered = decode_cost(image, path, self.draft_size)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            return 0
        if whole and cost * _WHOLE_COPIES > self.per_decode_bytes:  # not reduced: converted at full size
            raise UnreadableImageError(f"image too large to decode here: a narrow image with transparency or a "
                                       f"palette is converted at full size ({cost * _WHOLE_COPIES / 2**20:,.0f} MB, "
                                       f"over the {self.per_decode_bytes / 2**20:,.0f} MB each decode may use); send "
                                       "a smaller photo or one without transparency")
        if frames > MAX_FRAMES:
            raise UnreadableImageError(f"the upload has {frames:,} frames, more than the {MAX_FRAMES:,} allowed; "
                                       "send a still photo")
        bound = self.per_decode_bytes
        if buffered and cost > bound:  # the others: over the pixel budget, refused by decode_image with its size
            raise UnreadableImageError(f"image too large to decode here: this progressive (multi-scan) JPEG is "
                                       f"decoded through full-size buffers ({cost / 2**20:,.0f} MB, over the "
                                       f"{bound / 2**20:,.0f} MB each decode may use); send a baseline JPEG or a "
                                       "smaller photo")
        return cost


def decode_cost(image: Image.Image, path: str | os.PathLike[str], draft_size: int) -> tuple[int, bool]:
    """(peak bytes, buffered) of decoding an opened (not loaded) image: its pixels after the JPEG draft, plus,
    for a progressive or multi-scan JPEG (``buffered``), libjpeg's full-size coefficient buffers."""
    if image.format != "JPEG":
        return image.width * image.height * BYTES_PER_DECODED_PIXEL, False
    full = image.size
    layers = list(getattr(image, "layer", []) or [])
    image.draft("RGB", (draft_size, draft_size))
    drafted = image.width * image.height * BYTES_PER_DECODED_PIXEL
    if not layers or not (image.info.get("progressive") or _scans(path) > 1):
        return drafted, False
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    blocks = sum(math.ceil(math.ceil(full[0] * h / h_max) / 8) * math.ceil(math.ceil(full[1] * v / v_max) / 8)
                 for _, h, v, _ in layers)
    return drafted + blocks * _COEFFICIENT_BLOCK, True


_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")


def _scans(path: str | os.PathLike[str], stop_at: int = 2) -> int:
    """How many scans (SOS markers) a JPEG has, up to ``stop_at``: segments are skipped by their lengths and
    entropy-coded data up to the next marker, so an EXIF thumbnail's own scan is not counted."""
    with open(path, "rb") as handle:
        data = handle.read()
    position, scans = 2, 0
    while scans < stop_at and (match := _MARKER.search(data, position)) is not None:
        marker = match.group(1)[0]
        if marker == 0xD9:  # EOI
            break
        length = int.from_bytes(data[match.end():match.end() + 2], "big")
        position = match.end() + max(length, 2)
        scans += marker == 0xDA
    return scans


def _frame_count(image: Image.Image) -> int:
    """Frames an animated image declares (1 for a still one); GIF counts them by reading the file."""
    if not getattr(image, "is_animated", False):
        return 1
    return int(getattr(image, "n_frames", 1))


def _refusal(path: str | os.PathLike[str], reason: str) -> UnsupportedImageError | UnreadableImageError:
    if reason.startswith("not an image") and not has_image_signature(path):
        return UnsupportedImageError(f"the upload is not an image ({reason}); send a JPEG, PNG, WebP, GIF, BMP or "
                                     "TIFF photo")
    return UnreadableImageError(f"the upload cannot be decoded as an image: {reason}")


def has_image_signature(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a common image format: such a file that fails to decode is corrupt
    (422), not of an unsupported type (415)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def media_type(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(media type, file suffix) of an image that already decoded, from its header."""
    with Image.open(path) as image:
        kind = image.format or ""
    return Image.MIME.get(kind, "application/octet-stream"), _EXTENSIONS.get(kind, ".img")
