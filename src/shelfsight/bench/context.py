"""What a bench run loads once and shares between cells: catalogues, backbones, tuned models, and the
resolved inputs that make each cell's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.backbones import Backbone, finetuned_name, get_spec, gflops_per_image, load_backbone, load_class_weights
from shelfsight.backbones.finetuned import read_record
from shelfsight.bench import strategies
from shelfsight.bench.budgets import label_budget_identity, scored_protocols
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.evaluate import IndexFactory
from shelfsight.bench.identity import SCORING_VERSION, digest
from shelfsight.bench.leakage import (
    DedupePolicy,
    DuplicateDecision,
    decide_duplicates,
    decision_path,
    dedupe_identity,
    leaks,
    training_catalog,
    training_splits,
)
from shelfsight.bench.results import Cell, CellResult
from shelfsight.bench.strategies import (
    TUNING_RECORD,
    CellRequest,
    Prepared,
    StrategyInputs,
    TunedModel,
    parse_strategy,
    seeded_validation,
    split_budget,
    train_toptune,
)
from shelfsight.catalog import Catalog, load_catalog, protocols_for
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.embeddings.digests import MISSING, DigestMemo
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import VectorIndex, open_index
from shelfsight.search.milvus_config import index_options

WORK_KEY = ".inputs-key"
"""In a work folder (a top-tuning study, a fine-tuned backbone): the key of the inputs it was made from."""


class RunContext:
    """Loads each catalogue and backbone once per run and evaluates cells with them; produces the tuned
    models (fine-tuned backbones, top-tuned heads) that cells evaluate, reusing those already on disk
    only when they were made from the same inputs."""

    def __init__(self, config: BenchConfig, run_dir: Path, forced: Callable[[Cell], bool] | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.forced = forced or (lambda cell: False)
        self._catalogs: dict[str, Catalog] = {}
        self._identities: dict[str, dict[str, str]] = {}
        self._backbones: dict[tuple[str, int], Backbone] = {}
        self._costs: dict[str, dict[str, float]] = {}
        self._finetuned: dict[tuple[str, str, int, str, int | None], tuple[TunedModel, Backbone]] = {}
        self._toptuned: dict[tuple[str, str, int], TunedModel] = {}
        self._claimed: set[Path] = set()
        self._dedupe: dict[str, DuplicateDecision] = {}
        self.skipped: dict[tuple[str, str], tuple[str, str, str]] = {}
        """(catalogue, item id) -> (path, reason, the backbone that met it) of every photo left out."""

    # ------------------------------------------------------------------ loading
    def catalog(self, dataset: BenchDataset) -> Catalog:
        if dataset.name not in self._catalogs:
            catalog = load_catalog(dataset.location, data_dir=self.config.data_dir, image_root=dataset.image_root)
            self._catalogs[dataset.name] = _subset(catalog, dataset.per_class)
        return self._catalogs[dataset.name]

    def dataset(self, name: str) -> BenchDataset:
        return next(d for d in self.config.datasets if d.name == name)

    def seeded_validation(self, name: str) -> bool:
        """Whether classification on ``name`` carves its validation part with the seed (loads user catalogues)."""
        try:
            return seeded_validation(name, self.catalog(self.dataset(name)))
        except Exception:  # noqa: BLE001 - an unloadable dataset fails in its cells, with the reason
            return True

    def seed_of(self, cell: Cell) -> int:
        """The seed a cell runs with: its own, or the config's first seed for a deterministic cell."""
        return self.config.seed if cell.seed is None else cell.seed

    def backbone(self, model: ModelEntry, seed: int) -> Backbone:
        key = (model.label, seed if not model.pretrained else 0)
        if key not in self._backbones:
            self._backbones[key] = load_backbone(model.name, pretrained=model.pretrained, weights=model.weights,
                                                 preprocess=model.preprocess, seed=key[1])
        return self._backbones[key]

    def embed(self, catalog: Catalog, backbone: Backbone, progress: bool) -> Embeddings:
        embedding = self.config.embedding
        result = embed_catalog(catalog, backbone, batch_size=embedding.batch_size, num_workers=embedding.num_workers,
                             device=embedding.device, precision=embedding.precision, runtime=embedding.runtime,
                             progress=progress)
        for item in result.skipped:
            self.skipped.setdefault((catalog.name, item.item_id), (item.path, item.reason, backbone.spec.name))
        return result

    # ------------------------------------------------------------------ identity
    def cell_inputs(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> dict[str, Any]:
        """Every input that decides the cell's numbers (its key is their digest)."""
        kind, source = parse_strategy(cell.strategy)
        seed = self.seed_of(cell)
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
            "index": {"backend": index.backend, "type": index.type, "params": dict(sorted(index.params.items()))},
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
        return {"label": model.label, **self.backbone(model, seed).cache_identity()}

    def dataset_identity(self, name: str) -> dict[str, Any]:
        """The dataset's entry and its content, part by part (``Catalog.identity``: items, labels, splits,
        product ids, coarse labels; ``photos``: the bytes), so a changed key names the part that changed."""
        entry = self.dataset(name)
        if name not in self._identities:
            catalog = self.catalog(entry)
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
        label = self.config.dedupe.reference_label([m.label for m in self.config.models])
        return next(m for m in self.config.models if m.label == label)

    def dedupe(self, dataset: BenchDataset) -> DedupePolicy | DuplicateDecision:
        """The config's policy; with a near-duplicate threshold, the queries decided once for ``dataset`` in the
        reference model's embedding (stored in the run folder), which every cell of the dataset leaves out."""
        policy = self.config.dedupe
        if not policy.needs_reference:
            return policy
        if dataset.name not in self._dedupe:
            model, catalog = self.dedupe_model(), self.catalog(dataset)
            self._dedupe[dataset.name] = decide_duplicates(
                policy, model.label, catalog, protocols_for(dataset.name, catalog),
                decision_path(self.run_dir, dataset.name),
                {"dedupe": self.dedupe_identity(), "dataset": self.dataset_identity(dataset.name)},
                lambda: self.embed(catalog, self.backbone(model, self.config.seed), False))
        return self._dedupe[dataset.name]

    def strategy_settings(self, kind: str) -> dict[str, Any]:
        return strategies.get(kind).settings(self.config)

    def params(self, cell: Cell, model: ModelEntry) -> dict[str, Any]:
        """MLflow parameters; from the spec, so a cell whose weights failed to load is still described."""
        spec = get_spec(model.name)
        index = self.config.index
        return {"model": cell.model, "backbone": spec.name, "library": spec.library, "checkpoint": spec.checkpoint,
                "family": spec.family, "pretrained": model.pretrained, "dataset": cell.dataset,
                "strategy": cell.strategy, "seed": "deterministic" if cell.seed is None else cell.seed,
                "index_backend": index.backend, "index_type": index.type,
                "index_params": json.dumps(index.params, sort_keys=True), "k": self.config.retrieval.k}

    # ------------------------------------------------------------------ cells
    def strategy_inputs(self, cell: Cell, catalog: Catalog, embeddings: Embeddings, progress: bool,
                        tuned: TunedModel | None = None,
                        protocol_tuned: dict[str, tuple[TunedModel, Embeddings]] | None = None) -> StrategyInputs:
        return StrategyInputs(
            dataset=cell.dataset, catalog=catalog, embeddings=embeddings, make_index=self._index_factory(),
            collection_prefix=_collection_name(cell), k=self.config.retrieval.k, ks=self.config.retrieval.ks,
            seed=self.seed_of(cell), workdir=self.run_dir / "work" / cell.cell_id, progress=progress, tuned=tuned,
            options={s.name: s.settings(self.config) for s in strategies.REGISTRY.values()},
            protocol_tuned=protocol_tuned or {}, keep_collections=self.config.index.keep_collections,
            dedupe=self.dedupe(self.dataset(cell.dataset)), label_budget=split_budget(cell.strategy)[1],
            retrieval_protocols=self.scored_protocols(cell.strategy, cell.dataset, catalog),
            same_group=self.dataset(cell.dataset).same_group)

    def scored_protocols(self, strategy: str, dataset: str, catalog: Catalog) -> tuple[str, ...] | None:
        """The retrieval protocols a cell scores (None: all; a label-budget cell may keep to the main one)."""
        declared = [p.name for p in protocols_for(dataset, catalog)]
        return scored_protocols(strategy, self.config.label_budgets, declared)

    def run_cell(self, cell: Cell, model: ModelEntry, dataset: BenchDataset, *,
                 progress: bool) -> tuple[CellResult, pd.DataFrame | None]:
        started = time.perf_counter()
        family = ""
        try:
            strategy = strategies.strategy_of(cell.strategy)
            seed = self.seed_of(cell)
            family = self.backbone(model, seed).spec.family
            catalog = self.catalog(dataset)
            request = CellRequest(self, cell, model, dataset, seed, progress)
            prepared = strategy.prepare(request) if strategy.prepare else Prepared(self.backbone(model, seed))
            backbone = prepared.backbone
            embeddings = self.embed(catalog, backbone, progress)
            output = strategy.run(self.strategy_inputs(cell, catalog, embeddings, progress, prepared.tuned,
                                                       prepared.protocol_tuned))
            costs = {**self.backbone_costs(backbone), "embed_dim": float(embeddings.dim),
                     "index_bytes": float(embeddings.vectors.nbytes), **output.costs,
                     "cell_seconds": time.perf_counter() - started}
            if embeddings.extraction_rate:
                costs["extract_images_per_s"] = float(embeddings.extraction_rate)
            details = dict(output.details)
            details.setdefault("device", embeddings.device)
            details.update({"skipped_images": len(embeddings.skipped), "embedding_key": embeddings.key,
                            "backbone": backbone.spec.name})
            result = CellResult(cell=cell, status="ok", family=family, metrics=output.scores, costs=costs,
                                details=details)
            return result, output.per_query
        except Exception as exc:  # noqa: BLE001 - one failing cell records its error; the run goes on
            return CellResult(cell=cell, status="error", family=family, error=f"{type(exc).__name__}: {exc}",
                              details={"traceback": traceback.format_exc()},
                              costs={"cell_seconds": time.perf_counter() - started}), None

    # ------------------------------------------------------------------ tuned models
    def finetuned(self, model: ModelEntry, source: str, seed: int, progress: bool,
                  protocol: RetrievalProtocol | None = None, budget: int | None = None) -> tuple[TunedModel, Backbone]:
        """The backbone fine-tuned on ``source`` (on a class-disjoint ``protocol``'s training items when
        given; on ``budget`` labelled photos per class for a label-budget cell), in the work folder of that
        dataset's ``finetune`` cell: read back when finished and made from the same inputs, resumed from its
        last checkpoint when interrupted, else trained."""
        from shelfsight.adapt.finetune import finetune
        from shelfsight.adapt.splits import labelled_splits

        name = protocol.name if protocol is not None else ""
        key = (model.label, source, seed, name, budget)
        if key in self._finetuned:
            return self._finetuned[key]
        kind = strategies.finetune.NAME
        cell = Cell(model.label, source, kind if budget is None else strategies.budget_strategy(kind, budget), seed)
        folder = (self.run_dir / "work" / cell.cell_id / (f"finetuned-{name}" if name else "finetuned")).resolve()
        self.claim(folder, {**self.tuning_inputs(model, source, cell.strategy, seed), "protocol": name}, cell)
        catalog = self.catalog(self.dataset(source))
        splits = None
        if protocol is not None:
            catalog, splits = training_catalog(protocol, catalog), training_splits(protocol)
        if not (folder / "finetuned.json").is_file():
            config = dataclasses.replace(self.config.finetune, seed=seed)
            if budget is not None:
                config = dataclasses.replace(config, train_per_class=budget)
            finetune(catalog, self.backbone(model, seed), dataset=source, output=folder, config=config, resume=True,
                     progress=progress, splits=splits)
        labelled = labelled_splits(source, catalog, seed, splits=splits)
        self._finetuned[key] = (_finetuned_model(folder, source, labelled), load_backbone(
            finetuned_name(model.name, str(folder))))
        return self._finetuned[key]

    def protocol_finetuned(self, model: ModelEntry, dataset: BenchDataset, tuned: TunedModel, seed: int,
                            progress: bool, budget: int | None = None) -> dict[str, tuple[TunedModel, Embeddings]]:
        """For each class-disjoint protocol whose classes the classification fine-tune saw: a backbone
        fine-tuned on the protocol's training items, and the catalogue embedded with it."""
        catalog = self.catalog(dataset)
        kind = strategies.finetune.NAME
        scored = self.scored_protocols(kind if budget is None else strategies.budget_strategy(kind, budget),
                                       dataset.name, catalog)
        found = {}
        for protocol in protocols_for(dataset.name, catalog):
            if (scored is None or protocol.name in scored) and leaks(protocol, catalog, tuned.learned_from):
                own, backbone = self.finetuned(model, dataset.name, seed, progress, protocol, budget)
                found[protocol.name] = (own, self.embed(catalog, backbone, progress))
        return found

    def toptuned(self, model: ModelEntry, source: str, seed: int, progress: bool) -> TunedModel:
        """The head top-tuned on ``source``'s frozen embeddings, from that dataset's ``toptune`` cell work
        folder when it holds one made from the same inputs, else searched and trained into it."""
        from shelfsight.adapt import load_head

        key = (model.label, source, seed)
        if key not in self._toptuned:
            cell = Cell(model.label, source, strategies.toptune.NAME, seed)
            workdir = self.run_dir / "work" / cell.cell_id
            self.claim(workdir, self.tuning_inputs(model, source, cell.strategy, seed), cell)
            if not (workdir / TUNING_RECORD).is_file() or not (workdir / "head" / "head.json").is_file():
                catalog = self.catalog(self.dataset(source))
                embeddings = self.embed(catalog, self.backbone(model, seed), progress)
                train_toptune(self.strategy_inputs(cell, catalog, embeddings, progress))
            record = json.loads((workdir / TUNING_RECORD).read_text(encoding="utf-8"))
            head, _, params = load_head(workdir / "head")
            self._toptuned[key] = TunedModel(kind=strategies.toptune.NAME, dataset=source, path=workdir / "head",
                                             costs=dict(record["costs"]), details={"best_params": params},
                                             head=head, learned_from=tuple(record.get("learned_from", ())))
        return self._toptuned[key]

    def claim(self, folder: Path, inputs: dict[str, Any], cell: Cell) -> None:
        """Make ``folder`` hold work made from ``inputs``: work from other inputs (or any work, when the
        cell is forced) is cleared first, once per run."""
        if folder in self._claimed:
            return
        key = digest(inputs)
        marker = folder / WORK_KEY
        stale = folder.exists() and (self.forced(cell) or not marker.is_file()
                                     or marker.read_text(encoding="utf-8") != key)
        if stale:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(key, encoding="utf-8")
        self._claimed.add(folder)

    def backbone_costs(self, backbone: Backbone) -> dict[str, float]:
        """Parameters and GFLOPs per image (at its input size), measured once per backbone."""
        key = json.dumps(backbone.cache_identity(), sort_keys=True)
        if key not in self._costs:
            self._costs[key] = {"params_m": backbone.num_parameters / 1e6,
                                "gflops_per_image": gflops_per_image(backbone)}
        return self._costs[key]

    def _index_factory(self) -> IndexFactory:
        index = self.config.index

        def make(collection: str, dim: int) -> VectorIndex:
            if index.backend == "exact":
                return open_index("exact")
            if index.backend == "faiss":
                return open_index("faiss", dim=dim)
            common = {"collection": collection, "dim": dim, "index_type": index.type, "overwrite": True,
                      "build_timeout": index.build_timeout, **index_options(index.type, index.params, dim)}
            if index.backend == "milvus-lite":
                return open_index("milvus-lite", path=self.run_dir / "milvus.db", **common)
            return open_index("milvus", uri=index.uri, token=index.token or "", **common)

        return make


def _finetuned_model(folder: Path, source: str, labelled: Any) -> TunedModel:
    record = read_record(folder)
    weights, classes = load_class_weights(folder)
    training = record["training"]
    details = {"device": training["device"], "world_size": training["world_size"],
               "best_val_accuracy": training["best_val_accuracy"], "best_epoch": training["best_epoch"],
               "stopped_early": training["stopped_early"], "train_input_size": record["train_input_size"],
               "finetune_config": record["config"]}
    learned = tuple(item.item_id for item in (*labelled.train, *labelled.val))
    return TunedModel(kind=strategies.finetune.NAME, dataset=source, path=folder, costs=dict(record["costs"]),
                      details=details, class_weights=weights, classes=tuple(classes), learned_from=learned)


def photos_digest(catalog: Catalog) -> str:
    """One digest of every item's photo by its bytes (``embeddings.digests``: remembered while a file's stat is
    unchanged, read again with ``SHELFSIGHT_REHASH=1``); a missing file enters as missing."""
    contents = DigestMemo().digests([item.image_path for item in catalog.items])
    hasher = hashlib.sha256()
    for item, content in zip(catalog.items, contents, strict=True):
        hasher.update(f"{item.item_id}\0{content or MISSING}\n".encode())
    return hasher.hexdigest()[:20]


def _subset(catalog: Catalog, per_class: dict[str, int] | None) -> Catalog:
    """At most N items per class in each named split; other splits stay whole."""
    if not per_class:
        return catalog
    unknown = [s for s in per_class if s not in catalog.splits]
    if unknown:
        raise ValueError(f"per_class names split {unknown[0]!r}; {catalog.name} has {list(catalog.splits)}")
    keep: list[str] = []
    for split in catalog.splits:
        part = catalog.select_splits(split)
        keep.extend((part.per_class(per_class[split]) if split in per_class else part).ids)
    return catalog.subset(keep)


def _collection_name(cell: Cell) -> str:
    """Milvus collection names: letters, digits and underscores, starting with a letter."""
    return "c_" + re.sub(r"[^A-Za-z0-9_]", "_", cell.cell_id)[:180]
