"""uvicorn's HTTP/1.1 protocol (h11) with the service's contract: JSON errors and a deadline for the headers.

Two things happen before a request reaches the app, in the HTTP layer, and uvicorn answers them its own way:

- **Malformed HTTP** (a Content-Length that is not a number, a NUL in a header, two Host headers, a request
  line or headers longer than h11's 16 KiB buffer): uvicorn answers a plain-text 400. Here the answer is
  ``{"detail": ...}`` with h11's own status (400, or 431 when the request line or headers are too long) and
  ``Connection: close``, like every other error of the service.
- **Headers that never finish**: uvicorn's keep-alive timer stops at the first byte of a request and the body
  timeout (``guards.BodyGuard``) starts only once the headers are in, so a client sending one header byte a
  minute held a connection forever. Here the headers must be complete within ``header_timeout`` seconds of
  the connection (or of the previous answer): else a JSON 408 and the connection is closed (a connection that
  sent nothing at all is closed without an answer, as nginx does).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shelfsight.serve.guards import DRAIN_BYTES, LINGER_SECONDS

DEFAULT_HEADER_TIMEOUT = 10.0


def raw_json_response(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 answer ``{"detail": ...}`` that closes the connection, as bytes for the transport."""
    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class JsonH11Protocol(H11Protocol):
    """H11Protocol answering protocol errors as JSON and timing out unfinished headers."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocol_error: h11.RemoteProtocolError | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_waiting = False
        self._discarded: int | None = None
        parse = self.conn.next_event

        def next_event() -> Any:  # keeps h11's reason, which uvicorn's handler drops
            try:
                return parse()
            except h11.RemoteProtocolError as error:
                self._protocol_error = error
                raise

        self.conn.next_event = next_event  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarded is not None:  # answered and closing: drop what the client still sends
            self._discarded += len(data)
            if self._discarded > DRAIN_BYTES:
                self.transport.close()
            return
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting:
            self._bytes_waiting = True
            self._arm_header_timer()
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers arrived: the body has its own timeout
            self._disarm_header_timer()
            self._bytes_waiting = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._bytes_waiting = False
            self._arm_header_timer()

    def send_400_response(self, msg: str) -> None:
        error = self._protocol_error
        status = error.error_status_hint if error is not None and error.error_status_hint >= 400 else 400
        reason = str(error) if error is not None and str(error) else msg
        self._close_with(status, f"malformed HTTP request ({reason}); send a well-formed HTTP/1.1 request")

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        if not self._bytes_waiting:  # an idle connection: close it quietly (keep-alive has its own timer)
            if self.cycle is None:
                self.transport.close()
            return
        self._close_with(408, f"the request headers did not arrive within {self.header_timeout:g} s")

    def _close_with(self, status: int, detail: str) -> None:
        """Answer, then read and drop what the client still sends for a moment before closing: closing a socket
        with unread data resets it, and the client would lose the answer (as ``guards.refuse`` lingers)."""
        self._disarm_header_timer()
        self.transport.write(raw_json_response(status, detail))
        self._discarded = 0
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def eof_received(self) -> None:
        if self._discarded is not None:
            self.transport.close()


def json_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> type[JsonH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this header deadline (seconds)."""
    return type("ShelfsightH11Protocol", (JsonH11Protocol,), {"header_timeout": float(header_timeout)})
