"""Where shelfsight reads datasets and writes caches: explicit argument, then environment."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "SHELFSIGHT_DATA_DIR"
CACHE_DIR_ENV = "SHELFSIGHT_CACHE_DIR"
EXPORT_DIR_ENV = "SHELFSIGHT_EXPORT_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The datasets root: ``explicit`` (``--data-dir``), else ``$SHELFSIGHT_DATA_DIR``, else None."""
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``explicit``, else ``$SHELFSIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/shelfsight``."""
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    value = os.environ.get(CACHE_DIR_ENV)
    if value:
        return Path(value).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "shelfsight"


def export_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Exported model graphs: ``$SHELFSIGHT_EXPORT_DIR`` (one folder shared by several caches, e.g. on a
    machine with one cache per project), else ``exports/`` in the cache root."""
    value = os.environ.get(EXPORT_DIR_ENV)
    return Path(value).expanduser().resolve() if value else cache_dir(cache) / "exports"


def describe_data_dir(explicit: str | os.PathLike[str] | None = None) -> str:
    """How the data root was chosen, for error messages."""
    if explicit is not None:
        return f"--data-dir {explicit}"
    value = os.environ.get(DATA_DIR_ENV)
    return f"{DATA_DIR_ENV}={value}" if value else f"no data root ({DATA_DIR_ENV} is not set and no --data-dir)"
