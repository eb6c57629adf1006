"""Images of the report as data: URIs, so the page opens offline and alone: charts (``png_uri``) and the
photo thumbnails of the retrieval grids (``Thumbnails``, shared with the duplicates page in
``shelfsight.catalog.thumbnails``).
"""

from __future__ import annotations

import base64

from shelfsight.catalog.thumbnails import Thumbnails

__all__ = ["Thumbnails", "png_uri"]


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
