"""The "no close match" threshold of a service: calibrated on the indexed catalogue, or set by hand.

``shelfsight index --calibrate`` holds a seeded share of the catalogue's classes out as unknown (stratified by
class size, as the bench's ``openset`` protocol draws them), asks with every stored item (known items against the
rest of the known items, held-out items against the known items), and picks the lowest top-1 cosine at which the
accepted answers are right at least ``target_precision`` of the time (``metrics.openset.precision_threshold``).
The threshold and how it was obtained go to ``match.json`` beside the manifest; ``/health`` reports it, and every
search result (and tag, with a tagging threshold) carries ``match``. Without a threshold ``match`` is null.

The calibration reads the stored vectors, so it measures what the service searches (compression included). The
catalogue photos are the gallery's own photos (a held-out class's photos are truly absent from the gallery, but a
known query's nearest neighbour is another photo of the same catalogue, as a shopper's photo would be).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shelfsight.adapt import LinearHead
from shelfsight.metrics.openset import auroc, max_softmax, precision_threshold
from shelfsight.metrics.openset import draw_unknown as openset_draw
from shelfsight.search.milvus import MilvusIndex
from shelfsight.search.milvus_fields import VECTOR_FIELD, id_filter
from shelfsight.serve.errors import ServeError
from shelfsight.serve.indexer import ServedHead
from shelfsight.serve.manifest import IndexLayout, ServiceManifest, read_json_model, read_manifest, write_json_model
from shelfsight.serve.opening import open_head

MATCH_NAME = "match.json"
DEFAULT_TARGET_PRECISION = 0.95
"""As the bench's ``openset.target_precision``."""
DEFAULT_UNKNOWN_SHARE = 0.25
_QUERY_BATCH = 512
_ROW_BLOCK = 1024


class TaskCalibration(BaseModel):
    """How one task's threshold was chosen on the catalogue, and what it did there."""

    model_config = ConfigDict(extra="forbid")
    method: str
    reached: bool
    """False: no threshold reached the target on the catalogue; every answer is then "no match"."""
    precision: float
    """Precision of the accepted answers at the threshold (the best seen when the target was not reached)."""
    auroc: float
    known_queries: int
    unknown_queries: int
    known_turned_away: float = Field(description="Share of known photos answered no match.")
    unknown_turned_away: float = Field(description="Share of unknown photos answered no match.")


class MatchThreshold(BaseModel):
    """A served threshold and its provenance (``match.json``)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["shelfsight-match"] = "shelfsight-match"
    search: float | None = None
    """Lowest top-1 cosine answered as a match; None: search results carry no ``match``."""
    tagging: float | None = None
    """Lowest max softmax probability answered as a match; None: tags carry no ``match``."""
    source: Literal["calibrated", "set by hand"]
    seed: int | None = None
    unknown_share: float | None = None
    held_out_classes: int | None = None
    known_classes: int | None = None
    target_precision: float | None = None
    search_calibration: TaskCalibration | None = None
    tagging_calibration: TaskCalibration | None = None
    tagging_note: str | None = None
    """Why tagging was not calibrated (no head, or stored vectors the head cannot read)."""

    def search_threshold(self) -> float | None:
        """The threshold to compare top-1 scores with (``+inf`` when calibration found none reaching the target)."""
        return _effective(self.search, self.search_calibration)

    def is_match(self, score: float) -> bool | None:
        threshold = self.search_threshold()
        return None if threshold is None else bool(score >= threshold)

    def tag_match(self, probability: float) -> bool | None:
        threshold = _effective(self.tagging, self.tagging_calibration)
        return None if threshold is None else bool(probability >= threshold)


def _effective(value: float | None, calibration: TaskCalibration | None) -> float | None:
    return math.inf if calibration is not None and not calibration.reached else value


def by_hand(search: float | None, tagging: float | None = None) -> MatchThreshold:
    if search is not None and not -1.0 <= search <= 1.0:
        raise ServeError(f"--match-threshold {search}: a cosine threshold must lie in [-1, 1]")
    if tagging is not None and not 0.0 <= tagging <= 1.0:
        raise ServeError(f"tagging threshold {tagging}: a probability threshold must lie in [0, 1]")
    return MatchThreshold(search=search, tagging=tagging, source="set by hand")


def match_path(layout: IndexLayout) -> Path:
    return layout.folder / MATCH_NAME


def read_match(layout: IndexLayout) -> MatchThreshold | None:
    """The stored threshold, None when there is none; a broken file fails naming it."""
    path = match_path(layout)
    if not path.is_file():
        return None
    return read_json_model(path, MatchThreshold, broken="; delete it or run `shelfsight index --calibrate` again",
                           invalid="; run `shelfsight index --calibrate` again")


def write_match(layout: IndexLayout, record: MatchThreshold) -> Path:
    return write_json_model(match_path(layout), record)


def stored_rows(index: MilvusIndex) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, labels and stored vectors of every labelled item (unlabelled uploads have no class to hold out)."""
    client = index.client
    if client is None:
        raise ServeError("the collection is closed")
    ids = sorted(index.stored_ids())
    out_ids, labels, vectors = [], [], []
    for start in range(0, len(ids), _QUERY_BATCH):
        rows = client.query(index.collection, filter=id_filter(ids[start:start + _QUERY_BATCH]),
                            output_fields=["label", VECTOR_FIELD], consistency_level="Strong")
        for row in rows:
            if row["label"]:
                out_ids.append(str(row["id"]))
                labels.append(str(row["label"]))
                vectors.append(np.asarray(row[VECTOR_FIELD], dtype=np.float32))
    matrix = np.stack(vectors) if vectors else np.zeros((0, index.dim), dtype=np.float32)
    return out_ids, labels, matrix


def draw_unknown(class_sizes: dict[str, int], share: float, seed: int) -> tuple[str, ...]:
    """The bench's draw of unknown classes (``metrics.openset.draw_unknown``), refused as a service error."""
    try:
        return openset_draw(class_sizes, share, seed)
    except ValueError:
        raise ServeError(f"calibration needs at least 3 labelled classes in the index, found {len(class_sizes)}"
                         ) from None


def top1_scores(labels: list[str], vectors: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the top-1 cosine against the known items (itself left out) and whether that answer is right
    (a known item whose nearest known item has its label)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    gallery = np.flatnonzero(known)
    names = np.asarray(labels)
    scores = np.empty(len(labels), dtype=np.float64)
    right = np.zeros(len(labels), dtype=bool)
    for start in range(0, len(labels), _ROW_BLOCK):
        rows = np.arange(start, min(start + _ROW_BLOCK, len(labels)))
        sims = unit[rows] @ unit[gallery].T
        sims[rows[:, None] == gallery[None, :]] = -np.inf  # never itself
        best = np.argmax(sims, axis=1)
        scores[rows] = sims[np.arange(len(rows)), best]
        right[rows] = known[rows] & (names[gallery[best]] == names[rows])
    return scores, right


def head_logits(head: ServedHead, x: np.ndarray) -> np.ndarray:
    """(N, C) logits of the head for backbone embeddings (float64 for the softmax that follows)."""
    if isinstance(head, LinearHead):
        return np.asarray(head.logits(x), dtype=np.float64)
    import torch

    with torch.no_grad():
        return torch.cat([head(torch.from_numpy(np.ascontiguousarray(x[i:i + _ROW_BLOCK], dtype=np.float32)))
                          for i in range(0, len(x), _ROW_BLOCK)]).double().numpy()


def tagging_scores(logits: np.ndarray, classes: list[str], labels: list[str], unknown: set[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the head's max softmax probability over the known classes only (the softmax of the known
    classes' logits: a head that never saw the held-out classes) and whether its predicted class is right."""
    keep = np.array([c not in unknown for c in classes])
    known_logits = logits[:, keep]
    predicted = np.asarray(classes)[keep][np.argmax(known_logits, axis=1)]
    right = np.array([label not in unknown for label in labels]) & (predicted == np.asarray(labels))
    return max_softmax(known_logits), right


def _task(scores: np.ndarray, right: np.ndarray, known: np.ndarray, target: float, method: str
          ) -> tuple[float | None, TaskCalibration]:
    chosen = precision_threshold(scores, right, target)
    accepted = scores >= chosen.value
    return (chosen.value if chosen.reached else None), TaskCalibration(
        method=method, reached=chosen.reached, precision=chosen.precision,
        auroc=auroc(scores[known], scores[~known]), known_queries=int(known.sum()),
        unknown_queries=int((~known).sum()), known_turned_away=float(1.0 - accepted[known].mean()),
        unknown_turned_away=float(1.0 - accepted[~known].mean()))


SEARCH_METHOD = ("top-1 cosine of the stored items: held-out classes' items against the known items, known items "
                 "against the other known items; lowest threshold whose accepted answers are right at the target")
TAGGING_METHOD = ("the head's max softmax probability over the known classes (held-out classes' logits dropped) on "
                  "the stored items; the head was trained with these photos and classes, so known photos score "
                  "higher than a shopper's would: an optimistic threshold")


def calibrate(labels: list[str], vectors: np.ndarray, *, seed: int = 0, unknown_share: float = DEFAULT_UNKNOWN_SHARE,
              target_precision: float = DEFAULT_TARGET_PRECISION,
              head: tuple[np.ndarray, list[str]] | None = None) -> MatchThreshold:
    """Thresholds for ``target_precision`` of right "match" answers on the catalogue itself: search, and tagging
    when ``head`` gives the head's logits for the same items and its class names."""
    if not 0.0 < unknown_share < 1.0:
        raise ServeError(f"--unknown-share must lie in (0, 1), got {unknown_share}")
    if not 0.0 < target_precision <= 1.0:
        raise ServeError(f"--target-precision must lie in (0, 1], got {target_precision}")
    sizes: dict[str, int] = {}
    for label in labels:
        sizes[label] = sizes.get(label, 0) + 1
    unknown = set(draw_unknown(sizes, unknown_share, seed))
    known = np.array([label not in unknown for label in labels])
    search, search_record = _task(*top1_scores(labels, vectors, known), known, target_precision, SEARCH_METHOD)
    tagging, tagging_record = None, None
    if head is not None:
        tagging, tagging_record = _task(*tagging_scores(head[0], head[1], labels, unknown), known, target_precision,
                                        TAGGING_METHOD)
    return MatchThreshold(search=search, tagging=tagging, source="calibrated", seed=seed, unknown_share=unknown_share,
                          held_out_classes=len(unknown), known_classes=len(sizes) - len(unknown),
                          target_precision=target_precision, search_calibration=search_record,
                          tagging_calibration=tagging_record)


def calibrate_index(index: MilvusIndex, layout: IndexLayout, **options: float) -> MatchThreshold:
    """Calibrate on the collection's stored items and write ``match.json`` (replacing any earlier threshold)."""
    _, labels, vectors = stored_rows(index)
    manifest = read_manifest(layout)
    opened = open_head(manifest)
    note = _tagging_note(manifest, opened is not None)
    head = (head_logits(opened[0], vectors), opened[1]) if opened is not None and note is None else None
    record = calibrate(labels, vectors, seed=int(options.get("seed", 0)),
                       unknown_share=float(options.get("unknown_share", DEFAULT_UNKNOWN_SHARE)),
                       target_precision=float(options.get("target_precision", DEFAULT_TARGET_PRECISION)), head=head)
    record = record.model_copy(update={"tagging_note": note})
    write_match(layout, record)
    return record


def _tagging_note(manifest: ServiceManifest, has_head: bool) -> str | None:
    """Why tagging cannot be calibrated from the stored vectors (None when it can)."""
    if not has_head:
        return "no head indexed: tags carry no match"
    if manifest.vectors != "backbone" or manifest.compression is not None:
        return ("the index stores top-tuned or compressed vectors, which the head cannot read: tagging not "
                "calibrated (index backbone vectors uncompressed, or set a tagging threshold by hand)")
    return None


def summary_lines(record: MatchThreshold) -> list[str]:
    """What ``index --calibrate`` prints: per task, the threshold and what it did on the catalogue."""
    held, known = record.held_out_classes or 0, record.known_classes or 0
    lines = [f"{held} of {held + known} classes held out (seed {record.seed}), target precision "
             f"{record.target_precision}; written to {MATCH_NAME}"]
    for task, value, one in (("search", record.search, record.search_calibration),
                             ("tagging", record.tagging, record.tagging_calibration)):
        if one is None:
            continue
        shown = f"{value:.4f}" if value is not None else "none reached the target (all answers: no match)"
        lines.append(f"{task} match threshold {shown}: AUROC {one.auroc:.3f}, precision {one.precision:.3f}; "
                     f"turned away {one.unknown_turned_away:.0%} of unknown and {one.known_turned_away:.0%} of "
                     "known photos")
    if record.tagging_note:
        lines.append(record.tagging_note)
    return lines


def served_match(layout: IndexLayout, search: float | None = None,
                 tagging: float | None = None) -> tuple[MatchThreshold | None, str]:
    """The thresholds a service answers with and where they came from: ``serve --match-threshold`` and
    ``--tag-threshold`` first (either one replaces the whole file: a threshold not given is then none), else
    the index folder's ``match.json`` (``index --calibrate``, or the same options of ``index``), else none."""
    if search is not None or tagging is not None:
        given = [flag for flag, value in (("--match-threshold", search), ("--tag-threshold", tagging))
                 if value is not None]
        return by_hand(search, tagging), f"serve {' '.join(given)}"
    record = read_match(layout)
    return record, (f"{MATCH_NAME} in the index folder" if record is not None else "none: answers carry no match")


def describe(record: MatchThreshold | None, where: str) -> dict[str, object] | None:
    """For ``/health``: the thresholds, their provenance and where they were read (null without one)."""
    if record is None:
        return None
    summary: dict[str, object] = record.model_dump(exclude={"format"})
    summary["where"] = where
    return summary
