"""What a bench run shares between its cells, composed from the parts that each do one thing: ``provision``
(catalogues, backbones, embeddings), ``identity`` (each cell's inputs and key), ``inputs`` (what a strategy
is handed), ``tuned`` (the tuned models cells evaluate) and ``cells`` (running one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from shelfsight.bench.cell_identity import CellIdentity
from shelfsight.bench.cells import CellRunner
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell, CellResult
from shelfsight.bench.strategy_inputs import InputsMaker
from shelfsight.bench.tuned import TunedModels


class RunContext:
    """One run's parts, wired together; ``forced(cell)`` says a cell's stored work is to be redone."""

    def __init__(self, config: BenchConfig, run_dir: Path, forced: Callable[[Cell], bool] | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.provision = Provision(config)
        self.identity = CellIdentity(config, run_dir, self.provision)
        self.inputs = InputsMaker(config, run_dir, self.provision, self.identity)
        self.tuned = TunedModels(config, run_dir, self.provision, self.identity, self.inputs,
                                 forced or (lambda cell: False))
        self.cells = CellRunner(config, self.provision, self.inputs, self.tuned)

    def cell_inputs(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> dict[str, Any]:
        """Every input that decides the cell's numbers (its key is their digest)."""
        return self.identity.cell_inputs(cell, model, dataset)

    def run_cell(self, cell: Cell, model: ModelEntry, dataset: BenchDataset, *,
                 progress: bool) -> tuple[CellResult, pd.DataFrame | None]:
        return self.cells.run_cell(cell, model, dataset, progress=progress)
