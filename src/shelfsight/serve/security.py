"""Who may write, who may read, and from where: the API key, the Origin check and the binding rules.

- **Writes** (``POST /items``, ``DELETE /items/...``) need the API key (``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY``) whenever one is configured. Without a key the service may only listen on
  loopback (:func:`check_binding` refuses to start otherwise, unless writes are disabled with
  ``read_only``): then only processes of this machine can write.
- **Origin**: a write that carries an ``Origin`` other than the service's own (or a configured CORS
  origin), or ``Sec-Fetch-Site: cross-site``, is refused (403) whatever its key: a form on another web
  page cannot add or delete items through the user's browser.
- **Reads** (search, tag, items, images, similar) are open by default, or need the same key with
  ``read_access="token"``. The page, its static files and ``/health`` stay open.
- **Host**: Starlette's ``TrustedHostMiddleware`` with the loopback names by default, so a DNS-rebinding
  page (its own name resolving to 127.0.0.1) is refused; other names are added with ``allowed_hosts``.

Checks run in an ASGI middleware, before the body is read: a refused upload costs nothing. The same gate
refuses URL paths with control characters or percent-encoded bytes that are not UTF-8 (422).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Literal

from shelfsight.serve.errors import InvalidItemError, ServeError
from shelfsight.serve.guards import ASGIApp, Receive, Scope, Send, refuse
from shelfsight.serve.validation import path_id

ReadAccess = Literal["open", "token"]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = ("/health", "/static/", "/openapi.json")
API_KEY_ENV = "SHELFSIGHT_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, *, api_key: str, read_only: bool, allowed_hosts: Sequence[str]) -> None:
    """Refuse to listen beyond loopback with writes open to anyone, or with a Host list that would refuse
    every client."""
    if is_loopback(host):
        return
    if not api_key and not read_only:
        raise ServeError(f"refusing to listen on {host} with writes open to anyone: pass --api-key KEY (or set "
                         f"${API_KEY_ENV}) so that POST/DELETE /items need it, or --read-only to disable writes")
    if all(is_loopback(name) for name in allowed_hosts):
        raise ServeError(f"listening on {host}, the service would refuse every client whose Host is not a loopback "
                         "name: pass --allowed-host NAME for each name clients use (--allowed-host '*' accepts any "
                         "and turns off the DNS-rebinding protection)")


class AccessGuard:
    """Key, Origin and read-only checks per request, answered as JSON 401/403 before the body is read."""

    def __init__(self, app: ASGIApp, *, api_key: str = "", read_access: ReadAccess = "open", read_only: bool = False,
                 origins: Sequence[str] = ()) -> None:
        self.app = app
        self.api_key = api_key.encode()
        self.read_access = read_access
        self.read_only = read_only
        self.origins = frozenset(origin.rstrip("/") for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, detail = refusal
                extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
                await refuse(receive, send, status, detail, headers=extra)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, detail) when the request must be refused, else None."""
        path, method = str(scope.get("path", "")), str(scope.get("method", "GET"))
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        try:  # before routing: a path the router cannot match (a newline) would otherwise be a bare 404
            path_id(path, scope.get("raw_path"))
        except InvalidItemError as error:
            return 422, str(error).replace("the item id in the URL", "the URL path")
        if method in WRITE_METHODS and path.startswith("/items"):
            return self._write_refusal(scope, headers)
        reading_data = path != "/" and not path.startswith(OPEN_PATHS) and method != "OPTIONS"
        if self.read_access == "token" and reading_data and not self._has_key(headers):
            return 401, "this service needs its API key for reads: send Authorization: Bearer KEY"
        return None

    def _write_refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        if self.read_only:
            return 403, "this service is read-only (started with --read-only): items cannot be added or deleted"
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").rstrip("/") not in self._own_origins(scope, headers):
            return 403, (f"writes from another web origin ({origin.decode('latin-1')}) are refused; "
                         "add it with --cors-origin if it is yours")
        if headers.get(b"sec-fetch-site") == b"cross-site":
            return 403, "cross-site writes are refused"
        if self.api_key and not self._has_key(headers):
            return 401, "adding or deleting items needs the API key: send Authorization: Bearer KEY (or X-API-Key)"
        return None

    def _own_origins(self, scope: Scope, headers: dict[bytes, bytes]) -> frozenset[str]:
        host = headers.get(b"host", b"").decode("latin-1")
        scheme = str(scope.get("scheme", "http"))
        return self.origins | {f"{scheme}://{host}"}

    def _has_key(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key:
            return True
        given = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        return hmac.compare_digest(given, self.api_key)
