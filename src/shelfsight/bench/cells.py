"""One cell run: its strategy prepares what it evaluates (the frozen backbone, or a tuned model from
``bench.tuned``), the catalogue is embedded, the strategy scores it, and the costs are gathered; a failing
cell records its error and the run goes on."""

from __future__ import annotations

import time
import traceback

import pandas as pd

from shelfsight.bench import strategies
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell, CellResult
from shelfsight.bench.strategies import CellRequest, Prepared
from shelfsight.bench.strategy_inputs import InputsMaker, work_folder
from shelfsight.bench.tuned import TunedModels


class CellRunner:
    """Runs cells with the run's provision, inputs and tuned models."""

    def __init__(self, config: BenchConfig, provision: Provision, inputs: InputsMaker, tuned: TunedModels) -> None:
        self.config = config
        self.provision = provision
        self.inputs = inputs
        self.tuned = tuned

    def run_cell(self, cell: Cell, model: ModelEntry, dataset: BenchDataset, *,
                 progress: bool) -> tuple[CellResult, pd.DataFrame | None]:
        started = time.perf_counter()
        family = ""
        try:
            strategy = strategies.strategy_of(cell.strategy)
            seed = self.provision.seed_of(cell)
            family = self.provision.backbone(model, seed).spec.family
            catalog = self.provision.catalog(dataset)
            request = CellRequest(self.tuned, cell, seed, progress, work_folder(self.inputs.run_dir, cell),
                                  self.config.sections_of(strategy))
            prepared = (strategy.prepare(request) if strategy.prepare
                        else Prepared(self.provision.backbone(model, seed)))
            backbone = prepared.backbone
            embeddings = self.provision.embed(catalog, backbone, progress)
            output = strategy.run(self.inputs.strategy_inputs(cell, catalog, embeddings, progress, prepared.tuned,
                                                              prepared.protocol_tuned))
            costs = {**self.provision.backbone_costs(backbone), "embed_dim": float(embeddings.dim),
                     "index_bytes": float(embeddings.vectors.nbytes), **output.costs,
                     "cell_seconds": time.perf_counter() - started}
            if embeddings.extraction_rate:
                costs["extract_images_per_s"] = float(embeddings.extraction_rate)
            details = dict(output.details)
            details.setdefault("device", embeddings.device)
            details.update({"skipped_images": len(embeddings.skipped), "embedding_key": embeddings.key,
                            "backbone": backbone.spec.name})
            if embeddings.notes:  # a vectors model: which file, and that its vectors were L2-normalised on load
                details["vectors"] = dict(embeddings.notes)
            result = CellResult(cell=cell, status="ok", family=family, metrics=output.scores, costs=costs,
                                details=details)
            return result, output.per_query
        except Exception as exc:  # noqa: BLE001 - one failing cell records its error; the run goes on
            return CellResult(cell=cell, status="error", family=family, error=f"{type(exc).__name__}: {exc}",
                              details={"traceback": traceback.format_exc()},
                              costs={"cell_seconds": time.perf_counter() - started}), None
