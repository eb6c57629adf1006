"""Run every cell of the experiment matrix; skip finished cells; survive a failing one."""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from shelfsight import __version__
from shelfsight.backbones import (
    Backbone,
    finetuned_name,
    get_spec,
    gflops_per_image,
    load_backbone,
    load_class_weights,
)
from shelfsight.backbones.finetuned import read_record
from shelfsight.bench.config import BenchConfig, DatasetEntry, ModelEntry, config_to_json
from shelfsight.bench.evaluate import IndexFactory
from shelfsight.bench.results import Cell, CellResult, ResultStore
from shelfsight.bench.strategies import (
    CROSSTUNE,
    TUNING_RECORD,
    StrategyInputs,
    TunedModel,
    parse_strategy,
    run_strategy,
    train_toptune,
)
from shelfsight.bench.tracking import Tracker, default_tracking_uri
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.search import VectorIndex, open_index


@dataclass
class BenchSummary:
    run_dir: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    tracking_uri: str | None = None


def plan_cells(config: BenchConfig) -> list[tuple[Cell, ModelEntry, DatasetEntry]]:
    """The matrix in a stable order: dataset, then model, then strategy, then seed; cross-tuning cells
    (``toptune@A``, ``finetune@A``) come last, after the cells that produce what they carry across."""
    plain = [
        (Cell(model.label, dataset.name, strategy.name, seed), model, dataset)
        for dataset in config.datasets for model in config.models for strategy in config.strategies
        if strategy.name != CROSSTUNE and strategy.applies(model, dataset.name) for seed in config.seeds
    ]
    crossed = [
        (Cell(model.label, dataset.name, strategy, seed), model, dataset)
        for dataset in config.datasets for model in config.models
        for strategy in config.crosstune_strategies(model, dataset.name) for seed in config.seeds
    ]
    return plain + crossed


def run_bench(
    config: BenchConfig, run_dir: str | Path, *, tracking_uri: str | None = None, progress: bool = True,
    console: Console | None = None, on_cell: Callable[[Cell], None] | None = None,
) -> BenchSummary:
    """Evaluate every cell not already stored in ``run_dir``, then write the combined tables."""
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    out = console or Console(quiet=not progress)
    store = ResultStore(run_path)
    (run_path / "config.json").write_text(config_to_json(config))
    uri = tracking_uri or config.tracking.uri or default_tracking_uri(run_path)
    tracker = Tracker(uri, config.tracking.experiment or config.name, enabled=config.tracking.enabled,
                      artifact_root=run_path / "mlflow-artifacts")
    summary = BenchSummary(run_dir=run_path, tracking_uri=uri if config.tracking.enabled else None)
    context = _RunContext(config, run_path)
    cells = plan_cells(config)
    for number, (cell, model, dataset) in enumerate(cells, start=1):
        prefix = f"[{number}/{len(cells)}] {cell.cell_id}"
        if store.is_done(cell):
            summary.skipped.append(cell.cell_id)
            out.print(f"{prefix}: [dim]done already, skipped[/]")
            continue
        out.print(f"{prefix}: running")
        result = context.run_cell(cell, model, dataset, progress=progress)
        path = store.save(result)
        try:
            tracker.log_cell(result, context.params(cell, model), path)
        except Exception as exc:  # noqa: BLE001 - results are on disk; tracking is best effort
            out.print(f"[yellow]MLflow logging failed for {cell.cell_id}: {exc}[/]")
        if result.status == "ok":
            summary.computed.append(cell.cell_id)
            out.print(f"{prefix}: [green]ok[/] in {result.costs.get('cell_seconds', 0):.1f} s")
        else:
            summary.failed.append(cell.cell_id)
            out.print(f"{prefix}: [red]failed[/]: {result.error}")
        if on_cell is not None:
            on_cell(cell)
    summary.table = store.write_tables()
    _write_provenance(run_path, config)
    try:
        tracker.log_table(f"{config.name}-results", [run_path / "results.csv", run_path / "config.json"],
                          {"config_digest": config.digest(), "cells": len(cells)})
    except Exception as exc:  # noqa: BLE001
        out.print(f"[yellow]MLflow logging of the results table failed: {exc}[/]")
    return summary


class _RunContext:
    """Loads each catalogue and backbone once per run and evaluates cells with them; produces the tuned
    models (fine-tuned backbones, top-tuned heads) that cells evaluate, reusing those already on disk."""

    def __init__(self, config: BenchConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self._catalogs: dict[str, Catalog] = {}
        self._backbones: dict[tuple[str, int], Backbone] = {}
        self._costs: dict[str, dict[str, float]] = {}
        self._finetuned: dict[tuple[str, str, int], tuple[TunedModel, Backbone]] = {}
        self._toptuned: dict[tuple[str, str, int], TunedModel] = {}

    def catalog(self, dataset: DatasetEntry) -> Catalog:
        if dataset.name not in self._catalogs:
            catalog = load_catalog(dataset.name, data_dir=self.config.data_dir, image_root=dataset.image_root)
            self._catalogs[dataset.name] = _subset(catalog, dataset.per_class)
        return self._catalogs[dataset.name]

    def backbone(self, model: ModelEntry, seed: int) -> Backbone:
        key = (model.label, seed if not model.pretrained else 0)
        if key not in self._backbones:
            self._backbones[key] = load_backbone(model.name, pretrained=model.pretrained, weights=model.weights,
                                                 preprocess=model.preprocess, seed=key[1])
        return self._backbones[key]

    def params(self, cell: Cell, model: ModelEntry) -> dict[str, Any]:
        """MLflow parameters; from the spec, so a cell whose weights failed to load is still described."""
        spec = get_spec(model.name)
        index = self.config.index
        return {"model": cell.model, "backbone": spec.name, "library": spec.library, "checkpoint": spec.checkpoint,
                "family": spec.family, "pretrained": model.pretrained, "dataset": cell.dataset,
                "strategy": cell.strategy, "seed": cell.seed, "index_backend": index.backend,
                "index_type": index.type, "index_params": json.dumps(index.params, sort_keys=True),
                "k": self.config.retrieval.k}

    def dataset(self, name: str) -> DatasetEntry:
        return next(d for d in self.config.datasets if d.name == name)

    def embed(self, catalog: Catalog, backbone: Backbone, progress: bool) -> Embeddings:
        embedding = self.config.embedding
        return embed_catalog(catalog, backbone, batch_size=embedding.batch_size, num_workers=embedding.num_workers,
                             device=embedding.device, precision=embedding.precision, progress=progress)

    def inputs(self, cell: Cell, catalog: Catalog, embeddings: Embeddings, progress: bool,
               tuned: TunedModel | None = None) -> StrategyInputs:
        return StrategyInputs(
            dataset=cell.dataset, catalog=catalog, embeddings=embeddings, make_index=self._index_factory(),
            collection_prefix=_collection_name(cell), k=self.config.retrieval.k, ks=self.config.retrieval.ks,
            seed=cell.seed, workdir=self.run_dir / "work" / cell.cell_id, progress=progress, tuned=tuned,
            options={"toptune": self.config.toptune.model_dump(), "knn_k": self.config.knn_k})

    def run_cell(self, cell: Cell, model: ModelEntry, dataset: DatasetEntry, *, progress: bool) -> CellResult:
        started = time.perf_counter()
        family = ""
        try:
            kind, source = parse_strategy(cell.strategy)
            tuned, backbone = None, self.backbone(model, cell.seed)
            family = backbone.spec.family
            if kind == "finetune":
                tuned, backbone = self.finetuned(model, source or dataset.name, cell.seed, progress)
            elif kind == "toptune" and source is not None:
                tuned = self.toptuned(model, source, cell.seed, progress)
            catalog = self.catalog(dataset)
            embeddings = self.embed(catalog, backbone, progress)
            metrics, strategy_costs, details = run_strategy(cell.strategy,
                                                            self.inputs(cell, catalog, embeddings, progress, tuned))
            costs = {**self._backbone_costs(backbone), "embed_dim": float(embeddings.dim),
                     "index_bytes": float(embeddings.vectors.nbytes), **strategy_costs,
                     "cell_seconds": time.perf_counter() - started}
            if embeddings.extraction_rate:
                costs["extract_images_per_s"] = float(embeddings.extraction_rate)
            details.setdefault("device", embeddings.device)
            details.update({"skipped_images": len(embeddings.skipped), "embedding_key": embeddings.key,
                            "backbone": backbone.spec.name})
            return CellResult(cell=cell, status="ok", family=family, metrics=metrics, costs=costs, details=details)
        except Exception as exc:  # noqa: BLE001 - one failing cell records its error; the run goes on
            return CellResult(cell=cell, status="error", family=family, error=f"{type(exc).__name__}: {exc}",
                              details={"traceback": traceback.format_exc()},
                              costs={"cell_seconds": time.perf_counter() - started})

    def finetuned(self, model: ModelEntry, source: str, seed: int,
                  progress: bool) -> tuple[TunedModel, Backbone]:
        """The backbone fine-tuned on ``source``, in the work folder of that dataset's ``finetune`` cell:
        read back when finished, resumed from its last checkpoint when interrupted, else trained."""
        from shelfsight.adapt.finetune import finetune

        key = (model.label, source, seed)
        if key not in self._finetuned:
            folder = (self.run_dir / "work" / Cell(model.label, source, "finetune", seed).cell_id / "finetuned")
            folder = folder.resolve()
            if not (folder / "finetuned.json").is_file():
                config = dataclasses.replace(self.config.finetune, seed=seed)
                finetune(self.catalog(self.dataset(source)), self.backbone(model, seed), dataset=source,
                         output=folder, config=config, resume=True, progress=progress)
            record = read_record(folder)
            weights, classes = load_class_weights(folder)
            training = record["training"]
            details = {"device": training["device"], "world_size": training["world_size"],
                       "best_val_accuracy": training["best_val_accuracy"], "best_epoch": training["best_epoch"],
                       "stopped_early": training["stopped_early"], "train_input_size": record["train_input_size"],
                       "finetune_config": record["config"]}
            tuned = TunedModel(kind="finetune", dataset=source, path=folder, costs=dict(record["costs"]),
                               details=details, class_weights=weights, classes=tuple(classes))
            self._finetuned[key] = (tuned, load_backbone(finetuned_name(model.name, str(folder))))
        return self._finetuned[key]

    def toptuned(self, model: ModelEntry, source: str, seed: int, progress: bool) -> TunedModel:
        """The head top-tuned on ``source``'s frozen embeddings, from that dataset's ``toptune`` cell work
        folder when it exists there, else searched and trained into it."""
        from shelfsight.adapt import load_head

        key = (model.label, source, seed)
        if key not in self._toptuned:
            cell = Cell(model.label, source, "toptune", seed)
            workdir = self.run_dir / "work" / cell.cell_id
            if not (workdir / TUNING_RECORD).is_file() or not (workdir / "head" / "head.json").is_file():
                catalog = self.catalog(self.dataset(source))
                embeddings = self.embed(catalog, self.backbone(model, seed), progress)
                train_toptune(self.inputs(cell, catalog, embeddings, progress))
            record = json.loads((workdir / TUNING_RECORD).read_text(encoding="utf-8"))
            head, _, params = load_head(workdir / "head")
            tuned = TunedModel(kind="toptune", dataset=source, path=workdir / "head", costs=dict(record["costs"]),
                               details={"best_params": params}, head=head)
            self._toptuned[key] = tuned
        return self._toptuned[key]

    def _backbone_costs(self, backbone: Backbone) -> dict[str, float]:
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
                      **index.params}
            if index.backend == "milvus-lite":
                return open_index("milvus-lite", path=self.run_dir / "milvus.db", **common)
            return open_index("milvus", uri=index.uri, token=index.token or "", **common)

        return make


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


def _write_provenance(run_dir: Path, config: BenchConfig) -> None:
    import importlib.metadata as metadata

    packages = ("torch", "torchvision", "timm", "open_clip_torch", "transformers", "pymilvus", "milvus-lite",
                "mlflow", "numpy", "scikit-learn")
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    provenance = {"shelfsight": __version__, "python": platform.python_version(), "platform": platform.platform(),
                  "config_digest": config.digest(), "packages": versions}
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
