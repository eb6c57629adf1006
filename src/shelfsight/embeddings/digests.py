"""What a photo is, by its bytes: SHA-256 content digests, remembered by (path, size, mtime).

The per-item cache is keyed by content, so a renamed or moved file, or the same photos listed by a
manifest in another folder, are recognised without re-embedding. Hashing every file on every run would
read the whole catalogue; the digest of a file is therefore remembered in a small SQLite table under the
cache, keyed by its absolute path, size and modification time, and the bytes are read again only when one
of those changed (or for a path never seen).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing

from shelfsight import paths

MISSING = "file not found"


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes, hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class DigestMemo:
    """``digests(paths)``: the content digest of each file, from memory where its stat is unchanged."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = paths.cache_dir(cache_dir) / "file-digests.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=60)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS digest (path TEXT PRIMARY KEY, size INTEGER, "
                           "mtime_ns INTEGER, sha256 TEXT)")
        return connection

    def digests(self, files: Sequence[str | os.PathLike[str]]) -> list[str | None]:
        """One digest per file, aligned; ``None`` for a file that cannot be read (missing, a folder...)."""
        names = [os.path.abspath(f) for f in files]
        with closing(self._connect()) as connection:
            known = _known(connection, names)
            out: list[str | None] = []
            fresh: list[tuple[str, int, int, str]] = []
            for name in names:
                try:
                    stat = os.stat(name)
                except OSError:
                    out.append(None)
                    continue
                remembered = known.get(name)
                if remembered and remembered[:2] == (stat.st_size, stat.st_mtime_ns):
                    out.append(remembered[2])
                    continue
                try:
                    value = file_digest(name)
                except OSError:
                    out.append(None)
                    continue
                out.append(value)
                fresh.append((name, stat.st_size, stat.st_mtime_ns, value))
            if fresh:
                with connection:
                    connection.executemany("INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?)", fresh)
        return out


def _known(connection: sqlite3.Connection, names: list[str]) -> dict[str, tuple[int, int, str]]:
    """The remembered (size, mtime, digest) of each name, queried in batches SQLite accepts."""
    known: dict[str, tuple[int, int, str]] = {}
    for start in range(0, len(names), 900):
        batch = names[start:start + 900]
        rows = connection.execute(f"SELECT path, size, mtime_ns, sha256 FROM digest WHERE path IN "
                                  f"({','.join('?' * len(batch))})", batch)
        known.update({row[0]: (row[1], row[2], row[3]) for row in rows})
    return known
