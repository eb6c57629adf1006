"""A local Milvus server (PyPI's ``milvus`` wheel, 2.3.5) for tests and trials: start, wait, stop by PID.

Milvus 2.3.5 listens on every interface and has no setting to bind loopback (``milvus_netns.py`` says
why), so by default the server runs in a network namespace of its own (``unshare --user --map-root-user
--net``, unprivileged where user namespaces are allowed) and is reached through one port bound here on
``127.0.0.1``. Where namespaces are not available :func:`start_milvus_server` refuses, unless
``all_interfaces=True`` accepts a server that listens on every interface of the host.

The wheel's binaries are unpacked once per version into the cache (``milvus-bin/VERSION``; ~257 MB, 7 s)
rather than into every data folder. The server is its own process group (the script, Milvus under it);
stopping signals the group, waits, and kills what is left. ``server.json`` in the data folder records the
PID and URI, so ``shelfsight milvus stop DIR`` can stop a server another process started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shelfsight.errors import ShelfsightError
from shelfsight.paths import cache_dir

STATE_FILE = "server.json"


class MilvusServerError(ShelfsightError):
    """A local Milvus server cannot be started or stopped as asked; the message says why."""


@dataclass(frozen=True)
class MilvusServer:
    """A started server: its URI, the PID of its process group's leader, data folder and version."""

    uri: str
    pid: int
    data_dir: str
    version: str
    isolated: bool

    def stop(self, grace: float = 15.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after ``grace`` s) and wait until it is gone."""
        stop_group(self.pid, grace)
        Path(self.data_dir, STATE_FILE).unlink(missing_ok=True)


def wheel_version() -> str:
    """The installed ``milvus`` wheel's version (the server's), or a clear error when it is missing."""
    try:
        from importlib.metadata import version

        return version("milvus")
    except ImportError as error:  # PackageNotFoundError is an ImportError
        raise MilvusServerError("the 'milvus' package (the Milvus server wheel) is not installed: "
                                "pip install -e '.[dev]' installs it") from error


def isolation_problem() -> str | None:
    """None when a private network namespace can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare tool (util-linux) is not installed"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True,
                          text=True, check=False)
    return None if done.returncode == 0 else f"unshare --user --net failed: {done.stderr.strip()}"


def unpacked_binaries(version: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The wheel's binaries, unpacked once per version under the cache (a file lock guards concurrent runs)."""
    from filelock import FileLock

    base = cache_dir(cache) / "milvus-bin" / version
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base) + ".lock"):
        from milvus import _initialize_data_files  # type: ignore[import-not-found]

        _initialize_data_files(str(base))  # skips files whose digest is unchanged
    return base / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_milvus_server(data_dir: str | os.PathLike[str], *, port: int = 0, all_interfaces: bool = False,
                        timeout: float = 180.0, watch_parent: bool = False,
                        cache: str | os.PathLike[str] | None = None) -> MilvusServer:
    """Start a server on ``data_dir`` (created) and return once it answers; ``port`` 0 picks a free one.

    ``watch_parent`` stops the server when the calling process dies (for test sessions).
    """
    version = wheel_version()
    data = Path(data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    (data / "ready").unlink(missing_ok=True)
    problem = isolation_problem()
    if problem and not all_interfaces:
        raise MilvusServerError(
            f"Milvus {version} listens on every network interface and has no setting to bind loopback; "
            f"shelfsight confines it to a private network namespace, but {problem}. Pass all_interfaces=True "
            "(--all-interfaces) to accept a server reachable from the network.")
    command, listener = _command(data, unpacked_binaries(version, cache), port, isolated=problem is None,
                                 watch_parent=watch_parent)
    log = open(data / "launcher.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   pass_fds=(listener.fileno(),) if listener else ())
    finally:
        log.close()
        uri_port = listener.getsockname()[1] if listener else port
        if listener:
            listener.close()  # the child holds its copy
    server = MilvusServer(uri=f"http://127.0.0.1:{uri_port}", pid=process.pid, data_dir=str(data),
                          version=version, isolated=problem is None)
    try:
        _wait_ready(server, process, timeout)
    except BaseException:
        server.stop(grace=5)
        process.wait()
        raise
    (data / STATE_FILE).write_text(json.dumps(asdict(server), indent=2))
    return server


def _command(data: Path, bin_dir: Path, port: int, *, isolated: bool,
             watch_parent: bool) -> tuple[list[str], socket.socket | None]:
    script = [sys.executable, "-I", str(Path(__file__).with_name("milvus_netns.py")), "--data", str(data),
              "--bin", str(bin_dir)] + (["--watch-parent"] if watch_parent else [])
    if not isolated:
        return script + ["--port", str(port or free_port()), "--metrics-port", str(free_port())], None
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    listener.set_inheritable(True)
    return (["unshare", "--user", "--map-root-user", "--net"] + script
            + ["--listen-fd", str(listener.fileno())], listener)


def _wait_ready(server: MilvusServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the script reports Milvus healthy and a client through the URI gets its version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MilvusServerError(f"the Milvus server on {server.data_dir} exited with {process.returncode} "
                                    f"while starting: {_log_tail(Path(server.data_dir))}")
        if Path(server.data_dir, "ready").exists() and _answers(server.uri):
            return
        time.sleep(0.5)
    raise MilvusServerError(f"the Milvus server on {server.data_dir} did not answer within {timeout:.0f} s: "
                            f"{_log_tail(Path(server.data_dir))}")


def _answers(uri: str) -> bool:
    from pymilvus import MilvusClient, MilvusException

    try:
        client = MilvusClient(uri=uri, timeout=5)
    except (MilvusException, OSError):
        return False
    try:
        client.list_collections()
        return True
    except MilvusException:
        return False
    finally:
        client.close()


def _log_tail(data: Path, lines: int = 8) -> str:
    texts = []
    for name in ("launcher.log", "logs/milvus-stderr.log"):
        path = data / name
        if path.exists():
            texts += path.read_text(errors="replace").splitlines()[-lines:]
    return " | ".join(texts) or "(no log)"


def stop_group(pid: int, grace: float) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace`` s; return once it is gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while _group_alive(pid):
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is still in the group; our own zombie children are reaped."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return bool(group_pids(pgid))


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group: the server and what it started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def stop_milvus_server(data_dir: str | os.PathLike[str], grace: float = 15.0) -> MilvusServer | None:
    """Stop the server ``server.json`` in ``data_dir`` names; None when none is recorded there."""
    state = Path(data_dir).expanduser().resolve() / STATE_FILE
    if not state.exists():
        return None
    server = MilvusServer(**json.loads(state.read_text()))
    server.stop(grace)
    return server
