"""A catalogue's duplicates: exact pairs by content digest, near pairs by embedding, grouped into clusters.

Clusters are cut from a complete-linkage tree (scipy) at the threshold, so every two photos of a cluster are a
pair themselves: connected components chain (on a clothing catalogue, 28 different T-shirts on one carpet
joined one cluster through look-alike neighbours). Only the photos of one connected component can share a
cluster, so the tree is built per component; a pair of photos left out of every cluster stays in the pairs.
Each cluster names its weakest pair, the one a moderator should check first.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from shelfsight.catalog import Catalog
from shelfsight.duplicates.hashing import content_hashes, exact_groups
from shelfsight.duplicates.near import Pair, self_pairs
from shelfsight.embeddings import Embeddings
from shelfsight.errors import ShelfsightError

MAX_COMPONENT = 5000
"""Complete linkage holds a component's distance matrix: beyond this many linked photos the threshold is wrong."""


@dataclass(frozen=True)
class Cluster:
    """Items that are all duplicates of one another: every two of them are a pair."""

    number: int
    ids: tuple[str, ...]
    max_similarity: float
    exact: bool
    """Whether any pair in it is a byte-identical copy."""
    min_similarity: float = 1.0
    weakest: tuple[str, str] = ("", "")
    """The least similar pair of the cluster (its similarity is ``min_similarity``)."""


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
        """Items with at least one duplicate (in a cluster or not)."""
        return len({p.a for p in self.pairs} | {p.b for p in self.pairs})


def find_duplicates(catalog: Catalog, embeddings: Embeddings | None, threshold: float | None, *,
                    backend: str = "auto", db_path: str | os.PathLike[str] | None = None) -> DuplicateReport:
    """Exact duplicates always; near-duplicates when ``embeddings`` and a cosine ``threshold`` are given."""
    pairs = exact_pairs(content_hashes(catalog))
    exact_keys = {(p.a, p.b) for p in pairs}
    if embeddings is not None and threshold is not None:
        near = self_pairs(embeddings.ids, embeddings.vectors, threshold, backend=backend, db_path=db_path)
        pairs += [p for p in near if (p.a, p.b) not in exact_keys]
    return DuplicateReport(
        catalog=catalog.name, threshold=threshold, pairs=tuple(pairs),
        clusters=tuple(clusters_of(pairs, threshold if threshold is not None else 1.0)),
        paths={i.item_id: str(i.image_path) for i in catalog}, labels={i.item_id: i.label for i in catalog},
        items=len(catalog))


def exact_pairs(hashes: dict[str, str]) -> list[Pair]:
    """Every unordered pair (``a < b``) inside each group of identical files, similarity 1."""
    return [Pair(a, b, 1.0, "exact") for group in exact_groups(hashes)
            for a, b in itertools.combinations(sorted(group), 2)]


def clusters_of(pairs: list[Pair], threshold: float | None = None) -> list[Cluster]:
    """Complete-linkage clusters of the pair graph cut at ``threshold`` (default: the weakest pair's similarity),
    largest first, then by their first id; a photo alone after the cut is in no cluster."""
    if not pairs:
        return []
    cut = min(p.similarity for p in pairs) if threshold is None else threshold
    ids = sorted({p.a for p in pairs} | {p.b for p in pairs})
    position = {item_id: row for row, item_id in enumerate(ids)}
    graph = coo_matrix((np.ones(len(pairs)), ([position[p.a] for p in pairs], [position[p.b] for p in pairs])),
                       shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    linked: dict[int, list[Pair]] = {}
    for pair in pairs:
        linked.setdefault(int(component[position[pair.a]]), []).append(pair)
    clusters = [_cluster(group) for found in linked.values() for group in _complete_linkage(found, cut)]
    clusters.sort(key=lambda c: (-len(c.ids), c.ids[0]))
    return [Cluster(n, c.ids, c.max_similarity, c.exact, c.min_similarity, c.weakest)
            for n, c in enumerate(clusters, start=1)]


def _complete_linkage(pairs: list[Pair], cut: float) -> list[list[Pair]]:
    """The pairs inside each group of two or more photos of one connected component whose every pair reaches
    ``cut``: complete linkage on 1 - similarity, a missing pair (below the threshold) at distance 2, cut at
    distance 1 - ``cut``."""
    ids = sorted({p.a for p in pairs} | {p.b for p in pairs})
    if len(ids) == 2:
        return [pairs]
    if len(ids) > MAX_COMPONENT:
        raise ShelfsightError(f"{len(ids):,} photos are linked by near-duplicate pairs: the threshold "
                              f"{cut:.4f} is too low for this embedding; raise it (or --target-precision)")
    position = {item_id: row for row, item_id in enumerate(ids)}
    rows, cols = [position[p.a] for p in pairs], [position[p.b] for p in pairs]
    distance = np.full((len(ids), len(ids)), 2.0)
    distance[rows, cols] = distance[cols, rows] = [1.0 - p.similarity for p in pairs]
    np.fill_diagonal(distance, 0.0)
    labels = fcluster(linkage(squareform(distance, checks=False), method="complete"), t=1.0 - cut,
                      criterion="distance")
    of = {item_id: int(label) for item_id, label in zip(ids, labels, strict=True)}
    inside: dict[int, list[Pair]] = {}
    for pair in pairs:
        if of[pair.a] == of[pair.b]:
            inside.setdefault(of[pair.a], []).append(pair)
    return list(inside.values())


def _cluster(inside: list[Pair]) -> Cluster:
    """A cluster (numbered later) from the pairs between its members."""
    weakest = min(inside, key=lambda p: (p.similarity, p.a, p.b))
    return Cluster(0, tuple(sorted({p.a for p in inside} | {p.b for p in inside})),
                   max(p.similarity for p in inside), any(p.kind == "exact" for p in inside),
                   weakest.similarity, (weakest.a, weakest.b))
