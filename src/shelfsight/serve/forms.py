"""Form fields as strict UTF-8: Starlette re-reads a field that is not UTF-8 as Latin-1, silently.

:class:`StrictFormRoute` is a FastAPI route class (the documented way to customise the request a
route sees) whose requests parse multipart bodies with :class:`StrictMultiPartParser`: a text field
whose bytes are not UTF-8 is a 422 naming the field, before the handler runs. Starlette's own refusals of a form
(a field over 1 MB, too many parts, a malformed body) are 413 or 422 (:func:`form_refusal`), not its bare 400.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import parse_options_header


class _NotUtf8(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it through as a 422."""

    def __init__(self, field: str) -> None:
        super().__init__(422, f"form field {field!r} is not valid UTF-8; send UTF-8 text")


class StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, refusing text fields that are not UTF-8 instead of reading them as Latin-1."""

    def on_part_end(self) -> None:
        # Starlette keeps the part being parsed in ``_current_part`` (the raw bytes of a text field in ``data``);
        # tests/test_serve_hardening.py sends a Latin-1 field, so a Starlette that renames it fails a test.
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise _NotUtf8(part.field_name) from None
        super().on_part_end()


class StrictFormRequest(Request):
    """A request whose multipart form is parsed by :class:`StrictMultiPartParser`."""

    def form(self, **limits: Any) -> Any:  # type: ignore[override]
        return self._strict_form(**limits)

    async def _strict_form(self, **limits: Any) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("Content-Type", ""))
        if content_type != b"multipart/form-data":
            return await super().form(**limits)
        parser = StrictMultiPartParser(self.headers, self.stream(), **limits)
        try:
            return await parser.parse()
        except MultiPartException as error:
            raise form_refusal(error.message) from None


def form_refusal(message: str) -> HTTPException:
    """Starlette's multipart refusals in the documented statuses: a field over its 1 MB part limit or too many
    parts is 413 (too large, like the upload limit), any other malformed form 422; never a bare 400."""
    if "maximum size" in message or message.startswith("Too many"):
        return HTTPException(413, f"the form is too large: {message} Send ids, labels and metadata of a few KB, and "
                                  "at most the photos the endpoint takes", headers={"Connection": "close"})
    return HTTPException(422, f"the multipart form cannot be read: {message}")


class StrictFormRoute(APIRoute):
    """An APIRoute whose handler sees a :class:`StrictFormRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictFormRequest(request.scope, request.receive))

        return strict
