"""The inside of a local Milvus server: start the ``milvus`` wheel's binary and forward one loopback port to it.

Milvus 2.3.5 (PyPI's ``milvus`` wheel) listens on every interface for each of its ports, and has no
setting to change that (``proxy.ip`` and the other ``*.ip`` keys are the address it *advertises*; its
binary has no listen-address key). So :mod:`shelfsight.search.milvus_server` runs this script under
``unshare --user --map-root-user --net``: in a network namespace of its own the only interface is
loopback, nothing outside can reach it, and every port is free (two servers never collide). The one way
in is a socket the launcher bound on the host's ``127.0.0.1`` and passed down (``--listen-fd``); this
script forwards its connections to the proxy, once the server reports healthy. Without ``--listen-fd``
(``all_interfaces=True``) Milvus takes ``--port`` on the host itself.

Run as a script, importing no shelfsight module: it starts in a fraction of a second. SIGTERM stops
Milvus (and waits for it) before this process exits, so a stopped server leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROXY_PORT = 19530
METRICS_PORT = 9091
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH14x"


def loopback_up() -> None:
    """A new network namespace starts with ``lo`` down: bring it up (ioctl, so no ``ip`` tool is needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def start_milvus(data_dir: Path, bin_dir: Path, proxy_port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    """Write the wheel's config for ``data_dir`` (its template, ports checked free) and start the binary."""
    from milvus import MilvusServerConfig  # type: ignore[import-not-found]

    config = MilvusServerConfig(data_dir=str(data_dir), proxy_port=proxy_port)
    config.resolve()  # writes data_dir/configs/milvus.yaml, makes logs/ and data/
    env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(metrics_port),
               MILVUS_RUN_DIR=str(data_dir / "run"), MILVUSCONF=str(data_dir / "configs"),
               LD_LIBRARY_PATH=f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    logs = data_dir / "logs"
    with open(logs / "milvus-stdout.log", "wb") as out, open(logs / "milvus-stderr.log", "wb") as err:
        return subprocess.Popen([str(bin_dir / "milvus"), "run", "standalone"], cwd=data_dir, env=env,
                                stdout=out, stderr=err)


def healthy(metrics_port: int) -> bool:
    """Milvus' own readiness check (``/healthz`` answers OK once every component is up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as answer:
            return b"OK" in answer.read()
    except OSError:
        return False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", PROXY_PORT)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
    finally:
        client_writer.close()
        server_writer.close()


async def serve(listen_fd: int | None, milvus: subprocess.Popen[bytes], metrics_port: int, ready: Path,
                watch_parent: bool) -> None:
    """Forward the inherited socket to Milvus once healthy (then touch ``ready``); return when Milvus exits
    or, with ``watch_parent``, when the launcher has died."""
    parent, up = os.getppid(), False
    while milvus.poll() is None:
        if watch_parent and os.getppid() != parent:
            return
        if not up and healthy(metrics_port):
            if listen_fd is not None:
                await asyncio.start_server(_forward, sock=socket.socket(fileno=listen_fd))
            ready.touch()
            up = True
        await asyncio.sleep(0.5)


def stop(milvus: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; reaped here, so no zombie outlives this process."""
    if milvus.poll() is None:
        milvus.terminate()
        try:
            milvus.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            milvus.kill()
            milvus.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bin", type=Path, required=True)
    parser.add_argument("--listen-fd", type=int, default=None)
    parser.add_argument("--port", type=int, default=PROXY_PORT)
    parser.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--watch-parent", action="store_true")
    args = parser.parse_args(argv)
    if args.listen_fd is not None:
        loopback_up()
    milvus = start_milvus(args.data, args.bin, args.port, args.metrics_port)
    def terminated(*_: object) -> None:
        stop(milvus, args.grace)
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)
    started = time.monotonic()
    try:
        asyncio.run(serve(args.listen_fd, milvus, args.metrics_port, args.data / "ready", args.watch_parent))
    finally:
        stop(milvus, args.grace)
    print(f"milvus exited with {milvus.returncode} after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0 if milvus.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
