"""Writing files so that a reader (or a run killed half-way) never sees half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["atomic_write", "replace_folder"]

T = TypeVar("T")


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], object], *, mode: int | None = 0o644,
                 fsync: bool = False, suffix: str = "") -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file over ``target`` (same folder, so the
    rename is atomic). ``mode``: the file's permissions (mkstemp's 0600 would hide shared files from their
    other users; None keeps 0600). ``fsync``: flush to disk before the rename (caches that must survive a
    power cut). ``suffix``: for writers that pick a format by extension. The temporary file is removed on
    any failure."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        write(temporary)
        if fsync:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def replace_folder(target: str | os.PathLike[str], fill: Callable[[Path], T]) -> T:
    """Call ``fill(staging_folder)`` on a fresh hidden folder beside ``target``, then rename it over ``target``
    (replacing an older one), so a reader sees the old folder or the whole new one, never part of it. The
    staging folder is removed on any failure. Returns what ``fill`` returns."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        result = fill(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result
