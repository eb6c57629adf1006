"""A content-addressed, chunked embedding cache.

The key digests everything that decides the numbers (backbone identity, weights, resolved
preprocessing, decoding options, precision and the catalogue's files), so a changed crop or a
replaced photo can never read stale vectors. Items are cut into fixed chunks along catalogue
order; each chunk is written atomically (temporary file, then rename), so a run killed at any
moment leaves only whole chunks and the next run computes just the missing ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelfsight.files import atomic_write

FORMAT_VERSION = 1
NON_FINITE = "non-finite embedding"
"""The skip reason of an item whose vector holds NaN or infinity: it is reported, never stored."""


@dataclass(frozen=True)
class SkippedItem:
    """An item that could not be embedded, and why (for the skip report)."""

    item_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    ids: list[str]
    vectors: np.ndarray
    skipped: list[SkippedItem]


def make_chunk(ids: list[str], paths: list[str], vectors: np.ndarray, skipped: list[SkippedItem]) -> Chunk:
    """One chunk from embedded items (``ids``, their ``paths`` and ``vectors``, aligned) and skipped ones.

    Shared by every engine and by reads of the cache: an item whose vector holds NaN or infinity is not a
    vector but a ``SkippedItem`` with reason ``"non-finite embedding"`` (like an unreadable file), so no
    index, metric or shard ever sees it. Skipped items are sorted by id.
    """
    if vectors.ndim != 2 or len(vectors) != len(ids) or len(paths) != len(ids):
        raise ValueError(f"{len(ids)} ids, {len(paths)} paths and vectors of shape {vectors.shape} do not line up")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        skipped = [*skipped, *(SkippedItem(ids[i], paths[i], NON_FINITE) for i in np.flatnonzero(~finite))]
        ids = [item_id for item_id, keep in zip(ids, finite, strict=True) if keep]
        vectors = vectors[finite]
    return Chunk(ids=list(ids), vectors=vectors, skipped=sorted(skipped, key=lambda s: s.item_id))


def cache_key(parts: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (sorted keys, no whitespace)."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class EmbeddingCache:
    """The folder of one cache key: ``manifest.json`` and ``chunk-NNNNN.npz`` files."""

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.folder = root / "embeddings" / key[:2] / key

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.npz"

    def has_chunk(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def read_chunk(self, index: int) -> Chunk:
        with np.load(self.chunk_path(index), allow_pickle=False) as data:
            skipped = [SkippedItem(*row) for row in data["skipped"].tolist()]
            return Chunk(ids=data["ids"].tolist(), vectors=data["vectors"], skipped=skipped)

    def write_chunk(self, index: int, chunk: Chunk) -> None:
        skipped = np.array([[s.item_id, s.path, s.reason] for s in chunk.skipped], dtype=str).reshape(-1, 3)
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.chunk_path(index), lambda handle: np.savez(
            handle, ids=np.array(chunk.ids, dtype=str), vectors=chunk.vectors.astype(np.float32), skipped=skipped))

    def read_manifest_rate(self) -> dict[str, Any]:
        """The extraction rate recorded by the run that computed this key, if any."""
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: manifest[k] for k in ("images_per_second", "rate_batch_size") if k in manifest}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        _atomic_write(self.folder / "manifest.json", lambda handle: handle.write(text))


def _atomic_write(target: Path, write: Any) -> None:
    """Chunks and manifests are flushed to disk before the rename: a killed run leaves whole chunks only."""

    def to_file(path: Path) -> None:
        with open(path, "wb") as handle:
            write(handle)

    atomic_write(target, to_file, mode=None, fsync=True)
