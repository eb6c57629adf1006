"""Perceptual hashes from the ``imagehash`` library, the baseline every duplicate finder is measured against.

pHash (DCT of a 32x32 greyscale) and dHash (gradient signs of a 9x8 greyscale) give 64 bits each; two images
are as similar as the share of bits they agree on, ``1 - hamming / 64``, so a hash and an embedding are
scored on the same 0..1 scale and go through the same precision-recall code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import imagehash
import numpy as np
from PIL import Image

from shelfsight.catalog.images import decode_image

HASHES: dict[str, Callable[[Image.Image], imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
}
"""The perceptual hashes compared, by the name results use."""
BITS = 64
BLOCK = 2048


def hash_images(paths: Sequence[str | os.PathLike[str]], method: str) -> np.ndarray:
    """One uint64 per image: its ``method`` hash packed into an integer (bit order as imagehash flattens it)."""
    if method not in HASHES:
        raise ValueError(f"unknown perceptual hash {method!r}; choose one of {', '.join(HASHES)}")
    function = HASHES[method]
    weights = np.left_shift(np.uint64(1), np.arange(BITS - 1, -1, -1, dtype=np.uint64))
    packed = np.empty(len(paths), dtype=np.uint64)
    for row, path in enumerate(paths):
        bits = np.asarray(function(decode_image(path)).hash, dtype=np.uint64).reshape(-1)
        packed[row] = np.bitwise_or.reduce(bits * weights)
    return packed


def hash_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) matrix of ``1 - hamming / 64`` between packed hashes, computed in blocks."""
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for start in range(0, len(a), BLOCK):
        xor = np.bitwise_xor(a[start:start + BLOCK, None], b[None, :])
        out[start:start + BLOCK] = 1.0 - np.bitwise_count(xor).astype(np.float32) / BITS
    return out
