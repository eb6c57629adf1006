"""Errors that reach the user: each says what went wrong and what to do about it."""

from __future__ import annotations


class ShelfsightError(Exception):
    """Base class: the CLI prints these as a message, without a stack trace."""


class DatasetNotFoundError(ShelfsightError):
    """A dataset is not where shelfsight looked for it."""


class CatalogError(ShelfsightError):
    """A user catalogue (folder or manifest) cannot be read as given."""


class UnknownModelError(ShelfsightError):
    """A backbone name is neither registered nor a valid library-prefixed name."""


class ModelUnavailableError(ShelfsightError):
    """A backbone's weights cannot be obtained (offline, missing file, bad checkpoint)."""


class ImageDecodeError(ShelfsightError):
    """One image cannot be decoded; extraction skips it and records the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
