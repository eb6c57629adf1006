"""A content-addressed embedding cache, per photo.

An embedding space's key digests everything that decides the numbers (backbone identity, weights,
resolved preprocessing, decoding options, precision, runtime); inside it each photo's vector is keyed by
the SHA-256 of the photo's bytes. A changed crop or runtime is another space; a replaced photo is another
digest; adding 1% of photos to a catalogue computes those 1%, and removing or renaming photos computes
nothing. Computed vectors are stored in parts of up to a chunk of photos, each written atomically, so a
run killed at any moment resumes where it stopped.
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


@dataclass(frozen=True)
class StoredItems:
    """What the store knows of some photos, by content digest: vectors, and reasons for failed ones."""

    vectors: dict[str, np.ndarray]
    failures: dict[str, str]


class VectorStore:
    """The vectors of one embedding space (backbone, weights, preprocessing, runtime), keyed by photo content.

    ``vectors/KEY[:2]/KEY/`` holds ``part-NNNNNN.npz`` files (``digests``, ``vectors``, and ``failed``
    digests with their reasons) and ``manifest.json``. A part is written whole (temporary file, fsync,
    rename), so a run killed at any moment loses at most the part in progress, and the next run computes
    only the photos no part holds. Any catalogue listing the same bytes, wherever they live and whatever
    they are called, reads the same vectors.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.folder = root / "vectors" / key[:2] / key

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))

    def read(self) -> StoredItems:
        """Every stored vector and failure (later parts win, though parts never disagree)."""
        vectors: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        for part in self.parts():
            with np.load(part, allow_pickle=False) as data:
                stored = data["vectors"]
                vectors.update(zip(data["digests"].tolist(), stored, strict=True))
                failures.update((str(d), str(r)) for d, r in data["failed"].tolist())
        return StoredItems(vectors, failures)

    def append(self, digests: list[str], vectors: np.ndarray, failures: dict[str, str]) -> Path:
        """Store one part: ``vectors`` aligned with ``digests``, and the reasons of failed digests."""
        if vectors.ndim != 2 or len(vectors) != len(digests):
            raise ValueError(f"{len(digests)} digests and vectors of shape {vectors.shape} do not line up")
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.parts()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        target = self.folder / f"part-{number:06d}.npz"
        failed = np.array(sorted(failures.items()), dtype=str).reshape(-1, 2)
        _atomic_write(target, lambda handle: np.savez(
            handle, digests=np.array(digests, dtype=str), vectors=vectors.astype(np.float32), failed=failed))
        return target

    def read_manifest(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.folder / "manifest.json").read_text()))
        except (OSError, ValueError):
            return {}

    def read_manifest_rate(self) -> dict[str, Any]:
        """The extraction rate recorded by the last run that computed vectors here, if any."""
        manifest = self.read_manifest()
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
