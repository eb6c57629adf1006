"""The service's one error, ``ServeError``, and the kinds of request it refuses.

A bare ``ServeError`` says an index folder cannot be built or served as asked (the CLI prints it, like any
``ShelfsightError``). Its subclasses below are requests the service cannot honour; the HTTP app answers
each with its status code (``shelfsight.serve.app.STATUS``) and the message as ``{"detail": ...}``.
"""

from __future__ import annotations

from shelfsight.errors import ShelfsightError


class ServeError(ShelfsightError):
    """An index folder cannot be built or served as asked, or a request cannot be honoured; the message says
    what to do."""


class UploadTooLargeError(ServeError):
    """The upload is larger than the configured limit."""


class UnsupportedImageError(ServeError):
    """The upload is not an image format the decoder knows."""


class UnreadableImageError(ServeError):
    """The upload looks like an image but cannot be decoded (empty, truncated, corrupt, too many pixels)."""


class InvalidItemError(ServeError):
    """An item's id, label or metadata cannot be stored as given."""


class ItemNotFoundError(ServeError):
    """No item with this id in the index."""


class DuplicateItemError(ServeError):
    """An item with this id is already in the index."""


class ImageUnavailableError(ServeError):
    """The item exists but its image cannot be served (missing file, or outside its catalogue root)."""


class ImageOutsideRootError(ImageUnavailableError):
    """The registered image path resolves outside its catalogue root: refused, never served."""


class TaggingUnavailableError(ServeError):
    """The index was built without a top-tuned head, so there are no class probabilities."""


class UnauthorizedError(ServeError):
    """The request needs the service's API key and did not carry it (or carried another)."""


class ForbiddenError(ServeError):
    """The request is refused whoever sends it: a write from another web origin, or writes disabled."""


class IndexReadOnlyError(ServeError):
    """The collection cannot take items through the API (it was bulk-loaded without the attributes field)."""
