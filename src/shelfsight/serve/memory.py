"""Giving a large decode's memory back to the system (glibc's allocator).

Decoding a large upload allocates tens of MB (Pillow's image blocks, libjpeg's and zlib's buffers) in the request
thread. glibc serves an allocation above ``M_MMAP_THRESHOLD`` (128 KB at start) by ``mmap`` and unmaps it on
``free``, but it *raises* that threshold to the size of each such block freed (up to 32 MB): after the first
large decode, later ones come from the threads' heaps (one arena per thread), and what they free stays mapped.
The server's memory then settled 0.5 to 0.9 GB above its start after a few large uploads (and ``malloc_trim``
alone left a 16-MP progressive JPEG's 150 MB mapped, measured).

So while a large decode runs (:func:`large_decode`), the threshold is 1 MB: its buffers are mapped on their own
and unmapped when freed; afterwards ``malloc_trim(0)`` returns the heaps' free pages. Between large decodes the
threshold is 32 MB, the most glibc's own adjustment reaches: held at 1 MB all the time, every Milvus Lite search
mapped and faulted in its 28 MB copy of the vectors afresh (+3 ms of CPU per search over 5,502 items, measured).
Linux with glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import threading
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3
DECODING_THRESHOLD = 1 << 20
RESTING_THRESHOLD = 32 << 20
LARGE_DECODE_BYTES = 8 << 20
"""A decode expected to hold this much runs under :func:`large_decode`."""
_lock = threading.Lock()
_running = 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def large_decode() -> Iterator[None]:
    """Large buffers allocated inside are mapped on their own (unmapped when freed); the heaps are trimmed after."""
    global _running
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        _running += 1
        if _running == 1:
            libc.mallopt(M_MMAP_THRESHOLD, DECODING_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                libc.mallopt(M_MMAP_THRESHOLD, RESTING_THRESHOLD)
        libc.malloc_trim(0)
