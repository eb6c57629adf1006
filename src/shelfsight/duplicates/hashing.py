"""Exact duplicates: the same bytes uploaded twice, found by a content digest (no model, no threshold).

A digest of the file's bytes is the strictest test there is: a re-encoded or resized copy is not an exact
duplicate, which is what the embedding search is for. Digests are memoised by (path, size, mtime) within the
process, since the bench and the leakage check hash the same catalogue once per protocol.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from shelfsight.catalog import CatalogItem

_CHUNK = 1 << 20
_MEMO: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes; ``""`` for a missing or unreadable file (it duplicates nothing)."""
    name = os.fspath(path)
    try:
        stat = os.stat(name)
    except OSError:
        return ""
    key = (name, stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        digest = hashlib.sha256()
        try:
            with open(name, "rb") as handle:
                while block := handle.read(_CHUNK):
                    digest.update(block)
        except OSError:
            return ""
        _MEMO[key] = digest.hexdigest()
    return _MEMO[key]


def content_hashes(items: Iterable[CatalogItem], workers: int = 4) -> dict[str, str]:
    """item id -> content digest (hashlib releases the GIL on large buffers, so threads help)."""
    listed = list(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda item: content_hash(item.image_path), listed))
    return {item.item_id: digest for item, digest in zip(listed, digests, strict=True)}


def exact_groups(hashes: dict[str, str]) -> list[list[str]]:
    """Groups of two or more ids with the same digest, each in the given order."""
    by_digest: dict[str, list[str]] = {}
    for item_id, digest in hashes.items():
        if digest:
            by_digest.setdefault(digest, []).append(item_id)
    return [ids for ids in by_digest.values() if len(ids) > 1]
