"""A catalogue's duplicates: exact pairs by content digest, near pairs by embedding, grouped into clusters.

Clusters are the connected components of the pair graph (scipy): a re-post of a re-post lands in the
cluster of the original even when the two ends are less similar than the threshold, which is what a
moderator wants to see together.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from shelfsight.catalog import Catalog
from shelfsight.duplicates.hashing import content_hashes, exact_groups
from shelfsight.duplicates.near import Pair, self_pairs
from shelfsight.embeddings import Embeddings


@dataclass(frozen=True)
class Cluster:
    """Items that are duplicates of one another (directly or through a chain of pairs)."""

    number: int
    ids: tuple[str, ...]
    max_similarity: float
    exact: bool
    """Whether any pair in it is a byte-identical copy."""


@dataclass(frozen=True)
class DuplicateReport:
    """What ``find_duplicates`` found, with the settings that decided it."""

    catalog: str
    threshold: float | None
    pairs: tuple[Pair, ...]
    clusters: tuple[Cluster, ...]
    paths: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict, repr=False)
    items: int = 0

    @property
    def exact_pairs(self) -> int:
        return sum(p.kind == "exact" for p in self.pairs)

    @property
    def duplicated_items(self) -> int:
        return sum(len(c.ids) for c in self.clusters)


def find_duplicates(catalog: Catalog, embeddings: Embeddings | None, threshold: float | None, *,
                    backend: str = "auto", db_path: str | os.PathLike[str] | None = None) -> DuplicateReport:
    """Exact duplicates always; near-duplicates when ``embeddings`` and a cosine ``threshold`` are given."""
    pairs = exact_pairs(content_hashes(catalog))
    exact_keys = {(p.a, p.b) for p in pairs}
    if embeddings is not None and threshold is not None:
        near = self_pairs(embeddings.ids, embeddings.vectors, threshold, backend=backend, db_path=db_path)
        pairs += [p for p in near if (p.a, p.b) not in exact_keys]
    return DuplicateReport(
        catalog=catalog.name, threshold=threshold, pairs=tuple(pairs), clusters=tuple(clusters_of(pairs)),
        paths={i.item_id: str(i.image_path) for i in catalog}, labels={i.item_id: i.label for i in catalog},
        items=len(catalog))


def exact_pairs(hashes: dict[str, str]) -> list[Pair]:
    """Every unordered pair (``a < b``) inside each group of identical files, similarity 1."""
    return [Pair(a, b, 1.0, "exact") for group in exact_groups(hashes)
            for a, b in itertools.combinations(sorted(group), 2)]


def clusters_of(pairs: list[Pair]) -> list[Cluster]:
    """Connected components of the pair graph, largest first, then by their first id."""
    if not pairs:
        return []
    ids = sorted({p.a for p in pairs} | {p.b for p in pairs})
    position = {item_id: row for row, item_id in enumerate(ids)}
    rows = np.array([position[p.a] for p in pairs])
    cols = np.array([position[p.b] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[str]] = {}
    for item_id, label in zip(ids, component, strict=True):
        members.setdefault(int(label), []).append(item_id)
    best: dict[int, float] = {}
    exact: dict[int, bool] = {}
    for pair in pairs:
        label = int(component[position[pair.a]])
        best[label] = max(best.get(label, -1.0), pair.similarity)
        exact[label] = exact.get(label, False) or pair.kind == "exact"
    order = sorted(members, key=lambda label: (-len(members[label]), members[label][0]))
    return [Cluster(number=n, ids=tuple(members[label]), max_similarity=best[label], exact=exact[label])
            for n, label in enumerate(order, start=1)]
