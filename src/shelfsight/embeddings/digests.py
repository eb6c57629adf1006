"""What a photo is, by its bytes: SHA-256 content digests, remembered by the file's stat.

The per-item cache is keyed by content, so a renamed or moved file, or the same photos listed by a
manifest in another folder, are recognised without re-embedding. Hashing every file on every run would
read the whole catalogue; the digest of a file is therefore remembered in a small SQLite table under the
cache, keyed by its absolute path, and reused only while its size, mtime, ctime and inode are those it had
when hashed. ``os.utime`` can put an mtime back but not a ctime (the kernel sets it on every write), and a
file replaced by a rename has a new inode, so a photo rewritten in place with the same size and a restored
mtime is read again. A file changed less than ``RACY_SECONDS`` before it was hashed is not remembered (as git
does with "racily clean" entries): a second write within one tick of the file system's clock would leave every
time as it was. ``rehash=True`` (or ``SHELFSIGHT_REHASH=1``) reads every file whatever its stat says,
for file systems whose times cannot be trusted (some network and FUSE mounts).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing

from shelfsight import paths

MISSING = "file not found"
REHASH_ENV = "SHELFSIGHT_REHASH"
"""Set to 1 to read every photo's bytes again instead of trusting the remembered digests."""
RACY_SECONDS = 2.0
"""A digest is remembered only for a file whose ctime is older than this when it was read (time stamps can be
as coarse as 1-2 s on some file systems)."""
_TABLE = "file_digest"
"""The memo's table; ``digest`` (size and mtime only) was the table of older versions, dropped on sight."""

Stat = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode): what must be unchanged for a remembered digest to hold."""


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes, hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def rehash_requested() -> bool:
    """Whether ``$SHELFSIGHT_REHASH`` asks for every file to be read again."""
    return os.environ.get(REHASH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class DigestMemo:
    """``digests(paths)``: the content digest of each file, from memory where its stat is unchanged.

    ``rehash``: read every file's bytes (and remember the result); None follows ``$SHELFSIGHT_REHASH``."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, rehash: bool | None = None) -> None:
        self.path = paths.cache_dir(cache_dir) / "file-digests.sqlite"
        self.rehash = rehash_requested() if rehash is None else rehash

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            # SQLite's busy timeout does not cover two processes switching a new file to WAL at once: one gets
            # "database is locked" at once, so the set-up is taken in turns.
            fcntl.flock(lock, fcntl.LOCK_EX)
            connection = sqlite3.connect(self.path, timeout=60)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (path TEXT PRIMARY KEY, size INTEGER, "
                                   "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)")
                if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'digest'"
                                      ).fetchone():
                    connection.execute("DROP TABLE digest")
            except BaseException:
                connection.close()
                raise
        return connection

    def digests(self, files: Sequence[str | os.PathLike[str]]) -> list[str | None]:
        """One digest per file, aligned; ``None`` for a file that cannot be read (missing, a folder...)."""
        names = [os.path.abspath(f) for f in files]
        with closing(self._connect()) as connection:
            known = {} if self.rehash else _known(connection, names)
            out: list[str | None] = []
            fresh: list[tuple[str, int, int, int, int, str]] = []
            for name in names:
                try:
                    stat = os.stat(name)
                except OSError:
                    out.append(None)
                    continue
                now: Stat = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
                remembered = known.get(name)
                if remembered is not None and remembered[0] == now:
                    out.append(remembered[1])
                    continue
                try:
                    value = file_digest(name)
                except OSError:
                    out.append(None)
                    continue
                out.append(value)
                if time.time_ns() - stat.st_ctime_ns > RACY_SECONDS * 1e9:
                    fresh.append((name, *now, value))
            if fresh:
                with connection:
                    connection.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?, ?, ?, ?, ?)", fresh)
        return out


def _known(connection: sqlite3.Connection, names: list[str]) -> dict[str, tuple[Stat, str]]:
    """The remembered stat and digest of each name, queried in batches SQLite accepts."""
    known: dict[str, tuple[Stat, str]] = {}
    for start in range(0, len(names), 900):
        batch = names[start:start + 900]
        rows = connection.execute(f"SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM {_TABLE} WHERE path "
                                  f"IN ({','.join('?' * len(batch))})", batch)
        known.update({row[0]: ((row[1], row[2], row[3], row[4]), row[5]) for row in rows})
    return known
