"""The HTTP face of :class:`~shelfsight.serve.service.VisualSearchService`: a FastAPI app and its web page.

Endpoints: ``POST /search``, ``POST /tag``, ``POST /items``, ``GET``/``DELETE /items/{id}``,
``GET /items/{id}/image``, ``GET /health``, the page at ``/`` and the OpenAPI schema at
``/openapi.json`` (``/docs`` renders it). Handlers are plain functions, so FastAPI runs them in its
thread pool and the service's locks decide what may overlap.

Uploads are bounded twice: a request body larger than the limit plus a small allowance for the
multipart envelope is refused as it streams in (413, before it is all received), and each image is
counted again as it is spooled to disk.
"""


import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shelfsight.serve.encoder import EncoderChoice
from shelfsight.serve.errors import (
    DuplicateItemError,
    ImageOutsideRootError,
    ImageUnavailableError,
    InvalidItemError,
    ItemNotFoundError,
    ServeError,
    TaggingUnavailableError,
    UnreadableImageError,
    UnsupportedImageError,
    UploadTooLargeError,
)
from shelfsight.serve.service import DEFAULT_MAX_UPLOAD_BYTES, VisualSearchService

STATIC = Path(__file__).parent / "static"
ENVELOPE_BYTES = 64 * 1024
"""Allowance for the multipart envelope and small form fields on top of the image size limit."""
DRAIN_BYTES = 64 * 1024 * 1024
"""How much of a refused body is still read (and discarded) so that the client receives the 413."""
STATUS: dict[type[ServeError], int] = {
    UploadTooLargeError: 413, UnsupportedImageError: 415, UnreadableImageError: 422, InvalidItemError: 422,
    ItemNotFoundError: 404, DuplicateItemError: 409, ImageOutsideRootError: 403, ImageUnavailableError: 404,
    TaggingUnavailableError: 404,
}
"""The HTTP status of each request the service refuses. A subclass finds its own entry first; any other
``ServeError`` raised in a request is not a client's mistake and is left to the server's 500."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ServeSettings(BaseModel):
    """How to serve an index folder."""

    model_config = ConfigDict(extra="forbid")
    index_dir: Path
    encoder: EncoderChoice = "auto"
    """``auto`` keeps the faster of PyTorch and ONNX Runtime (after checking that they agree)."""
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, gt=0)
    max_k: int = Field(default=100, ge=1, le=1000)
    token: str = ""
    """Token of a Milvus server, when the index lives on one."""


# ── response models (the OpenAPI schema) ──────────────────────────────────────────────────────────


class TagModel(BaseModel):
    label: str
    probability: float


class HitModel(BaseModel):
    id: str
    label: str
    score: float = Field(description="Cosine similarity to the query photo.")
    split: str
    image_url: str
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[HitModel]
    tags: list[TagModel] | None = Field(description="The head's top classes for the photo; null without a head.")
    encoder: str
    took_ms: float


class TagResponse(BaseModel):
    tags: list[TagModel]
    encoder: str


class ItemModel(BaseModel):
    id: str
    label: str
    split: str
    image_url: str
    metadata: dict[str, Any]


class HealthResponse(BaseModel):
    status: str
    items: int
    model: str
    vectors: str
    dim: int
    encoder: str
    encoder_report: dict[str, Any]
    tagging: bool
    classes: list[str]
    max_upload_bytes: int


# ── the body limit ────────────────────────────────────────────────────────────────────────────────


class _BodyTooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it through instead of calling it a 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes``: by Content-Length up front, else while they stream in.

    Before the 413 goes out, up to ``DRAIN_BYTES`` more of the refused body are read and discarded:
    a server that closes a socket with unread data resets the connection, and the client loses the
    answer. Bodies beyond that get the 413 and a closed connection.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int,
                 detail: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = detail or f"request body larger than {max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.max_bytes + DRAIN_BYTES:
                await _drain(receive)
            await self._refuse(send)
            return
        received, over, started, complete = 0, False, False, False

        async def limited() -> Message:
            nonlocal received, over, complete
            message = await receive()
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge(self.detail)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if over and not complete and message["type"] == "http.response.body" and not message.get("more_body"):
                await _drain(receive)  # the app answered 413: read the rest before the answer completes
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except _BodyTooLarge:
            if not started:
                if not complete:
                    await _drain(receive)
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read and discard the rest of a request body, at most ``DRAIN_BYTES``."""
    drained = 0
    while drained <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


# ── the app ───────────────────────────────────────────────────────────────────────────────────────


def create_app(settings: ServeSettings, service: VisualSearchService | None = None) -> FastAPI:
    """The service app. The model and the collection open at startup (or ``service``, already open, is
    used) and close at shutdown."""
    app = FastAPI(title="shelfsight visual search", lifespan=_lifespan(settings, service),
                  description="Upload a product photo, find similar catalogue items, get predicted tags.")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + ENVELOPE_BYTES,
                       detail=f"upload larger than the limit of {settings.max_upload_bytes:,} bytes")
    for kind in STATUS:
        app.add_exception_handler(kind, _refused)
    _add_search_routes(app, settings)
    _add_catalogue_routes(app)
    _add_service_routes(app)
    return app


def _lifespan(settings: ServeSettings,
              service: VisualSearchService | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the service at startup (unless one is given, already open) and close it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = service
        if opened is None:
            opened = await run_in_threadpool(lambda: VisualSearchService.open(
                settings.index_dir, encoder=settings.encoder, token=settings.token,
                max_upload_bytes=settings.max_upload_bytes))
        app.state.service = opened
        try:
            yield
        finally:
            await run_in_threadpool(opened.close)

    return lifespan


async def _refused(request: Request, error: Exception) -> JSONResponse:
    """A request the service refuses (a ``ServeError`` of ``STATUS``): its status, and the message as ``detail``."""
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
    return JSONResponse({"detail": str(error)}, status_code=status)


def _current(request: Request) -> VisualSearchService:
    return request.app.state.service  # type: ignore[no-any-return]


ImageFile = Annotated[UploadFile, File(description="A product photo (JPEG, PNG, WebP, ...).")]


def _add_search_routes(app: FastAPI, settings: ServeSettings) -> None:
    """``POST /search`` and ``POST /tag``."""

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    def search(request: Request, image: ImageFile,
               k: Annotated[int, Form(ge=1, le=settings.max_k, description="How many results.")] = 10,
               category: Annotated[str | None, Form(description="Only items with this label.")] = None,
               ) -> SearchResponse:
        """The catalogue items most similar to the photo, best first, with the head's tags when there is one."""
        svc = _current(request)
        with svc.receive(image.file) as path:
            outcome = svc.search(path, k=k, category=category or None)
        return SearchResponse(results=[HitModel(**vars(hit)) for hit in outcome.hits],
                              tags=[TagModel(**vars(t)) for t in outcome.tags] if outcome.tags is not None else None,
                              encoder=svc.encoder.name, took_ms=outcome.took_ms)

    @app.post("/tag", response_model=TagResponse, tags=["search"])
    def tag(request: Request, image: ImageFile,
            top: Annotated[int, Form(ge=1, le=1000, description="How many classes.")] = 5) -> TagResponse:
        """Class probabilities from the top-tuned head, most probable first."""
        svc = _current(request)
        svc.require_tagging()  # before reading the upload
        with svc.receive(image.file) as path:
            tags = svc.tag(path, top=top)
        return TagResponse(tags=[TagModel(**vars(t)) for t in tags], encoder=svc.encoder.name)


def _add_catalogue_routes(app: FastAPI) -> None:
    """``POST /items``, ``GET /items/{id}/image``, ``GET`` and ``DELETE /items/{id}``, in that order: the image
    route must come before ``/items/{id}``, whose path would also match it."""

    @app.post("/items", response_model=ItemModel, status_code=201, tags=["catalogue"])
    def add_item(request: Request, image: ImageFile, id: Annotated[str, Form(description="A new, unique item id.")],
                 label: Annotated[str, Form(description="Category or product label.")] = "",
                 metadata: Annotated[str | None, Form(description="A JSON object stored with the item.")] = None,
                 ) -> ItemModel:
        """Add a product photo to the index; it is searchable as soon as this returns."""
        extra = _json_object(metadata)
        svc = _current(request)
        with svc.receive(image.file) as path:
            item = svc.add_item(path, id, label, extra)
        return ItemModel(**vars(item))

    @app.get("/items/{item_id:path}/image", tags=["catalogue"], response_class=FileResponse)
    def item_image(request: Request, item_id: str) -> FileResponse:
        """The item's image, only if it is registered in the index and lies inside its catalogue folder."""
        path, media_type = _current(request).image_file(item_id)
        return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/items/{item_id:path}", response_model=ItemModel, tags=["catalogue"])
    def get_item(request: Request, item_id: str) -> ItemModel:
        return ItemModel(**vars(_current(request).item(item_id)))

    @app.delete("/items/{item_id:path}", tags=["catalogue"])
    def delete_item(request: Request, item_id: str) -> dict[str, str]:
        """Remove the item; it stops appearing in results at once."""
        _current(request).delete_item(item_id)
        return {"deleted": item_id}


def _add_service_routes(app: FastAPI) -> None:
    """``GET /health``, the web page at ``/`` and its static files."""

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    def health(request: Request) -> HealthResponse:
        return HealthResponse(**_current(request).health())

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidItemError(f"metadata is not valid JSON: {error.msg} at character {error.pos}") from None
    if not isinstance(value, dict):
        raise InvalidItemError("metadata must be a JSON object")
    return value
