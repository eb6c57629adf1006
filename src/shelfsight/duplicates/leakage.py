"""Leakage between a protocol's queries and its gallery: a query whose exact or near duplicate sits in the
gallery is answered by memory, not by the embedding's understanding, and inflates retrieval scores.

Counted per query (a query leaks when at least one gallery item duplicates it); exact duplicates by content
digest, near ones by cosine similarity at a calibrated threshold. A leave-one-out protocol leaks when two of
its items duplicate each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shelfsight.catalog import Catalog
from shelfsight.duplicates.hashing import content_hashes
from shelfsight.duplicates.near import Pair, cross_pairs
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol

EXAMPLES = 5


@dataclass(frozen=True)
class ProtocolLeakage:
    """How many of a protocol's queries have a duplicate in its gallery, which, and a few example pairs."""

    protocol: str
    queries: int
    gallery: int
    threshold: float | None
    leaking: tuple[str, ...]
    """Ids of the queries with at least one duplicate in the gallery."""
    exact: int
    """Queries with a byte-identical gallery item."""
    examples: tuple[Pair, ...] = field(default=())
    """The most similar (query, gallery item) pairs, exact copies first."""

    @property
    def count(self) -> int:
        return len(self.leaking)

    def warning(self, show: int = 3) -> str:
        """The line ``datasets check`` prints: how many queries leak, of which kind, a few example pairs."""
        kind = ("exact duplicates" if self.threshold is None
                else f"exact or near duplicates (cosine >= {self.threshold:.4f})")
        shown = "; ".join(f"{p.a} ~ {p.b} ({p.similarity:.3f})" for p in self.examples[:show])
        return (f"protocol {self.protocol!r}: {self.count:,} of {self.queries:,} queries have {kind} in the gallery "
                f"({self.exact:,} byte-identical), e.g. {shown}; their retrieval is memory, not the embedding "
                "(the bench can leave them out: dedupe: exclude)")

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ProtocolLeakage:
        """Read back what :meth:`as_dict` wrote (the bench caches a run's duplicate decision so)."""
        return cls(protocol=stored["protocol"], queries=int(stored["queries"]), gallery=int(stored["gallery"]),
                   threshold=stored["threshold"], leaking=tuple(stored["leaking_ids"]), exact=int(stored["exact"]),
                   examples=tuple(Pair(e["query"], e["gallery"], float(e["similarity"]), e["kind"])
                                  for e in stored["examples"]))

    def as_dict(self, paths: dict[str, str] | None = None) -> dict[str, object]:
        """Plain data for JSON (results, the report): counts, threshold, leaking ids and example pairs."""
        found = paths or {}
        return {"protocol": self.protocol, "queries": self.queries, "gallery": self.gallery,
                "threshold": self.threshold, "leaking": self.count, "exact": self.exact,
                "leaking_ids": list(self.leaking),
                "examples": [{"query": p.a, "gallery": p.b, "similarity": p.similarity, "kind": p.kind,
                              "query_path": found.get(p.a, ""), "gallery_path": found.get(p.b, "")}
                             for p in self.examples]}


def protocol_sides(protocol: RetrievalProtocol, catalog: Catalog,
                   ids: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Query and gallery ids of a protocol (among ``ids`` when given: the embedded items)."""
    items = {i.item_id: i for i in catalog}
    order = ids if ids is not None else list(items)
    members = [i for i in order if i in items and protocol.takes_part(items[i])]
    return ([i for i in members if items[i].split in protocol.query_splits],
            [i for i in members if items[i].split in protocol.gallery_splits])


def protocol_leakage(protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings | None = None,
                     threshold: float | None = None, *, hashes: dict[str, str] | None = None,
                     examples: int = EXAMPLES) -> ProtocolLeakage:
    """Queries of ``protocol`` with an exact duplicate (always) or a near one (with embeddings and threshold)
    in its gallery."""
    queries, gallery = protocol_sides(protocol, catalog, embeddings.ids if embeddings is not None else None)
    digests = hashes if hashes is not None else content_hashes(i for i in catalog if protocol.takes_part(i))
    pairs = _exact_cross(queries, gallery, digests, protocol.leave_one_out)
    if embeddings is not None and threshold is not None:
        rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}
        near = cross_pairs(queries, embeddings.vectors[[rows[i] for i in queries]], gallery,
                           embeddings.vectors[[rows[i] for i in gallery]], threshold,
                           same_set=protocol.leave_one_out)
        seen = {(p.a, p.b) for p in pairs}
        pairs += [p for p in near if (p.a, p.b) not in seen]
    leaking = {p.a for p in pairs} | ({p.b for p in pairs} if protocol.leave_one_out else set())
    exact = {p.a for p in pairs if p.kind == "exact"} | (
        {p.b for p in pairs if p.kind == "exact"} if protocol.leave_one_out else set())
    ranked = sorted(pairs, key=lambda p: (p.kind != "exact", -p.similarity, p.a, p.b))
    return ProtocolLeakage(protocol=protocol.name, queries=len(queries), gallery=len(gallery), threshold=threshold,
                           leaking=tuple(i for i in queries if i in leaking), exact=len(exact),
                           examples=tuple(ranked[:examples]))


def _exact_cross(queries: list[str], gallery: list[str], hashes: dict[str, str], same_set: bool) -> list[Pair]:
    """(query, gallery item) pairs with equal non-empty digests; each unordered pair once in a shared set."""
    by_digest: dict[str, list[str]] = {}
    for item_id in gallery:
        if hashes.get(item_id):
            by_digest.setdefault(hashes[item_id], []).append(item_id)
    return [Pair(q, g, 1.0, "exact") for q in queries for g in by_digest.get(hashes.get(q, ""), [])
            if not same_set or q < g]


def leaking_mask(query_ids: list[str], leakage: ProtocolLeakage) -> np.ndarray:
    """Bool per query: whether it leaks (aligned with ``query_ids``)."""
    leaking = set(leakage.leaking)
    return np.array([q in leaking for q in query_ids], dtype=bool)
