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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


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
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
