"""Leakage: class-disjoint protocols (what a tuned model may learn from, and the check that it learned nothing
else), and queries with a duplicate in their own gallery.

Cars196, Stanford Online Products and In-shop evaluate retrieval on classes that no tuned model may have
seen; that is what makes their numbers comparable with the metric-learning literature (Musgrave et al.
2020). A tuned strategy declares the items its model learned from (training and validation: early
stopping selects on the latter), and the bench refuses to score it on a protocol whose evaluated items
or classes those overlap.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shelfsight.bench.identity import digest
from shelfsight.catalog import Catalog
from shelfsight.duplicates.leakage import ProtocolLeakage, leaking_mask, protocol_leakage
from shelfsight.embeddings import Embeddings
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

_log = logging.getLogger(__name__)


class LeakageError(ShelfsightError):
    """A tuned model learned from items or classes that a class-disjoint protocol evaluates."""


def overlap(protocol: RetrievalProtocol, catalog: Catalog, learned_from: Iterable[str]) -> tuple[int, int]:
    """(evaluated items learned from, evaluated classes seen in training) for a class-disjoint protocol."""
    by_id = {item.item_id: item for item in catalog}
    trained = [by_id[i] for i in learned_from if i in by_id]
    evaluated = [item for item in catalog if protocol.evaluated(item)]
    evaluated_ids = {item.item_id for item in evaluated}
    evaluated_keys = {getattr(item, protocol.relevance) for item in evaluated}
    shared_items = sum(item.item_id in evaluated_ids for item in trained)
    shared_keys = {getattr(item, protocol.relevance) for item in trained} & evaluated_keys
    return shared_items, len(shared_keys - {None})


def require_unseen(protocol: RetrievalProtocol, catalog: Catalog, dataset: str, learned_from: Iterable[str],
                   what: str) -> None:
    """Raise ``LeakageError`` when ``what`` learned from an evaluated item or class of a disjoint protocol."""
    if not protocol.disjoint:
        return
    items, classes = overlap(protocol, catalog, learned_from)
    if items or classes:
        raise LeakageError(
            f"{dataset} protocol {protocol.name!r} evaluates classes no tuned model may have seen, but {what} "
            f"learned from {items} of its evaluated images and {classes} of its evaluated classes "
            f"({protocol.relevance}); tune on the protocol's training items ({describe_training(protocol)}) "
            "or score this model on another protocol.")


def leaks(protocol: RetrievalProtocol, catalog: Catalog, learned_from: Iterable[str]) -> bool:
    return protocol.disjoint and any(overlap(protocol, catalog, learned_from))


def training_splits(protocol: RetrievalProtocol) -> ClassificationSplits:
    """The protocol's training items as classification splits (validation carved from them, seeded)."""
    if protocol.train is None:
        raise ValueError(f"protocol {protocol.name!r} declares no training items")
    return ClassificationSplits(train=protocol.train.splits, test=(), label=protocol.relevance)


def training_catalog(protocol: RetrievalProtocol, catalog: Catalog) -> Catalog:
    """The catalogue restricted to the protocol's training items."""
    if protocol.train is None:
        raise ValueError(f"protocol {protocol.name!r} declares no training items")
    return catalog.subset([item.item_id for item in catalog if protocol.train.includes(item)])


def describe_training(protocol: RetrievalProtocol) -> str:
    train = protocol.train
    if train is None:
        return "none declared"
    subset = f", {train.subset.field} in {_span(train.subset.values)}" if train.subset else ""
    return f"splits {', '.join(train.splits)}{subset}"


def _span(values: frozenset[str]) -> str:
    numbers = sorted(int(v) for v in values if v.isdigit())
    if len(numbers) == len(values) and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}..{numbers[-1]}"
    return f"{len(values)} values"


# ---------------------------------------------------------------------------------------------- duplicates
# A second kind of leakage: a query whose exact or near duplicate sits in its own gallery is found by
# memory. The bench always records it (exact copies, and near-duplicates when a threshold is given) and,
# with ``action: exclude``, scores the queries without such a duplicate, keeping the all-query numbers too.
# Near-duplicates are decided once per dataset and protocol, in one reference embedding, so that every cell of
# a dataset (every model, every strategy) leaves out the same queries and a leaderboard column compares like
# with like: a threshold applied to each cell's own embedding would drop more queries from cells whose
# embedding tightens classes (top-tuning), scoring them on an easier set.

DEDUPE_FOLDER = "dedupe"
"""In a run folder: one JSON per dataset holding its duplicate decision and the key it was made under."""


class DedupePolicy(BaseModel):
    """What the bench does about queries with a duplicate in their gallery (``dedupe`` in the bench config).

    ``warn`` records the count and examples with each protocol's scores; ``exclude`` also leaves those
    queries out of the scores (the all-query scores stay in the details); ``off`` skips the check.
    ``threshold``: the cosine similarity of a near-duplicate in the ``reference`` model's embedding (calibrate it
    for that model: the shipped calibration's threshold, or ``shelfsight duplicates CATALOG --model M --calibrate``);
    without it, only byte-identical copies count.
    ``reference``: the model (its label in the config) whose embedding decides near-duplicates once per dataset
    and protocol for every cell; default the config's first model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["off", "warn", "exclude"] = "warn"
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    reference: str | None = None

    @property
    def needs_reference(self) -> bool:
        """Near-duplicates are looked for, so a reference embedding decides them."""
        return self.action != "off" and self.threshold is not None

    def reference_label(self, labels: Sequence[str]) -> str:
        """The reference model's label among the config's model ``labels``; a label not among them is refused."""
        if not labels:
            raise ShelfsightError("dedupe needs a reference model, and the config lists none")
        if self.reference is None:
            return labels[0]
        if self.reference not in labels:
            raise ShelfsightError(f"dedupe.reference {self.reference!r} is not among the config's models "
                                  f"({', '.join(labels)}); name one by its label (alias)")
        return self.reference


@dataclass(frozen=True)
class DuplicateDecision:
    """The queries with a duplicate in their gallery, per protocol of one dataset, as every cell reads them:
    exact copies by content digest, near ones at the policy's threshold in the reference model's embedding."""

    policy: DedupePolicy
    reference: str
    """The label of the model whose embedding decided the near-duplicates."""
    protocols: dict[str, ProtocolLeakage]
    key: str = ""
    """The digest of what decided it (policy, the reference model's identity, the dataset's identity)."""

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "policy": self.policy.model_dump(), "reference": self.reference,
                "protocols": {name: found.as_dict() for name, found in self.protocols.items()}}

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> DuplicateDecision:
        return cls(DedupePolicy.model_validate(stored["policy"]), stored["reference"],
                   {name: ProtocolLeakage.from_dict(found) for name, found in stored["protocols"].items()},
                   stored["key"])


def dedupe_identity(policy: DedupePolicy, reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``dedupe`` part of a cell's key: None for the default (warn about exact copies: nothing to key);
    else the policy, with the reference model's identity (label and weights) when it decides near-duplicates."""
    if policy.action == "warn" and policy.threshold is None:
        return None
    return {**policy.model_dump(), "reference": reference if policy.needs_reference else None}


def decision_path(run_dir: Path, dataset: str) -> Path:
    """Where a run keeps ``dataset``'s decision (its name made safe as a file name)."""
    return run_dir / DEDUPE_FOLDER / (re.sub(r"[^A-Za-z0-9_.-]", "_", dataset) + ".json")


def decide_duplicates(policy: DedupePolicy, reference: str, catalog: Catalog,
                      protocols: Sequence[RetrievalProtocol], path: Path, identity: dict[str, Any],
                      embed: Callable[[], Embeddings]) -> DuplicateDecision:
    """The decision stored at ``path`` when made under the same ``identity`` (policy, reference model and dataset
    identities), else made now from the reference embedding (``embed``) and stored: every cell of a dataset, in
    this run or a resumed one, reads the same leaking queries."""
    key = digest(identity)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return _said(DuplicateDecision.from_json(stored))
    embeddings = embed()
    decision = DuplicateDecision(policy, reference, {p.name: protocol_leakage(p, catalog, embeddings,
                                                                              policy.threshold)
                                                     for p in protocols}, key)
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(decision.to_json(), indent=1),
                                                              encoding="utf-8"))
    return _said(decision)


def _said(decision: DuplicateDecision) -> DuplicateDecision:
    """The decision, once its leaking queries are on the console: once per dataset and run, not once per cell."""
    for name, found in decision.protocols.items():
        if found.count:
            _say_leaking(name, found)
    return decision


def _say_leaking(protocol: str, found: ProtocolLeakage) -> None:
    _log.warning("protocol %r: %d of %d queries have a duplicate in the gallery (%d exact), e.g. %s",
                 protocol, found.count, found.queries, found.exact,
                 ", ".join(f"{p.a} ~ {p.b} ({p.similarity:.3f})" for p in found.examples[:3]))


def duplicate_leakage(
    protocol: RetrievalProtocol, catalog: Catalog, embeddings: Embeddings, query_ids: list[str],
    dedupe: DedupePolicy | DuplicateDecision, per_query: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(queries to score, leakage details) for one protocol: every query is scored unless ``exclude``. The
    details hold the count, examples, and the scores both with and without the leaking queries. The bench
    passes its ``DuplicateDecision`` (the same queries for every cell of a dataset); a bare policy decides in
    ``embeddings`` (one evaluation on its own: that embedding is the reference)."""
    policy = dedupe.policy if isinstance(dedupe, DuplicateDecision) else dedupe
    if policy.action == "off":
        return np.ones(len(query_ids), dtype=bool), None
    if isinstance(dedupe, DuplicateDecision):
        if protocol.name not in dedupe.protocols:
            raise ValueError(f"the run's duplicate decision holds no protocol {protocol.name!r} "
                             f"(it has {', '.join(dedupe.protocols)}); delete {DEDUPE_FOLDER}/ in the run folder")
        found = dedupe.protocols[protocol.name]
    else:
        found = protocol_leakage(protocol, catalog, embeddings, policy.threshold)
    leaking = leaking_mask(query_ids, found)
    if leaking.any() and not isinstance(dedupe, DuplicateDecision):  # a run's decision was said when it was made
        _say_leaking(protocol.name, found)
    details = found.as_dict({i.item_id: str(i.image_path) for i in catalog if i.item_id in _example_ids(found)})
    details |= {"action": policy.action, "scores_all_queries": scores_of(per_query, np.ones_like(leaking)),
                "scores_without_duplicates": scores_of(per_query, ~leaking),
                "decided_by": _decided_by(dedupe)}
    return (~leaking if policy.action == "exclude" else np.ones_like(leaking)), details


def _decided_by(dedupe: DedupePolicy | DuplicateDecision) -> str:
    if isinstance(dedupe, DuplicateDecision):
        return f"content, and cosine >= {dedupe.policy.threshold} in {dedupe.reference}'s embedding (every cell)"
    if dedupe.threshold is not None:
        return f"content, and cosine >= {dedupe.threshold} in this embedding"
    return "content (byte-identical copies)"


def _example_ids(found: ProtocolLeakage) -> set[str]:
    return {i for p in found.examples for i in (p.a, p.b)}


def scores_of(per_query: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float]:
    """Metric means over the kept queries, NaN (no relevant item) left out, as every protocol score."""
    means = {}
    for name, values in per_query.items():
        kept = values[keep]
        kept = kept[~np.isnan(kept)]
        means[name] = float(kept.mean()) if len(kept) else float("nan")
    return means
