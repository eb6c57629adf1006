"""What makes a cell's identity: every input that decides its numbers (its key is their digest), resolved once
per run: the model's and dataset's identities, the strategy's settings, the index and retrieval depth, the
duplicate policy (and, with a near-duplicate threshold, the dataset's decision, made once here)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shelfsight.backbones import get_spec
from shelfsight.bench import strategies
from shelfsight.bench.budgets import label_budget_identity
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.evaluate import RECALL_QUERIES
from shelfsight.bench.identity import SCORING_VERSION, digest
from shelfsight.bench.leakage import DedupePolicy, DuplicateDecision, decide_duplicates, decision_path, dedupe_identity
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import parse_strategy, split_budget
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings.digests import MISSING, DigestMemo


class CellIdentity:
    """Each cell's inputs and each tuned model's, from the run's config and what ``provision`` loaded."""

    def __init__(self, config: BenchConfig, run_dir: Path, provision: Provision) -> None:
        self.config = config
        self.run_dir = run_dir
        self.provision = provision
        self._identities: dict[str, dict[str, str]] = {}
        self._dedupe: dict[str, DuplicateDecision] = {}

    def cell_inputs(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> dict[str, Any]:
        """Every input that decides the cell's numbers (its key is their digest)."""
        kind, source = parse_strategy(cell.strategy)
        seed = self.provision.seed_of(cell)
        strategy: dict[str, Any] = {"name": kind, "settings": self.strategy_settings(kind),
                                    **label_budget_identity(cell.strategy, self.config.label_budgets)}
        if source is not None:
            strategy = {"name": cell.strategy, "source": digest(self.tuning_inputs(model, source, kind, seed))}
        index = self.config.index
        return {
            "model": self.model_identity(model, seed), "dataset": self.dataset_identity(dataset.name),
            "strategy": strategy, "seed": cell.seed, "scoring_version": SCORING_VERSION,
            "embedding": {"device": self.config.embedding.device, "precision": self.config.embedding.precision,
                          "runtime": self.config.embedding.runtime},
            "index": {"backend": index.backend, "type": index.type, "params": dict(sorted(index.params.items())),
                      # the recall sample's size moves index_recall@k; the default stays out, so stored keys hold
                      **({"recall_queries": index.recall_queries} if index.recall_queries != RECALL_QUERIES else {})},
            "retrieval": {"k": self.config.retrieval.k, "ks": list(self.config.retrieval.ks)},
            **({"dedupe": dedupe} if (dedupe := self.dedupe_identity()) is not None else {}),
        }

    def tuning_inputs(self, model: ModelEntry, dataset: str, strategy: str, seed: int) -> dict[str, Any]:
        """What decides a tuned model (a head or a fine-tuned backbone): not the index or retrieval depth.
        ``strategy`` is the kind, or a label-budget cell's ``KIND/N``."""
        kind = split_budget(strategy)[0]
        return {"model": self.model_identity(model, seed), "dataset": self.dataset_identity(dataset),
                "strategy": {"name": kind, "settings": self.strategy_settings(kind),
                             **label_budget_identity(strategy, self.config.label_budgets)}, "seed": seed}

    def model_identity(self, model: ModelEntry, seed: int) -> dict[str, Any]:
        return {"label": model.label, **self.provision.backbone(model, seed).cache_identity()}

    def dataset_identity(self, name: str) -> dict[str, Any]:
        """The dataset's entry and its content, part by part (``Catalog.identity``: items, labels, splits,
        product ids, coarse labels; ``photos``: the bytes), so a changed key names the part that changed."""
        entry = self.provision.dataset(name)
        if name not in self._identities:
            catalog = self.provision.catalog(entry)
            self._identities[name] = {**catalog.identity(), "photos": photos_digest(catalog)}
        source = {"source": entry.source} if entry.source else {}
        return {"name": name, **source, "per_class": entry.per_class, "image_root": entry.image_root,
                "same_group": entry.same_group,
                **self._identities[name]}

    def dedupe_identity(self) -> dict[str, Any] | None:
        """The ``dedupe`` part of every cell's key: the policy and the reference model's identity."""
        policy = self.config.dedupe
        return dedupe_identity(policy, self.model_identity(self.dedupe_model(), self.config.seed)
                               if policy.needs_reference else None)

    def dedupe_model(self) -> ModelEntry:
        return self.provision.model(self.config.dedupe.reference_label([m.label for m in self.config.models]))

    def dedupe(self, dataset: BenchDataset) -> DedupePolicy | DuplicateDecision:
        """The config's policy; with a near-duplicate threshold, the queries decided once for ``dataset`` in the
        reference model's embedding (stored in the run folder), which every cell of the dataset leaves out."""
        policy = self.config.dedupe
        if not policy.needs_reference:
            return policy
        if dataset.name not in self._dedupe:
            model, catalog = self.dedupe_model(), self.provision.catalog(dataset)
            self._dedupe[dataset.name] = decide_duplicates(
                policy, model.label, catalog, protocols_for(dataset.name, catalog),
                decision_path(self.run_dir, dataset.name),
                {"dedupe": self.dedupe_identity(), "dataset": self.dataset_identity(dataset.name)},
                lambda: self.provision.embed(catalog, self.provision.backbone(model, self.config.seed), False))
        return self._dedupe[dataset.name]

    def strategy_settings(self, kind: str) -> dict[str, Any]:
        strategy = strategies.get(kind)
        return strategy.settings(self.config.sections_of(strategy))

    def params(self, cell: Cell, model: ModelEntry) -> dict[str, Any]:
        """MLflow parameters; from the spec, so a cell whose weights failed to load is still described."""
        spec = get_spec(model.name)
        index = self.config.index
        return {"model": cell.model, "backbone": spec.name, "library": spec.library, "checkpoint": spec.checkpoint,
                "family": spec.family, "pretrained": model.pretrained, "dataset": cell.dataset,
                "strategy": cell.strategy, "seed": "deterministic" if cell.seed is None else cell.seed,
                "index_backend": index.backend, "index_type": index.type,
                "index_params": json.dumps(index.params, sort_keys=True), "k": self.config.retrieval.k}


def photos_digest(catalog: Catalog) -> str:
    """One digest of every item's photo by its bytes (``embeddings.digests``: remembered while a file's stat is
    unchanged, read again with ``SHELFSIGHT_REHASH=1``); a missing file enters as missing."""
    contents = DigestMemo().digests([item.image_path for item in catalog.items])
    hasher = hashlib.sha256()
    for item, content in zip(catalog.items, contents, strict=True):
        hasher.update(f"{item.item_id}\0{content or MISSING}\n".encode())
    return hasher.hexdigest()[:20]
