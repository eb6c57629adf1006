"""The service's answers as pydantic models: what ``/openapi.json`` documents and what handlers return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TagModel(BaseModel):
    label: str
    probability: float
    match: bool | None = Field(default=None, description="Whether the probability reaches the service's tagging "
                               "threshold (a close match); null without one.")


class HitModel(BaseModel):
    id: str
    label: str
    score: float = Field(description="Cosine similarity to the query photo, in [-1, 1] (an 8-bit index's scores come "
                                     "from its codes and are clipped to that range).")
    split: str
    image_url: str
    metadata: dict[str, Any]
    match: bool | None = Field(default=None, description="Whether the score reaches the service's match threshold "
                               "(`shelfsight index --calibrate`): false means no close match; null without one.")


class SearchResponse(BaseModel):
    results: list[HitModel]
    tags: list[TagModel] | None = Field(description="The head's top classes for the photo; null without a head.")
    encoder: str
    took_ms: float


class BatchEntry(BaseModel):
    """One photo of a batch: its results, or its own error (the other photos are answered all the same)."""

    status: int = Field(description="200, or the status this photo alone would have got (413, 415, 422).")
    detail: str | None = None
    results: list[HitModel] | None = None
    tags: list[TagModel] | None = None


class BatchSearchResponse(BaseModel):
    entries: list[BatchEntry] = Field(description="One entry per uploaded photo, in upload order.")
    encoder: str
    took_ms: float


class SimilarResponse(BaseModel):
    id: str
    results: list[HitModel]
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
    writable: bool
    batching: dict[str, Any]
    decode: dict[str, Any]
    access: dict[str, Any]
    compression: dict[str, Any] | None = None
    """How the index stores vectors (``shelfsight index --compress``); None for float vectors."""
    match: dict[str, Any] | None = None
    """The "no close match" threshold, its provenance and where it was read (``serve/match.py``); None without one."""
