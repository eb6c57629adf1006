"""A content-addressed embedding cache, per photo, that any number of processes can fill at once.

An embedding space's key digests everything that decides the numbers (backbone identity, weights,
resolved preprocessing, decoding options, precision, runtime, the versions of the libraries that decode
and compute); inside it each photo's vector is keyed by the SHA-256 of the photo's bytes. A changed crop or
runtime is another space; a replaced photo is another digest; adding 1% of photos to a catalogue computes
those 1%, and removing or renaming photos computes nothing. Computed vectors are stored in parts of up to a
chunk of photos, each written atomically under a name no other writer can pick, so a run killed at any
moment resumes where it stopped and two runs filling one space lose nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from filelock import FileLock, Timeout

from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

FORMAT_VERSION = 1
NON_FINITE = "non-finite embedding"
"""The skip reason of an item whose vector holds NaN or infinity: it is reported, never stored as a vector."""

FailureKind = Literal["permanent", "transient"]
"""``permanent``: the photo's bytes cannot give a vector in this space (not an image, truncated, a decompression
bomb, a non-finite output): remembered, never retried. ``transient``: the failure says nothing about the bytes
(an I/O error, memory, a file gone, anything not known to be the bytes' fault): reported, never stored, so
the next run tries again."""
PERMANENT: FailureKind = "permanent"
TRANSIENT: FailureKind = "transient"

MANIFEST_LOCK_SECONDS = 120.0
_LEGACY_PART = re.compile(r"part-(\d+)\.npz")
_UNIQUE_PART = re.compile(r"part-\d{20}-\d+-[0-9a-f]{32}\.npz")


@dataclass(frozen=True)
class SkippedItem:
    """An item that could not be embedded, why, and whether the next run retries it (see ``FailureKind``)."""

    item_id: str
    path: str
    reason: str
    kind: FailureKind = PERMANENT


@dataclass(frozen=True)
class Chunk:
    ids: list[str]
    vectors: np.ndarray
    skipped: list[SkippedItem]


def make_chunk(ids: list[str], paths: list[str], vectors: np.ndarray, skipped: list[SkippedItem]) -> Chunk:
    """One chunk from embedded items (``ids``, their ``paths`` and ``vectors``, aligned) and skipped ones.

    Shared by every engine and by reads of the cache: an item whose vector holds NaN or infinity is not a
    vector but a permanent ``SkippedItem`` with reason ``"non-finite embedding"`` (like an undecodable file),
    so no index, metric or shard ever sees it. Skipped items are sorted by id.
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
    """What is known of some photos, by content digest: vectors, reasons of permanent failures, and the
    reasons of this run's transient failures (reported with the result, never stored)."""

    vectors: dict[str, np.ndarray]
    failures: dict[str, str]
    transient: dict[str, str] = field(default_factory=dict)


class VectorStore:
    """The vectors of one embedding space (backbone, weights, preprocessing, runtime), keyed by photo content.

    ``vectors/KEY[:2]/KEY/`` holds parts (``digests``, ``vectors``, and ``failed`` rows of digest, kind and
    reason) and ``manifest.json``. A part is written whole (hidden temporary file, fsync, rename) under a
    name of its own (``part-TIME-PID-UUID.npz``), so concurrent writers never target one file and readers
    see only whole parts; the manifest is read, merged and rewritten under a file lock. Parts of the earlier
    ``part-NNNNNN.npz`` layout are read as before, except their failures, which carried no kind: those
    photos are tried once more and the outcome stored with its kind. Any catalogue listing the same bytes,
    wherever they live and whatever they are called, reads the same vectors.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.folder = root / "vectors" / key[:2] / key

    def parts(self) -> list[Path]:
        """Whole parts in write order: earlier-layout parts by number, then by name (which starts with the
        time in nanoseconds). Temporary files (``.part-...``) never match."""
        named = [p for p in self.folder.glob("part-*.npz")
                 if _LEGACY_PART.fullmatch(p.name) or _UNIQUE_PART.fullmatch(p.name)]
        return sorted(named, key=_write_order)

    def read(self) -> StoredItems:
        """Every stored vector and permanent failure; a vector wins over a failure of the same photo."""
        vectors: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        for part in self.parts():
            with np.load(part, allow_pickle=False) as data:
                vectors.update(zip(data["digests"].tolist(), data["vectors"], strict=True))
                failures.update(_permanent_failures(data["failed"]))
        return StoredItems(vectors, {d: r for d, r in failures.items() if d not in vectors})

    def append(self, digests: list[str], vectors: np.ndarray, failures: dict[str, str]) -> Path:
        """Store one part: ``vectors`` aligned with ``digests``, and the reasons of permanently failed digests
        (transient failures are never stored)."""
        if vectors.ndim != 2 or len(vectors) != len(digests):
            raise ValueError(f"{len(digests)} digests and vectors of shape {vectors.shape} do not line up")
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex}.npz"
        failed = np.array([(d, PERMANENT, r) for d, r in sorted(failures.items())], dtype=str).reshape(-1, 3)
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

    def update_manifest(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the manifest under a file lock, so a field another process wrote meanwhile
        is kept; returns the manifest as written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / "manifest.json.lock"
        try:
            with FileLock(lock, timeout=MANIFEST_LOCK_SECONDS):
                manifest = {**self.read_manifest(), **changes}
                text = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
                _atomic_write(self.folder / "manifest.json", lambda handle: handle.write(text))
        except Timeout:
            raise ShelfsightError(f"{lock}: held by another process for {MANIFEST_LOCK_SECONDS:.0f} s; if no "
                                  "shelfsight run is writing this cache (the lock is released when its process "
                                  "ends, except on file systems without locks), use a local cache folder "
                                  "(SHELFSIGHT_CACHE_DIR)") from None
        return manifest


def _write_order(part: Path) -> tuple[int, int, str]:
    legacy = _LEGACY_PART.fullmatch(part.name)
    return (0, int(legacy[1]), "") if legacy else (1, 0, part.name)


def _permanent_failures(failed: np.ndarray) -> list[tuple[str, str]]:
    """(digest, reason) of the permanent rows; rows of the earlier two-column layout have no kind and are
    left out, so their photos are tried again."""
    if failed.ndim != 2 or failed.shape[1] != 3:
        return []
    return [(str(d), str(r)) for d, kind, r in failed.tolist() if kind == PERMANENT]


def _atomic_write(target: Path, write: Any) -> None:
    """Parts and manifests are flushed to disk before the rename: a killed run leaves whole files only."""

    def to_file(path: Path) -> None:
        with open(path, "wb") as handle:
            write(handle)

    atomic_write(target, to_file, mode=None, fsync=True)
