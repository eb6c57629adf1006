"""The run's plan before its first cell: what each cell will cost, from measured rates where there are any.

A cell's cost is mostly extraction (only the photos the per-photo cache lacks, at the rate the last
extraction of that backbone measured, else one derived from its GFLOPs), scoring (inserts and searches in the
vector database, in proportion to the catalogue) and the strategy's own work, which its ``estimate`` says
(``Strategy.estimate``: top-tuning's trials x epochs x training photos, fine-tuning's epochs at the training
input size...). The constants were measured on a 2-core CPU; during the run the estimate of the cells left is
scaled by how the finished ones compared with theirs, so the ETA corrects itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from shelfsight.backbones import Backbone
from shelfsight.bench import strategies
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import CostQuery, parse_strategy, split_budget
from shelfsight.bench.strategy_inputs import scored_protocols
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings.extract import resolve_device, resolve_precision
from shelfsight.embeddings.plan import uncached_photos

GFLOPS_RATE = 75.0
"""Images/s x GFLOPs/image (as torch's flop counter counts them, two per multiply-add) of exported CNNs on a
2-core CPU (efficientnet_lite0 at 224 px, 0.77 GFLOPs: about 100 images/s with ONNX Runtime): the extraction
rate assumed before any has been measured."""
SCORE_SECONDS = 1e-3
SCORE_SECONDS_PER_K = 6e-5
"""Seconds per catalogue item to index, search and score every retrieval protocol: Milvus Lite's search time
grows with the depth k (1,000 queries: about 4 s at k = 10, 15 s at k = 100 on a loaded 2-core CPU)."""
CLASSIFY_SECONDS = 1e-4
"""Seconds per catalogue item for a classification-only cell (kNN, nearest class mean) besides its fitting."""
CELL_OVERHEAD = 2.0


@dataclass(frozen=True)
class CellEstimate:
    """What a cell will do and about how long it will take (0 for a reused cell)."""

    seconds: float
    work: str


class RunEstimator:
    """Estimates cells in plan order: each (backbone, dataset) extraction, and each tuned model's training, is
    charged to its first cell."""

    def __init__(self, config: BenchConfig, provision: Provision) -> None:
        self.config = config
        self.provision = provision
        self._embedded: set[tuple[str, str]] = set()
        self._trained: set[tuple[str, str, str, int | None]] = set()
        self._counts: dict[tuple[int, str], tuple[int, dict[str, object]]] = {}

    def estimate(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> CellEstimate:
        kind, source = parse_strategy(cell.strategy)
        catalog = self.provision.catalog(dataset)
        backbone = self.provision.backbone(model, self.provision.seed_of(cell))
        rate = self._rate(backbone, catalog)
        strategy = strategies.get(kind)
        retrieves = strategy.baseline or strategy.adaptation or source is not None
        depth = self.config.retrieval.k
        scoring = (SCORE_SECONDS + SCORE_SECONDS_PER_K * depth) * len(catalog) * self._share(cell, dataset, catalog) \
            if retrieves else CLASSIFY_SECONDS * len(catalog)
        parts: list[tuple[float, str]] = [(CELL_OVERHEAD + scoring, "scoring")]
        if strategy.frozen_embedding and (model.label, dataset.name) not in self._embedded:
            self._embedded.add((model.label, dataset.name))
            missing = self._missing(backbone, catalog)
            if missing:
                parts.append((missing / rate, f"embed {missing:,} photos at ~{rate:.0f}/s"))
        trained_on = source or dataset.name
        budget = split_budget(cell.strategy)[1]
        tuned = (model.label, kind, trained_on, budget)
        first = tuned not in self._trained
        self._trained.add(tuned)
        parts += strategy.estimate(CostQuery(
            catalog=catalog, trained_on=self.provision.catalog(self.provision.dataset(trained_on)),
            sections=self.config.sections_of(strategy), rate=rate, budget=budget, carried=source is not None,
            first=first))
        seconds = sum(s for s, _ in parts)
        work = ", ".join(w for s, w in parts[1:] if s >= 1.0) or "scoring"
        return CellEstimate(seconds, work)

    def _share(self, cell: Cell, dataset: BenchDataset, catalog: Catalog) -> float:
        """The part of the dataset's retrieval protocols the cell scores."""
        scored = scored_protocols(self.config, cell.strategy, dataset.name, catalog)
        declared = len(protocols_for(dataset.name, catalog))
        return 1.0 if scored is None or not declared else len(scored) / declared

    def _rate(self, backbone: Backbone, catalog: Catalog) -> float:
        measured = self._uncached(backbone, catalog)[1].get("images_per_second")
        if isinstance(measured, (int, float)) and measured > 0:
            return float(measured)
        gflops = self.provision.backbone_costs(backbone).get("gflops_per_image", 0.4)
        return GFLOPS_RATE / max(gflops, 0.05)

    def _missing(self, backbone: Backbone, catalog: Catalog) -> int:
        return self._uncached(backbone, catalog)[0]

    def _uncached(self, backbone: Backbone, catalog: Catalog) -> tuple[int, dict[str, object]]:
        key = (id(backbone), catalog.name)
        if key not in self._counts:
            embedding = self.config.embedding
            device = resolve_device(embedding.device)
            self._counts[key] = uncached_photos(catalog, backbone, requested=embedding.runtime, device=device,
                                                precision=resolve_precision(embedding.precision, device))
        return self._counts[key]
