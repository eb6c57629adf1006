"""ASGI guards around the app: body size and read time, and every error answer as JSON.

- :class:`BodyGuard` refuses a body over the limit: by its declared Content-Length at once, before a
  byte of it is read (413), else as it streams in; and a body not complete within ``timeout_s`` (408),
  so a client that declares megabytes and sends seven bytes gets an answer instead of holding a worker.
- :func:`refuse` answers before the body is read and then *lingers*: the answer goes out at once, and
  for at most ``LINGER_SECONDS`` (and ``DRAIN_BYTES``) what the client still sends is read and dropped
  before the connection closes. Closing a socket with unread data resets the connection, and the
  client would lose the answer it was sent.
- :class:`JsonErrors` turns an error answer that is not JSON (Starlette's host check, CORS refusals,
  static files) into ``{"detail": ...}`` with the same status: the API has one error format; and every 5xx
  carries ``Connection: close`` (uvicorn closes the connection after an error, and the client must know).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 1.0
_CLOSE = (b"connection", b"close")


class _BodyRefused(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it through instead of calling it a 400."""


async def refuse(receive: Receive, send: Send, status: int, detail: str, *, linger: bool = True,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``status`` with ``{"detail": detail}`` now, then (``linger``) drop what the client still sends
    for a moment, and close the connection."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            _CLOSE, *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": linger})
    if linger:
        await drain(receive, LINGER_SECONDS)
        await send({"type": "http.response.body", "body": b""})


async def drain(receive: Receive, seconds: float) -> None:
    """Read and discard the rest of a request body: at most ``DRAIN_BYTES``, for at most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline, drained = loop.time() + seconds, 0
    while drained <= DRAIN_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyGuard:
    """Refuse bodies over ``max_bytes`` (413) and bodies slower than ``timeout_s`` (408)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, detail: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.detail = detail or f"request body larger than {max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.strip().isdigit():
            await refuse(receive, send, 400, "Content-Length is not a number", linger=False)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await refuse(receive, send, 413, self.detail)  # before reading a byte of the body
            return
        await _Guarded(self, receive, send).run(scope)


class _Guarded:
    """One request under a :class:`BodyGuard`: counts and times its body as the app reads it."""

    def __init__(self, guard: BodyGuard, receive: Receive, send: Send) -> None:
        self.guard, self.receive, self.send = guard, receive, send
        self.deadline = asyncio.get_running_loop().time() + guard.timeout_s
        self.received, self.refused, self.started, self.complete = 0, 0, False, False

    async def run(self, scope: Scope) -> None:
        try:
            await self.guard.app(scope, self.limited, self.guarded)
        except _BodyRefused as error:
            if self.started:
                raise
            await refuse(self.receive, self.send, error.status_code, str(error.detail),
                         linger=error.status_code == 413 and not self.complete)

    async def limited(self) -> Message:
        if self.complete:
            return await self.receive()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, remaining))
        except TimeoutError:
            self.refused = 408
            raise _BodyRefused(408, f"the request body did not arrive within {self.guard.timeout_s:g} s") from None
        self.complete = message["type"] != "http.request" or not message.get("more_body", False)
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.max_bytes:
                self.refused = 413
                raise _BodyRefused(413, self.guard.detail)
        return message

    async def guarded(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.refused:  # the app answered the refusal itself: close, the body was not all read
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        elif (self.refused == 413 and not self.complete and message["type"] == "http.response.body"
              and not message.get("more_body")):
            await drain(self.receive, LINGER_SECONDS)
        await self.send(message)


class JsonErrors:
    """Rewrite error answers (status >= 400) that are not JSON as ``{"detail": text}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 500:
                message = _closing(message)  # after a 5xx the connection is closed: say so
            if message["type"] == "http.response.start" and message["status"] >= 400 and not _is_json(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_json(send, held, b"".join(parts))

        await self.app(scope, receive, rewrite)


def _closing(start: Message) -> Message:
    headers = list(start.get("headers") or [])
    if not any(key.lower() == b"connection" for key, _ in headers):
        headers.append(_CLOSE)
    return {**start, "headers": headers}


def _is_json(start: Message) -> bool:
    content_type = dict(start.get("headers") or []).get(b"content-type", b"")
    return content_type.startswith(b"application/json") or content_type.startswith(b"application/problem+json")


async def _send_json(send: Send, start: Message, text: bytes) -> None:
    status = int(start["status"])
    detail = text.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
    body = json.dumps({"detail": detail}).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
