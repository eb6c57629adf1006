"""Starting or joining a Ray cluster, with a local start that survives a slow first boot.

Ray gives a new local node a fixed 30 s to register with its control store. On a loaded 2-core machine
with a cold disk cache (the first ``import`` of Ray's agents reads thousands of files) that can run
out once and then succeed, so a local start is tried again after a clean shutdown, and a start that
keeps failing ends in an error that carries the tail of Ray's own logs instead of a bare timeout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

LOCAL_START_ATTEMPTS = 3
LOG_TAIL_LINES = 15


class RayStartError(RuntimeError):
    """Ray could not be started or reached; the message says what to do."""


def start_ray(ray: Any, address: str | None, num_cpus: int | None) -> None:
    """Connect to ``address`` (a running cluster), or start a local one bounded to ``num_cpus``."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    # a local start on a busy machine can need more than Ray's default 30 s to bring up its control store
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    if address:
        _join(ray, address, kwargs)
        return
    kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception when the node misses its start window
            ray.shutdown()  # stop whatever half-started, so the next try begins clean
            if attempt == LOCAL_START_ATTEMPTS or not _is_slow_start(exc):
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                raise RayStartError(f"a local Ray cluster did not start after {tries} ({exc}).\n{_log_tail()}") from exc


def _join(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise RayStartError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it with "
                            "`ray start --head` or pass the address printed by it") from None


def _is_slow_start(exc: Exception) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "gcs" in text


def _log_tail() -> str:
    """The last lines of the raylet's and control store's logs of the latest local session."""
    logs = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray" / "session_latest" / "logs"
    parts = []
    for name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
        path = logs / name
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            if lines:
                parts.append(f"--- {path} ---\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no Ray logs under {logs})"
