"""Milvus Lite's in-process server, shared by every client of one ``.db`` path.

Milvus Lite runs one in-process server per ``.db`` path, shared by every client of that path; it is
stopped (releasing the folder's lock) when the last :class:`~shelfsight.search.milvus.MilvusIndex` on the
path closes. :func:`acquire_lite` counts a user in, :func:`release_lite` counts one out.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def lite_path(path: str | os.PathLike[str]) -> str:
    """The absolute ``.db`` path that keys a Lite server; its parent folder is created (Lite makes the rest)."""
    target = Path(os.path.abspath(os.fspath(path)))
    if target.suffix != ".db":
        raise ValueError(f"a Milvus Lite database path must end in .db, got {str(target)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return str(target)


def acquire_lite(key: str) -> None:
    """One more user of the Lite server at ``key`` (a :func:`lite_path`)."""
    with _LITE_LOCK:
        _LITE_USERS[key] = _LITE_USERS.get(key, 0) + 1


def release_lite(key: str) -> None:
    """One user fewer; the last one out stops the server."""
    with _LITE_LOCK:
        _LITE_USERS[key] = _LITE_USERS.get(key, 1) - 1
        if _LITE_USERS[key] > 0:
            return
        del _LITE_USERS[key]
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(key)
