"""What a strategy's run is handed (``StrategyInputs``): the cell's catalogue and embeddings, a fresh index per
protocol, its config sections, seed and work folder, the run's duplicate decision, which protocols it scores."""

from __future__ import annotations

from pathlib import Path

from shelfsight.bench import strategies
from shelfsight.bench.budgets import scored_protocols as budget_protocols
from shelfsight.bench.cell_identity import CellIdentity
from shelfsight.bench.config import BenchConfig
from shelfsight.bench.index_factory import collection_name, index_factory
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import StrategyInputs, TunedModel, split_budget
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings import Embeddings

WORK = "work"
"""Under the run folder: one work folder per cell (``work/CELL_ID``), its resumable state and tuned models."""


def work_folder(run_dir: Path, cell: Cell) -> Path:
    return run_dir / WORK / cell.cell_id


def scored_protocols(config: BenchConfig, strategy: str, dataset: str, catalog: Catalog) -> tuple[str, ...] | None:
    """The retrieval protocols a cell scores (None: all; a label-budget cell may keep to the main one)."""
    declared = [p.name for p in protocols_for(dataset, catalog)]
    return budget_protocols(strategy, config.label_budgets, declared)


class InputsMaker:
    """Builds each cell's ``StrategyInputs`` from the run's config, provision and identities."""

    def __init__(self, config: BenchConfig, run_dir: Path, provision: Provision, identity: CellIdentity) -> None:
        self.config = config
        self.run_dir = run_dir
        self.provision = provision
        self.identity = identity

    def strategy_inputs(self, cell: Cell, catalog: Catalog, embeddings: Embeddings, progress: bool,
                        tuned: TunedModel | None = None,
                        protocol_tuned: dict[str, tuple[TunedModel, Embeddings]] | None = None) -> StrategyInputs:
        dataset = self.provision.dataset(cell.dataset)
        return StrategyInputs(
            dataset=cell.dataset, catalog=catalog, embeddings=embeddings,
            make_index=index_factory(self.config.index, self.run_dir), collection_prefix=collection_name(cell),
            k=self.config.retrieval.k, ks=self.config.retrieval.ks, seed=self.provision.seed_of(cell),
            workdir=work_folder(self.run_dir, cell), progress=progress, tuned=tuned,
            sections=self.config.sections_of(strategies.strategy_of(cell.strategy)),
            protocol_tuned=protocol_tuned or {}, keep_collections=self.config.index.keep_collections,
            dedupe=self.identity.dedupe(dataset), label_budget=split_budget(cell.strategy)[1],
            retrieval_protocols=scored_protocols(self.config, cell.strategy, cell.dataset, catalog),
            same_group=dataset.same_group, recall_queries=self.config.index.recall_queries)
