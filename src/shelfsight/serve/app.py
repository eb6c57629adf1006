"""The HTTP face of :class:`~shelfsight.serve.service.VisualSearchService`: a FastAPI app and its web page.

Endpoints (``routes.py``): ``POST /search``, ``POST /search/batch``, ``POST /tag``, ``POST /items``,
``GET``/``DELETE /items/{id}``, ``GET /items/{id}/image``, ``GET /items/{id}/similar``, ``GET /health``,
the page at ``/`` and the OpenAPI schema at ``/openapi.json``. ``/docs`` and ``/redoc`` are off: FastAPI's
viewers load their scripts from a CDN, which an offline deployment cannot reach.

Around the routes, outermost first: every non-JSON error answer rewritten as JSON (``guards.JsonErrors``),
the Host allow-list (Starlette's ``TrustedHostMiddleware``), CORS (only when origins are configured), the
key/Origin checks (``security.AccessGuard``), and the body's size and read-time limits
(``guards.BodyGuard``); then an exception handler for each refusal and a catch-all, so no request ever
gets a plain-text 500.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from shelfsight.serve.decode import DEFAULT_DECODE_CONCURRENCY, DEFAULT_DECODE_PIXELS
from shelfsight.serve.encoder import EncoderChoice
from shelfsight.serve.errors import (
    DuplicateItemError,
    ForbiddenError,
    ImageOutsideRootError,
    ImageUnavailableError,
    IndexReadOnlyError,
    InvalidItemError,
    ItemNotFoundError,
    ServeError,
    TaggingUnavailableError,
    UnauthorizedError,
    UnreadableImageError,
    UnsupportedImageError,
    UploadTooLargeError,
)
from shelfsight.serve.forms import StrictFormRoute
from shelfsight.serve.guards import BodyGuard, JsonErrors
from shelfsight.serve.http import DEFAULT_HEADER_TIMEOUT
from shelfsight.serve.manifest import IndexLayout
from shelfsight.serve.match import served_match
from shelfsight.serve.opening import DEFAULT_MAX_UPLOAD_BYTES, ServiceOptions
from shelfsight.serve.routes import add_catalogue_routes, add_search_routes, add_service_routes
from shelfsight.serve.security import LOOPBACK_HOSTS, AccessGuard, ReadAccess
from shelfsight.serve.service import VisualSearchService
from shelfsight.serve.tagging import add_tag_route
from shelfsight.serve.text import TextSide, add_text_routes

ENVELOPE_BYTES = 64 * 1024
"""Allowance for the multipart envelope and small form fields on top of the image size limit."""
STATUS: dict[type[ServeError], int] = {
    UploadTooLargeError: 413, UnsupportedImageError: 415, UnreadableImageError: 422, InvalidItemError: 422,
    ItemNotFoundError: 404, DuplicateItemError: 409, ImageOutsideRootError: 403, ImageUnavailableError: 404,
    TaggingUnavailableError: 404, UnauthorizedError: 401, ForbiddenError: 403, IndexReadOnlyError: 409,
}
"""The HTTP status of each request the service refuses. A subclass finds its own entry first; any other
``ServeError`` raised in a request is not a client's mistake: the catch-all answers it with a JSON 500."""
log = logging.getLogger("shelfsight.serve")


class ServeSettings(BaseModel):
    """How to serve an index folder: the model path, bounds per request, batching and access."""

    model_config = ConfigDict(extra="forbid")
    index_dir: Path
    encoder: EncoderChoice = "auto"
    """``auto`` keeps the faster of PyTorch and ONNX Runtime (after checking that they agree)."""
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, gt=0)
    max_k: int = Field(default=100, ge=1, le=1000)
    token: str = Field(default="", repr=False)
    """Token of a Milvus server, when the index lives on one."""
    uri: str | None = None
    """A Milvus server URI overriding the one recorded in the index folder."""
    max_decode_pixels: int = Field(default=DEFAULT_DECODE_PIXELS, gt=0)
    decode_concurrency: int = Field(default=DEFAULT_DECODE_CONCURRENCY, ge=1)
    max_batch: int = Field(default=16, ge=1, le=256)
    """Photos per encoder call and lookups per Milvus search; 1 turns micro-batching off."""
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    batch_in_flight: int = Field(default=4, ge=1, le=32)
    """Most photos of one ``/search/batch`` queued at once per stage: batches share encoder calls with singles."""
    body_timeout_s: float = Field(default=60.0, gt=0)
    """A request body not received within this many seconds is refused (408)."""
    header_timeout_s: float = Field(default=DEFAULT_HEADER_TIMEOUT, gt=0)
    """Request headers not complete within this many seconds of the connection (or of the previous answer) are
    refused (408) and the connection closed (``serve.http``)."""
    api_key: str = Field(default="", repr=False)
    """Needed by writes (and reads with ``read_access="token"``) as ``Authorization: Bearer KEY``."""
    read_access: ReadAccess = "open"
    read_only: bool = False
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_HOSTS))
    cors_origins: list[str] = Field(default_factory=list)
    match_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    """A top-1 cosine below which the top result is "no close match", overriding the index folder's ``match.json``."""
    tag_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """A head probability below which a tag is "no close match"; either threshold given replaces ``match.json``."""
    allow_images_from: list[Path] = Field(default_factory=list)
    """Folders whose images are served also for items indexed from outside their catalogue's folder (the
    path-safety checks still hold: only files resolving inside one of these)."""

    @model_validator(mode="after")
    def _token_reads_need_a_key(self) -> "ServeSettings":
        if self.read_access == "token" and not self.api_key:
            raise ValueError("read_access='token' needs an api_key (--api-key or $SHELFSIGHT_API_KEY)")
        return self

    def options(self) -> ServiceOptions:
        return ServiceOptions(max_upload_bytes=self.max_upload_bytes, max_decode_pixels=self.max_decode_pixels,
                              decode_concurrency=self.decode_concurrency, max_batch=self.max_batch,
                              max_wait_ms=self.max_wait_ms, batch_in_flight=self.batch_in_flight)

    def access(self) -> dict[str, Any]:
        """How access is configured, for ``/health`` (never the key itself)."""
        writes = "disabled" if self.read_only else "api key" if self.api_key else "loopback, no key"
        outside = (f"served from {len(self.allow_images_from)} allowed folder(s)" if self.allow_images_from else
                   "not served: start `shelfsight serve --allow-images-from FOLDER` to serve them")
        return {"writes": writes, "reads": self.read_access, "allowed_hosts": self.allowed_hosts,
                "cors_origins": self.cors_origins, "images_outside_catalogue_folders": outside}


def open_service(settings: ServeSettings) -> VisualSearchService:
    return VisualSearchService.open(settings.index_dir, encoder=settings.encoder, token=settings.token,
                                    uri=settings.uri, options=settings.options(),
                                    images_from=settings.allow_images_from)


def create_app(settings: ServeSettings, service: VisualSearchService | None = None) -> FastAPI:
    """The service app. The model and the collection open at startup and close at shutdown; a ``service``
    given already open is used as it is and left open (whoever opened it closes it)."""
    app = FastAPI(title="shelfsight visual search", lifespan=_lifespan(settings, service), docs_url=None,
                  redoc_url=None, description="Upload a product photo, find similar catalogue items, get predicted "
                  "tags. Interactive docs are off (they would load from a CDN); this schema is complete.")
    app.router.route_class = StrictFormRoute
    app.state.access = settings.access()
    app.state.header_timeout_s = settings.header_timeout_s
    app.state.match, app.state.match_where = served_match(IndexLayout.at(settings.index_dir),
                                                          settings.match_threshold, settings.tag_threshold)
    app.add_middleware(BodyGuard, max_bytes=settings.max_upload_bytes + ENVELOPE_BYTES,
                       timeout_s=settings.body_timeout_s,
                       detail=f"upload larger than the limit of {settings.max_upload_bytes:,} bytes")
    app.add_middleware(AccessGuard, api_key=settings.api_key, read_access=settings.read_access,
                       read_only=settings.read_only, origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(settings.allowed_hosts), www_redirect=False)
    app.add_middleware(JsonErrors)
    for kind in STATUS:
        app.add_exception_handler(kind, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _internal)
    add_search_routes(app, settings.max_k, STATUS)
    add_catalogue_routes(app, settings.max_k)
    add_service_routes(app)
    text_side = TextSide()  # the index's text tower, loaded on first use
    add_tag_route(app, text_side)  # POST /tag: the head's tags, or zero-shot ones with ?zero_shot=
    add_text_routes(app, settings.max_k, text_side)  # GET /text, POST /search/text (text-image models)
    return app


def host_patterns(names: list[str]) -> list[str]:
    """The allow-list as Starlette compares it: a Host header keeps the brackets of an IPv6 literal
    (``Host: [::1]:8000``), so ``::1`` is also listed as ``[::1]``."""
    bracketed = [f"[{name}]" for name in names if ":" in name and not name.startswith("[")]
    return [*names, *bracketed]


def _lifespan(settings: ServeSettings,
              service: VisualSearchService | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the service at startup and close it at shutdown (unless one is given, already open)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.service = service
            yield
            return
        opened = await run_in_threadpool(open_service, settings)
        app.state.service = opened
        try:
            yield
        finally:
            await run_in_threadpool(opened.close)

    return lifespan


async def _refused(request: Request, error: Exception) -> JSONResponse:
    """A request the service refuses (a ``ServeError`` of ``STATUS``): its status, and the message as ``detail``."""
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), None)
    if status is None:
        return await _internal(request, error)
    return JSONResponse({"detail": str(error)}, status_code=status)


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    """A request whose fields do not validate: 422 with one readable line per field."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    lines = [f"{'.'.join(str(p) for p in problem.get('loc', ()) if p != 'body')}: {problem.get('msg', '')}"
             for problem in problems]
    return JSONResponse({"detail": "; ".join(lines) or "invalid request"}, status_code=422)


async def _internal(request: Request, error: Exception) -> JSONResponse:
    """Anything unforeseen: logged with its traceback, answered as JSON (never a plain-text 500)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": f"internal error ({type(error).__name__}); the service logged it"},
                        status_code=500, headers={"Connection": "close"})  # uvicorn closes after an app error
