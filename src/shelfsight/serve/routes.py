"""The service's endpoints. Handlers are plain functions, so FastAPI runs them in its thread pool and the
service's stages and locks decide what overlaps and what is batched together.

Every text the client chooses (ids in paths, categories, labels, metadata) is checked by
:mod:`shelfsight.serve.validation` before it reaches the collection.
"""


import contextlib
import time
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from shelfsight.search.milvus import LABEL_MAX_LENGTH
from shelfsight.serve.errors import InvalidItemError, ServeError
from shelfsight.serve.match import MatchThreshold, describe
from shelfsight.serve.pipeline import Hit
from shelfsight.serve.schemas import (
    BatchEntry,
    BatchSearchResponse,
    HealthResponse,
    HitModel,
    ItemModel,
    SearchResponse,
    SimilarResponse,
    TagModel,
)
from shelfsight.serve.service import SearchOutcome, Tag, VisualSearchService
from shelfsight.serve.validation import check_label, check_text, parse_metadata, path_id, query_label

STATIC = Path(__file__).parent / "static"
MAX_BATCH_IMAGES = 32

ImageFile = Annotated[UploadFile, File(description="A product photo (JPEG, PNG, WebP, ...).")]
Category = Annotated[str | None, Form(description="Only items with this label.")]


def current(request: Request) -> VisualSearchService:
    return request.app.state.service  # type: ignore[no-any-return]


def matching(request: Request) -> MatchThreshold | None:
    """The app's "no close match" threshold (``serve/match.py``), None without one."""
    return request.app.state.match  # type: ignore[no-any-return]


def _hits(hits: list[Hit], match: MatchThreshold | None) -> list[HitModel]:
    return [HitModel(**vars(hit), match=match.is_match(hit.score) if match else None) for hit in hits]


def tag_models(tags: list[Tag] | None, match: MatchThreshold | None) -> list[TagModel] | None:
    if tags is None:
        return None
    return [TagModel(**vars(t), match=match.tag_match(t.probability) if match else None) for t in tags]


def _item_id(request: Request, item_id: str) -> str:
    return path_id(item_id, request.scope.get("raw_path"))


def add_search_routes(app: FastAPI, max_k: int, status_of: dict[type[ServeError], int]) -> None:
    """``POST /search`` and ``POST /search/batch`` (``POST /tag``: :mod:`shelfsight.serve.tagging`)."""
    K = Annotated[int, Form(ge=1, le=max_k, description="How many results.")]

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    def search(request: Request, image: ImageFile, k: K = 10, category: Category = None) -> SearchResponse:
        """The catalogue items most similar to the photo, best first, with the head's tags when there is one."""
        svc = current(request)
        wanted = check_label(category, "category")
        with svc.receive(image.file) as path:
            outcome = svc.search(path, k=k, category=wanted or None)
        match = matching(request)
        return SearchResponse(results=_hits(outcome.hits, match), tags=tag_models(outcome.tags, match),
                              encoder=svc.encoder.name, took_ms=outcome.took_ms)

    @app.post("/search/batch", response_model=BatchSearchResponse, tags=["search"])
    def search_batch(request: Request, images: Annotated[list[UploadFile], File(description="Photos, in order.")],
                     k: K = 10, category: Category = None) -> BatchSearchResponse:
        """Several photos in one request (one encoder call, one Milvus search); a photo that cannot be used gets
        its own error entry, the others their results, in upload order."""
        svc = current(request)
        wanted = check_label(category, "category")
        if len(images) > MAX_BATCH_IMAGES:
            raise InvalidItemError(f"at most {MAX_BATCH_IMAGES} images per batch, got {len(images)}")
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            paths = [stack.enter_context(svc.receive(image.file)) for image in images]
            outcomes = svc.search_many(paths, k=k, category=wanted or None)
        entries = [_entry(outcome, status_of, matching(request)) for outcome in outcomes]
        return BatchSearchResponse(entries=entries, encoder=svc.encoder.name,
                                   took_ms=(time.perf_counter() - started) * 1000.0)


def _entry(outcome: SearchOutcome | ServeError, status_of: dict[type[ServeError], int],
           match: MatchThreshold | None) -> BatchEntry:
    if isinstance(outcome, ServeError):
        status = next((code for kind, code in status_of.items() if isinstance(outcome, kind)), 422)
        return BatchEntry(status=status, detail=str(outcome))
    return BatchEntry(status=200, results=_hits(outcome.hits, match), tags=tag_models(outcome.tags, match))


def add_catalogue_routes(app: FastAPI, max_k: int) -> None:
    """``POST /items``, then ``GET /items/{id}/image`` and ``/similar`` before ``GET``/``DELETE /items/{id}``,
    whose path would also match them."""

    @app.post("/items", response_model=ItemModel, status_code=201, tags=["catalogue"])
    def add_item(request: Request, image: ImageFile, id: Annotated[str, Form(description="A new, unique item id.")],
                 label: Annotated[str, Form(description="Category or product label.")] = "",
                 metadata: Annotated[str | None, Form(description="A JSON object stored with the item.")] = None,
                 ) -> ItemModel:
        """Add a product photo to the index (needs the API key when one is set); searchable when this returns."""
        check_text(label, "label", max_bytes=LABEL_MAX_LENGTH)
        extra = parse_metadata(metadata)
        svc = current(request)
        with svc.receive(image.file) as path:
            item = svc.add_item(path, id, label, extra)
        return ItemModel(**vars(item))

    @app.get("/items/{item_id:path}/image", tags=["catalogue"], response_class=FileResponse)
    def item_image(request: Request, item_id: str) -> FileResponse:
        """The item's image, only if it is registered in the index and lies inside its catalogue folder."""
        path, media_type = current(request).image_file(_item_id(request, item_id))
        return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/items/{item_id:path}/similar", response_model=SimilarResponse, tags=["catalogue"])
    def similar(request: Request, item_id: str,
                k: Annotated[int, Query(ge=1, le=max_k, description="How many results.")] = 10,
                category: Annotated[str | None, Query(description="Only items with this label.")] = None,
                ) -> SimilarResponse:
        """The items most similar to a catalogue item, from its stored vector (no re-encoding), itself left out."""
        started = time.perf_counter()
        wanted = query_label(category, "category", request.scope.get("query_string"))
        hits = current(request).similar(_item_id(request, item_id), k=k, category=wanted or None)
        return SimilarResponse(id=item_id, results=_hits(hits, None), took_ms=(time.perf_counter() - started) * 1000.0)

    @app.get("/items/{item_id:path}", response_model=ItemModel, tags=["catalogue"])
    def get_item(request: Request, item_id: str) -> ItemModel:
        return ItemModel(**vars(current(request).item(_item_id(request, item_id))))

    @app.delete("/items/{item_id:path}", tags=["catalogue"])
    def delete_item(request: Request, item_id: str) -> dict[str, str]:
        """Remove the item (needs the API key when one is set); it stops appearing in results at once."""
        current(request).delete_item(_item_id(request, item_id))
        return {"deleted": item_id}


def add_service_routes(app: FastAPI) -> None:
    """``GET /health``, the web page at ``/`` and its static files."""

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    def health(request: Request) -> HealthResponse:
        return HealthResponse(**current(request).health(), access=request.app.state.access,
                              match=describe(matching(request), request.app.state.match_where))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
