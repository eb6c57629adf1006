"""Thumbnails of catalogue photos as data: URIs, so a page that shows them (the report's retrieval grids, the
duplicates page) opens offline and alone.

A path that no longer decodes (moved dataset, cleared cache) becomes a visible placeholder
that says so, rather than a broken image or a failed page.
"""

from __future__ import annotations

import base64
import io
from html import escape

from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError

THUMBNAIL_SIZE = 80
JPEG_QUALITY = 72


def placeholder_uri(reason: str, size: int = THUMBNAIL_SIZE) -> str:
    """A grey square naming why the image is absent; an SVG, so it decodes like any image."""
    text = escape(reason[:40])
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">'
           f'<rect width="100%" height="100%" fill="#e5e5e5"/>'
           f'<text x="50%" y="45%" font-size="10" text-anchor="middle" fill="#555">image</text>'
           f'<text x="50%" y="62%" font-size="9" text-anchor="middle" fill="#555">{text}</text></svg>')
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


class Thumbnails:
    """Downscaled JPEG data URIs, memoised by path: an image shown in many grids is decoded once."""

    def __init__(self, size: int = THUMBNAIL_SIZE) -> None:
        self.size = size
        self._uris: dict[str, str] = {}
        self.missing: list[str] = []

    def uri(self, path: str) -> str:
        if path not in self._uris:
            self._uris[path] = self._make(path)
        return self._uris[path]

    def _make(self, path: str) -> str:
        if not path:
            self.missing.append(path)
            return placeholder_uri("no path", self.size)
        try:
            image = decode_image(path, draft_size=self.size)
        except ImageDecodeError as exc:
            self.missing.append(path)
            return placeholder_uri(exc.reason, self.size)
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
