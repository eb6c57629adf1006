"""``POST /tag``: one handler, two taggers, chosen by the request.

With ``?zero_shot=LABEL,LABEL`` the photo is tagged with the labels given, through the text tower of the index's
model (:mod:`shelfsight.serve.text`: no head, no training; at most ``MAX_LABELS`` labels, so ``top`` at most that
too); without it, by the index's head (top-tuned, linear probe or class means). An index that cannot tag the way
asked answers 404 saying why, before the upload is spooled.
"""

from typing import Annotated

import numpy as np
from fastapi import FastAPI, Form, Query, Request

from shelfsight.serve.errors import InvalidItemError
from shelfsight.serve.routes import ImageFile, current, matching, tag_models
from shelfsight.serve.schemas import TagModel, TagResponse
from shelfsight.serve.service import VisualSearchService
from shelfsight.serve.text import MAX_LABELS, TextSide, tag_probabilities, zero_shot_labels

MAX_TOP = 1000
"""The most classes a head's tags may list."""


def add_tag_route(app: FastAPI, side: TextSide) -> None:
    """``POST /tag``, by the head or, with ``zero_shot``, by the labels given (``side``: the index's text tower)."""

    @app.post("/tag", response_model=TagResponse, tags=["search"])
    def tag(request: Request, image: ImageFile,
            top: Annotated[int, Form(ge=1, le=MAX_TOP, description="How many classes (labels, with zero_shot: "
                                     f"at most {MAX_LABELS}).")] = 5,
            zero_shot: Annotated[list[str] | None, Query(description="Candidate labels, comma-separated: tag by "
                                                         "the model's text tower instead of the head.")] = None,
            ) -> TagResponse:
        """Class probabilities, most probable first: from the head (top-tuned, linear probe or class means), or,
        with ``zero_shot``, a softmax over the labels given (text-image models)."""
        svc = current(request)
        if zero_shot is None:
            return _by_head(svc, image, top, request)
        return _by_labels(svc, side, image, top, zero_shot)


def _by_head(svc: VisualSearchService, image: ImageFile, top: int, request: Request) -> TagResponse:
    svc.require_tagging()  # before spooling the upload
    with svc.receive(image.file) as path:
        tags = svc.tag(path, top=top)
    return TagResponse(tags=tag_models(tags, matching(request)) or [], encoder=svc.encoder.name)


def _by_labels(svc: VisualSearchService, side: TextSide, image: ImageFile, top: int, values: list[str]
               ) -> TagResponse:
    """The photo's most likely labels among those given (the model's logit scale times the cosine, softmax)."""
    if top > MAX_LABELS:
        raise InvalidItemError(f"top: Input should be less than or equal to {MAX_LABELS}")
    labels = zero_shot_labels(values)
    vectors = side.label_vectors(svc, labels)  # before spooling the upload: refused early without a tower
    with svc.receive(image.file) as path:
        raw = svc.embed_photo(path).raw
    probabilities = tag_probabilities(raw, vectors, side.encoder(svc).logit_scale)
    order = np.argsort(-probabilities, kind="stable")[:top]
    return TagResponse(tags=[TagModel(label=labels[i], probability=float(probabilities[i])) for i in order],
                       encoder=svc.encoder.name)
