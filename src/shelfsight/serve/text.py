"""Words in the service: text-to-image search and zero-shot tagging, when the index's model has a text tower.

``GET /text`` says whether this index can take text (the page shows its text box only then);
``POST /search/text`` (form fields ``text``, ``k``, ``category``) finds the photos nearest the text's vector;
``POST /tag?zero_shot=LABEL,LABEL`` (:mod:`shelfsight.serve.tagging`) tags an uploaded photo with the labels
given in the query, each label's vector the prompt ensemble of ``backbones.prompts`` (probabilities: softmax
of the model's own logit scale times the cosine, over the labels given). Without a text tower, or on an index
of top-tuned vectors (a space no text tower was trained for), these answer 404 with the reason; empty or over-long
text is a 422.

The text tower is loaded on first use, from the index's manifest, with the same weights check as the image
side: a second copy of the model in memory, the price of leaving the image service untouched.
"""

import threading
import time
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Form, Request
from pydantic import BaseModel

from shelfsight.backbones import TextEncoder, get_spec, load_backbone
from shelfsight.backbones.prompts import DEFAULT_TEMPLATES, class_prompts, class_vectors
from shelfsight.serve.errors import InvalidItemError, TaggingUnavailableError
from shelfsight.serve.manifest import preprocess_overrides
from shelfsight.serve.opening import check_weights
from shelfsight.serve.pipeline import Lookup
from shelfsight.serve.routes import current
from shelfsight.serve.schemas import HitModel, SearchResponse
from shelfsight.serve.service import VisualSearchService
from shelfsight.serve.validation import check_label, check_text

MAX_TEXT_BYTES = 1000
"""A query's longest UTF-8 text; text towers read 64-77 tokens, so more would only cost time."""
MAX_LABELS = 100
MAX_LABEL_BYTES = 200
ZERO_SHOT = "zero_shot"
TEXT_ENCODER = "torch"
"""The text tower runs in PyTorch (the ONNX export covers the image tower only)."""


class TextUnavailableError(TaggingUnavailableError):
    """This index cannot take text: its model has no text tower, or it stores top-tuned vectors (404)."""


class TextStatus(BaseModel):
    available: bool
    model: str
    detail: str | None = None
    max_text_bytes: int = MAX_TEXT_BYTES


class TextSide:
    """The index's text tower, loaded once on first use; label vectors of recent zero-shot requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._encoder: TextEncoder | None = None
        self._reason: str | None = None
        self._labels: dict[tuple[str, ...], np.ndarray] = {}

    def status(self, svc: VisualSearchService) -> TextStatus:
        self._load(svc)
        return TextStatus(available=self._encoder is not None, model=svc.manifest.model, detail=self._reason)

    def encoder(self, svc: VisualSearchService) -> TextEncoder:
        self._load(svc)
        if self._encoder is None:
            raise TextUnavailableError(self._reason or "this index cannot take text")
        return self._encoder

    def encode(self, svc: VisualSearchService, text: str) -> np.ndarray:
        encoder = self.encoder(svc)
        with self._lock:
            return encoder.encode([text])[0]

    def label_vectors(self, svc: VisualSearchService, labels: tuple[str, ...]) -> np.ndarray:
        """One prompt-ensembled vector per label (the 32 latest label sets are kept)."""
        encoder = self.encoder(svc)
        with self._lock:
            if labels not in self._labels:
                if len(self._labels) >= 32:
                    self._labels.pop(next(iter(self._labels)))
                self._labels[labels] = class_vectors(encoder, [class_prompts(x, DEFAULT_TEMPLATES) for x in labels])
            return self._labels[labels]

    def _load(self, svc: VisualSearchService) -> None:
        with self._lock:
            if not self._loaded:
                self._encoder, self._reason = _open_text(svc)
                self._loaded = True


def _open_text(svc: VisualSearchService) -> tuple[TextEncoder | None, str | None]:
    """The text tower of the index's model, or why there is none."""
    manifest = svc.manifest
    if manifest.vectors == "head":
        return None, (f"this index stores top-tuned vectors of {manifest.model}; a text tower was trained for the "
                      "backbone's space, not the head's: index the backbone's vectors for text search")
    if get_spec(manifest.model).has_text_tower is False:
        return None, f"{manifest.model} has no text tower (it embeds images only): use a text-image model"
    backbone = load_backbone(manifest.model, pretrained=manifest.pretrained, weights=manifest.weights,
                             preprocess=preprocess_overrides(manifest))
    check_weights(svc.layout, manifest, backbone)
    if backbone.text_encoder is None:
        return None, f"{manifest.model} has no text tower (it embeds images only): use a text-image model"
    return backbone.text_encoder, None


def check_query_text(text: str, field: str = "text") -> str:
    """Non-empty UTF-8 of at most ``MAX_TEXT_BYTES`` bytes, no control characters (422 otherwise)."""
    check_text(text, field, max_bytes=MAX_TEXT_BYTES)
    if not text.strip():
        raise InvalidItemError(f"{field} is empty; type some words to search for")
    return text.strip()


def zero_shot_labels(values: list[str]) -> tuple[str, ...]:
    """``zero_shot=a,b&zero_shot=c`` -> ``("a", "b", "c")``: trimmed, first occurrence kept, checked."""
    labels = [part.strip() for value in values for part in value.split(",")]
    unique = tuple(dict.fromkeys(label for label in labels if label))
    if not unique:
        raise InvalidItemError("zero_shot names no label; give the candidate labels, e.g. ?zero_shot=apple,banana")
    if len(unique) > MAX_LABELS:
        raise InvalidItemError(f"zero_shot names {len(unique)} labels, more than the {MAX_LABELS} allowed")
    for label in unique:
        check_text(label, "zero_shot label", max_bytes=MAX_LABEL_BYTES)
    return unique


def tag_probabilities(vector: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """Softmax over the labels of ``scale`` x cosine (the model's trained temperature)."""
    logits = scale * (labels @ vector)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()  # type: ignore[no-any-return]


def add_text_routes(app: FastAPI, max_k: int, side: TextSide) -> None:
    """``GET /text`` and ``POST /search/text`` over ``side``, the index's text tower (zero-shot tags: ``tagging``)."""
    K = Annotated[int, Form(ge=1, le=max_k, description="How many results.")]

    @app.get("/text", response_model=TextStatus, tags=["search"])
    def text_status(request: Request) -> TextStatus:
        """Whether this index takes text (search by words, zero-shot tags), and why not when it does not."""
        return side.status(current(request))

    @app.post("/search/text", response_model=SearchResponse, tags=["search"])
    def search_text(request: Request, text: Annotated[str, Form(description="Words to search for.")],
                    k: K = 10, category: Annotated[str | None, Form(description="Only this label.")] = None,
                    ) -> SearchResponse:
        """The photos nearest the text in the model's shared text-image space, best first."""
        started = time.perf_counter()
        query = check_query_text(text)
        wanted = check_label(category, "category")
        svc = current(request)
        vector = side.encode(svc, query)
        [hits] = svc.search_stage([Lookup(vector, k, wanted or None)])
        return SearchResponse(results=[HitModel(**vars(hit)) for hit in hits], tags=None, encoder=TEXT_ENCODER,
                              took_ms=(time.perf_counter() - started) * 1000.0)
