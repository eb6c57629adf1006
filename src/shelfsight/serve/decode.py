"""Uploaded photo -> pixels with bounded work: a serving pixel budget, early reduction, few decodes at once.

The model needs 224 px; a 63-megapixel PNG of 245 KB would otherwise cost about 1 GB to decode and
convert. Three bounds, so that the memory of a decode is stated, not a property of the upload:

- **Budget**: an image whose *decoded* size is over ``max_pixels`` (default ``DEFAULT_DECODE_PIXELS``, 16 MP;
  extraction's cap is 64 MP, and the constant says why they differ) is refused from its header, before any
  pixel is decoded (422). JPEGs are measured after the draft
  (the decoder scales by 1/2..1/8 while decoding), so a large JPEG photo is served at a fraction of
  its size; PNG and the other formats decode at full size, so the budget is what bounds them.
- **Early reduction**: right after decoding, an image whose shorter side is at least twice the model's
  resize size is shrunk by an integer factor (``Image.reduce``) before any mode conversion or EXIF
  rotation copies it. Photos smaller than that are decoded exactly as batch extraction decodes them.
- **Concurrency**: at most ``concurrency`` decodes run at once (a semaphore); others wait their turn.

So the pixel memory of decoding is at most ``concurrency x max_pixels x 8`` bytes (4 bytes per decoded
pixel, one converted copy): 2 x 16 MP x 8 B = 256 MB with the defaults.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from PIL import Image

from shelfsight.backbones import Preprocess, build_pixel_transform
from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError
from shelfsight.serve.errors import UnreadableImageError, UnsupportedImageError

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

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        with self._slots:
            try:
                image = decode_image(path, draft_size=self.draft_size, max_decoded_pixels=self.max_pixels,
                                     reduce_to=self.reduce_to)
            except ImageDecodeError as error:
                raise _refusal(path, error.reason) from None
            return self.transform(image).numpy()  # type: ignore[no-any-return]


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
