"""The two stages a search runs through, each over a list so that concurrent requests share one call.

- :class:`EmbedStage`: pixels of N photos -> one encoder call -> backbone embeddings, the indexed-space
  vectors (the head's when the index stores top-tuned vectors, through the index's PCA when it was built
  with ``--compress pcaD``) and the head's class probabilities.
- :class:`SearchStage`: N lookups (vector, k, category, an id to leave out) -> one Milvus search per
  distinct category (one in the usual case), with the largest k asked, and one read of the hits'
  records; each lookup keeps its own first k.

Each stage runs under its own lock: the encoder and the Milvus client are each used by one thread at a
time, and with two stages one batch's search overlaps the next batch's encoding.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shelfsight.adapt import LinearHead, MLPHead, embed_with_head, predict
from shelfsight.compress import Projection
from shelfsight.search.milvus import MilvusIndex
from shelfsight.serve.compression import one_blas_thread
from shelfsight.serve.encoder import Encoder
from shelfsight.serve.errors import InvalidItemError
from shelfsight.serve.validation import check_metadata, image_url

log = logging.getLogger("shelfsight.serve")


@dataclass(frozen=True)
class Embedded:
    """One photo through the model."""

    raw: np.ndarray
    """The backbone embedding (D,)."""
    vector: np.ndarray
    """The vector in the index's space: ``raw`` or the head's top-tuned embedding, projected by the index's PCA."""
    probabilities: np.ndarray | None
    """The head's class probabilities, when there is a head."""


@dataclass(frozen=True)
class Hit:
    id: str
    label: str
    score: float
    split: str
    image_url: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lookup:
    """One nearest-neighbour question: the ``k`` items nearest ``vector`` (within ``category``), without ``exclude``.

    ``vector`` is in the index's space, or, for an index built with ``--compress pcaD``, in the space the PCA
    was fitted in (a text query's vector): :class:`SearchStage` projects those (D is always below that size).
    """

    vector: np.ndarray
    k: int
    category: str | None = None
    exclude: str | None = None


class EmbedStage:
    """Pixels -> :class:`Embedded`, one encoder call (and one head call) per list."""

    def __init__(self, encoder: Encoder, head: MLPHead | LinearHead | None, *, head_vectors: bool,
                 projection: Projection | None = None) -> None:
        self.encoder = encoder
        self.head = head
        self.head_vectors = head_vectors and isinstance(head, MLPHead)
        self.projection = projection if projection is not None and projection.pca is not None else None
        """The index's PCA (``--compress pcaD``): every vector searched or added goes through it, as at indexing."""
        self.lock = threading.Lock()

    def __call__(self, pixels: list[np.ndarray]) -> list[Embedded]:
        batch = np.stack(pixels)
        with self.lock:
            raw = self.encoder(batch)
            vectors = embed_with_head(self.head, raw) if self.head_vectors and isinstance(self.head, MLPHead) else raw
            probabilities = class_probabilities(self.head, raw)
            if self.projection is not None:
                vectors = self._project(vectors)
        return [Embedded(raw[i], vectors[i], probabilities[i] if probabilities is not None else None)
                for i in range(len(pixels))]

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        """Projected and re-normalised; a degenerate (all-zero) vector stays zero, so additions still refuse it."""
        assert self.projection is not None
        with one_blas_thread():  # under the stage lock: the BLAS limit is process-wide while it holds
            projected = self.projection.apply(vectors)
        projected[np.linalg.norm(vectors, axis=1) <= 0.5] = 0.0
        return projected


def class_probabilities(head: MLPHead | LinearHead | None, raw: np.ndarray) -> np.ndarray | None:
    """(N, C) probabilities of the head's classes for backbone embeddings; None without a head."""
    if head is None:
        return None
    return head.probabilities(raw) if isinstance(head, LinearHead) else predict(head, raw)[1]


class SearchStage:
    """Lookups -> hit lists: one Milvus search per distinct category, returning the hits' records on a server
    (Milvus Lite: one read of the records after the searches, ``MilvusIndex.search_records``)."""

    def __init__(self, index: MilvusIndex, lock: threading.RLock, projection: Projection | None = None) -> None:
        self.index = index
        self.lock = lock
        self.projection = projection if projection is not None and projection.pca is not None else None

    def __call__(self, lookups: list[Lookup]) -> list[list[Hit]]:
        found: list[list[tuple[str, float]]] = [[] for _ in lookups]
        groups: dict[str | None, list[int]] = {}
        for position, lookup in enumerate(lookups):
            groups.setdefault(lookup.category, []).append(position)
        records: dict[str, dict[str, Any]] = {}
        with self.lock:
            for category, members in groups.items():
                records.update(self._search(lookups, members, category, found))
        return [[_hit(item_id, score, records[item_id]) for item_id, score in hits if item_id in records]
                for hits in found]

    def _search(self, lookups: list[Lookup], members: list[int], category: str | None,
                found: list[list[tuple[str, float]]]) -> dict[str, dict[str, Any]]:
        vectors = self._in_index_space(np.stack([lookups[i].vector for i in members]))
        excluded = [lookups[i].exclude for i in members]
        result, records = self.index.search_records(vectors, max(lookups[i].k for i in members), label=category,
                                                    exclude_ids=excluded if any(e is not None for e in excluded)
                                                    else None)
        for row, position in enumerate(members):
            pairs = [(item_id, cosine(score))
                     for item_id, score in zip(result.ids[row], result.scores[row], strict=True) if item_id]
            found[position] = pairs[:lookups[position].k]
        return records

    def _in_index_space(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors of the unprojected size go through the index's PCA (re-normalised); the others are as given."""
        pca = self.projection.pca if self.projection is not None else None
        if self.projection is None or pca is None or vectors.shape[1] != pca.n_features_in_:
            return vectors
        with one_blas_thread():
            return self.projection.apply(vectors)


def cosine(score: float) -> float:
    """Milvus's inner product of unit vectors, clipped to [-1, 1]: an 8-bit index (``sq8``, ``pcaD-sq8``) scores
    from its codes, whose rounding puts a near-duplicate at 1.003; the order Milvus ranked is kept."""
    return min(1.0, max(-1.0, float(score)))


def _hit(item_id: str, score: float, record: Mapping[str, Any]) -> Hit:
    return Hit(id=item_id, label=record["label"], score=score, split=record["split"], image_url=image_url(item_id),
               metadata=record_metadata(record))


def record_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata stored with a record: {} for collections without attributes, and {} for metadata that the
    checks of today would refuse (stored before them, e.g. nested hundreds of levels deep), so that one such
    item cannot make every search that finds it fail."""
    attributes = record.get("attributes")
    metadata = attributes.get("metadata") if isinstance(attributes, dict) else None
    if not isinstance(metadata, dict):
        return {}
    try:
        check_metadata(metadata)
    except InvalidItemError as error:
        log.warning("metadata of a stored item is not served: %s", error)
        return {}
    return dict(metadata)
