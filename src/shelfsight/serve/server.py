"""Running the app under uvicorn: in the foreground (``shelfsight serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from shelfsight.serve.app import ServeSettings, create_app, open_service
from shelfsight.serve.compression import serving_blas_thread
from shelfsight.serve.errors import ServeError
from shelfsight.serve.http import DEFAULT_HEADER_TIMEOUT, json_protocol
from shelfsight.serve.security import check_binding


def run_server(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               sock: socket.socket | None = None) -> None:
    """Serve until interrupted. The binding is checked (no open writes beyond loopback), the port taken and the
    index opened first, so a port in use, a wrong folder or a changed model is a ShelfsightError (a clear message
    from the CLI) before the model loads, not a failed uvicorn startup after it. ``sock``: ``host:port`` already
    bound (``shelfsight serve`` binds it before its imports); closed on return. BLAS runs on one thread
    (:func:`serving_blas_thread`)."""
    check_binding(host, api_key=settings.api_key, read_only=settings.read_only, allowed_hosts=settings.allowed_hosts)
    listening = sock or bind_port(host, port)
    try:
        with serving_blas_thread(), open_service(settings) as service:
            config = uvicorn.Config(create_app(settings, service), host=host, port=port, log_level=log_level,
                                    timeout_graceful_shutdown=10, http=json_protocol(settings.header_timeout_s))
            uvicorn.Server(config).run(sockets=[listening])
    finally:
        listening.close()


def bind_port(host: str, port: int) -> socket.socket:
    """``host:port`` bound as uvicorn binds it (``SO_REUSEADDR``), so a port in use is refused at once, before
    anything loads, and nothing else can take it while the model does."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --port, "
                         "or stop what holds it") from None
    return sock


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout: float = 300.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread and yield its base URL; stopped (with the app's
    shutdown) on exit. ``port=0`` binds a free port first, so there is no race for it."""
    sock = bind_port(host, port)
    bound = sock.getsockname()[1]
    header_timeout = getattr(app.state, "header_timeout_s", DEFAULT_HEADER_TIMEOUT)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=json_protocol(header_timeout)))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # noqa: BLE001 - reported to the caller below
            failure.append(error)

    thread = threading.Thread(target=run, name="shelfsight-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
            reason = repr(failure[0]) if failure else "startup failed or timed out (see the log above)"
            raise ServeError(f"uvicorn did not start on {host}:{bound}: {reason}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
