"""A real Milvus server (2.3.5, PyPI's ``milvus`` wheel) for the test session, on loopback, always stopped.

``milvus_standalone`` is a session fixture (conftest imports it): started once on a temporary data folder
and a free port, in a network namespace of its own (``shelfsight.search.milvus_server``), stopped by its
process group at the end of the session. Without the wheel, or where no user namespace can be made, the
tests that use it skip saying why; ``SHELFSIGHT_MILVUS_ALL_INTERFACES=1`` then accepts a server that listens
on every interface.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shelfsight.paths import cache_dir

BINARIES = cache_dir()  # read before any test points SHELFSIGHT_CACHE_DIR at its own folder: unpacked once
STARTED: dict[str, float] = {}


def group_processes(pgid: int) -> list[str]:
    """``pid state command`` of every live process in the group (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(f"{stat.parent.name} {fields[0]} {name}")
    return found


def listening_addresses(pids: set[int]) -> set[str]:
    """``address:port`` of the TCP sockets in LISTEN state that ``pids`` hold, as this namespace sees them."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                address, port = parts[1].split(":")
                found.add(f"{_address(address, width)}:{int(port, 16)}")
    return found


def _address(hex_address: str, width: int) -> str:
    if width == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return "::" if int(hex_address, 16) == 0 else hex_address


def skip_reason() -> str | None:
    """Why no isolated server can run here, or None."""
    if importlib.util.find_spec("milvus") is None:
        return "the 'milvus' wheel (Milvus 2.3.5 server) is not installed: pip install -e '.[dev]'"
    from shelfsight.search.milvus_server import isolation_problem

    problem = isolation_problem()
    if problem and os.environ.get("SHELFSIGHT_MILVUS_ALL_INTERFACES") != "1":
        return f"no private network namespace for the Milvus server ({problem}); SHELFSIGHT_MILVUS_ALL_INTERFACES=1 " \
               "runs it on every interface instead"
    return None


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real Milvus 2.3.5 standalone server shared by the session."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from shelfsight.search.milvus_server import start_milvus_server

    started = time.monotonic()
    server = start_milvus_server(tmp_path_factory.mktemp("milvus-standalone"), watch_parent=True,
                                 all_interfaces=os.environ.get("SHELFSIGHT_MILVUS_ALL_INTERFACES") == "1",
                                 cache=BINARIES)
    STARTED["seconds"] = time.monotonic() - started
    try:
        yield server.uri
    finally:
        server.stop(grace=5)
        left = group_processes(server.pid)
        assert not left, f"Milvus processes left after stop: {left}"
