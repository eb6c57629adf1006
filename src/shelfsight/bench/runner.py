"""Run every cell of the experiment matrix; skip finished cells; survive a failing one."""

from __future__ import annotations

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
from shelfsight.backbones import Backbone, get_spec, gflops_per_image, load_backbone
from shelfsight.bench.config import BenchConfig, DatasetEntry, ModelEntry, config_to_json
from shelfsight.bench.evaluate import IndexFactory
from shelfsight.bench.results import Cell, CellResult, ResultStore
from shelfsight.bench.strategies import StrategyInputs, run_strategy
from shelfsight.bench.tracking import Tracker, default_tracking_uri
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import embed_catalog
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
    """The matrix in a stable order: dataset, then model, then strategy, then seed."""
    return [
        (Cell(model.label, dataset.name, strategy, seed), model, dataset)
        for dataset in config.datasets for model in config.models
        for strategy in config.strategies for seed in config.seeds
    ]


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
    """Loads each catalogue and backbone once per run and evaluates cells with them."""

    def __init__(self, config: BenchConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self._catalogs: dict[str, Catalog] = {}
        self._backbones: dict[tuple[str, int], Backbone] = {}
        self._costs: dict[tuple[str, int], dict[str, float]] = {}

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

    def run_cell(self, cell: Cell, model: ModelEntry, dataset: DatasetEntry, *, progress: bool) -> CellResult:
        started = time.perf_counter()
        family = ""
        try:
            backbone = self.backbone(model, cell.seed)
            family = backbone.spec.family
            catalog = self.catalog(dataset)
            embedding = self.config.embedding
            embeddings = embed_catalog(catalog, backbone, batch_size=embedding.batch_size,
                                       num_workers=embedding.num_workers, device=embedding.device,
                                       precision=embedding.precision, progress=progress)
            inputs = StrategyInputs(
                dataset=dataset.name, catalog=catalog, embeddings=embeddings, make_index=self._index_factory(),
                collection_prefix=_collection_name(cell), k=self.config.retrieval.k, ks=self.config.retrieval.ks,
                seed=cell.seed, workdir=self.run_dir / "work" / cell.cell_id, progress=progress,
                options={"toptune": self.config.toptune.model_dump(), "knn_k": self.config.knn_k})
            metrics, strategy_costs, details = run_strategy(cell.strategy, inputs)
            costs = {**self._backbone_costs(model, cell.seed), "embed_dim": float(embeddings.dim),
                     "index_bytes": float(embeddings.vectors.nbytes), **strategy_costs,
                     "cell_seconds": time.perf_counter() - started}
            if embeddings.extraction_rate:
                costs["extract_images_per_s"] = float(embeddings.extraction_rate)
            details.update({"skipped_images": len(embeddings.skipped), "embedding_key": embeddings.key})
            return CellResult(cell=cell, status="ok", family=family, metrics=metrics, costs=costs, details=details)
        except Exception as exc:  # noqa: BLE001 - one failing cell records its error; the run goes on
            return CellResult(cell=cell, status="error", family=family, error=f"{type(exc).__name__}: {exc}",
                              details={"traceback": traceback.format_exc()},
                              costs={"cell_seconds": time.perf_counter() - started})

    def _backbone_costs(self, model: ModelEntry, seed: int) -> dict[str, float]:
        """Parameters and GFLOPs per image, measured once per backbone."""
        backbone = self.backbone(model, seed)
        key = (model.label, seed if not model.pretrained else 0)
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
