"""The run's plan before its first cell: what each cell will cost, from measured rates where there are any.

A cell's cost is mostly four things: photos to embed (only those the per-photo cache lacks, at the rate the
last extraction of that backbone measured, else one derived from its GFLOPs), scoring (inserts and
searches in the vector database, in proportion to the catalogue), head training (top-tuning: trials x
epochs x training photos) and backbone training (fine-tuning: epochs x training photos at the training
input size). The constants below were measured on a 2-core CPU; during the run the estimate of the cells
left is scaled by how the finished ones compared with theirs, so the ETA corrects itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shelfsight.backbones import Backbone
from shelfsight.bench import strategies
from shelfsight.bench.strategies import parse_strategy, split_budget
from shelfsight.catalog import Catalog
from shelfsight.embeddings.extract import resolve_device, resolve_precision
from shelfsight.embeddings.plan import uncached_photos

if TYPE_CHECKING:
    from shelfsight.bench.config import BenchDataset, ModelEntry
    from shelfsight.bench.context import RunContext
    from shelfsight.bench.results import Cell

GFLOPS_RATE = 75.0
"""Images/s x GFLOPs/image (as torch's flop counter counts them, two per multiply-add) of exported CNNs on a
2-core CPU (efficientnet_lite0 at 224 px, 0.77 GFLOPs: about 100 images/s with ONNX Runtime): the extraction
rate assumed before any has been measured."""
TRAIN_SLOWDOWN = 20.0
"""A training step in PyTorch eager (augmentation, forward, backward, update) against an exported inference
forward at the same input size: measured about 23x for efficientnet_lite0 at 128 px on 2 cores."""
HEAD_SECONDS = 5e-5
"""Seconds per training photo per epoch of a top-tuning head (one thread, 1,280-d, two layers of 512)."""
SCORE_SECONDS = 1e-3
SCORE_SECONDS_PER_K = 6e-5
"""Seconds per catalogue item to index, search and score every retrieval protocol: Milvus Lite's search time
grows with the depth k (1,000 queries: about 4 s at k = 10, 15 s at k = 100 on a loaded 2-core CPU)."""
CLASSIFY_SECONDS = 1e-4
"""Seconds per catalogue item for a classification-only cell (kNN, nearest class mean) besides its fitting."""
COMPRESS_SECONDS = 1e-3
"""Seconds per catalogue item per compression method (fit, build, search, measure; all protocols)."""
CELL_OVERHEAD = 2.0
FINAL_EPOCHS = 80
"""Epochs the final head usually trains before early stopping stops it."""


@dataclass(frozen=True)
class CellEstimate:
    """What a cell will do and about how long it will take (0 for a reused cell)."""

    seconds: float
    work: str


class RunEstimator:
    """Estimates cells in plan order: each (backbone, dataset) extraction is charged to its first cell."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self._embedded: set[tuple[str, str]] = set()
        self._counts: dict[tuple[int, str], tuple[int, dict[str, object]]] = {}

    def estimate(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> CellEstimate:
        kind, source = parse_strategy(cell.strategy)
        catalog = self.context.catalog(dataset)
        backbone = self.context.backbone(model, self.context.seed_of(cell))
        rate = self._rate(backbone, catalog)
        strategy = strategies.get(kind)
        retrieves = strategy.baseline or strategy.adaptation or source is not None
        depth = self.context.config.retrieval.k
        scoring = (SCORE_SECONDS + SCORE_SECONDS_PER_K * depth) * len(catalog) * self._share(cell, dataset, catalog) \
            if retrieves else CLASSIFY_SECONDS * len(catalog)
        parts: list[tuple[float, str]] = [(CELL_OVERHEAD + scoring, "scoring")]
        if kind == "finetune":
            parts.append(self._finetune(catalog, rate, dataset.name if source is None else source, model.label,
                                        split_budget(cell.strategy)[1]))
        elif (model.label, dataset.name) not in self._embedded:
            self._embedded.add((model.label, dataset.name))
            missing = self._missing(backbone, catalog)
            if missing:
                parts.append((missing / rate, f"embed {missing:,} photos at ~{rate:.0f}/s"))
        if kind == "toptune" and source is None:
            parts.append(self._toptune(catalog, split_budget(cell.strategy)[1]))
        elif kind == "linear":
            parts.append((len(catalog) * 2e-3, "logistic regression"))
        elif kind.startswith("compress"):
            methods = len(self.context.config.compress.methods)
            parts.append((methods * len(catalog) * COMPRESS_SECONDS, f"{methods} compression methods"))
        seconds = sum(s for s, _ in parts)
        work = ", ".join(w for s, w in parts[1:] if s >= 1.0) or "scoring"
        return CellEstimate(seconds, work)

    def _share(self, cell: Cell, dataset: BenchDataset, catalog: Catalog) -> float:
        """The part of the dataset's retrieval protocols the cell scores."""
        from shelfsight.catalog import protocols_for

        scored = self.context.scored_protocols(cell.strategy, dataset.name, catalog)
        declared = len(protocols_for(dataset.name, catalog))
        return 1.0 if scored is None or not declared else len(scored) / declared

    def _rate(self, backbone: Backbone, catalog: Catalog) -> float:
        measured = self._uncached(backbone, catalog)[1].get("images_per_second")
        if isinstance(measured, (int, float)) and measured > 0:
            return float(measured)
        gflops = self.context.backbone_costs(backbone).get("gflops_per_image", 0.4)
        return GFLOPS_RATE / max(gflops, 0.05)

    def _missing(self, backbone: Backbone, catalog: Catalog) -> int:
        return self._uncached(backbone, catalog)[0]

    def _uncached(self, backbone: Backbone, catalog: Catalog) -> tuple[int, dict[str, object]]:
        key = (id(backbone), catalog.name)
        if key not in self._counts:
            embedding = self.context.config.embedding
            device = resolve_device(embedding.device)
            self._counts[key] = uncached_photos(catalog, backbone, requested=embedding.runtime, device=device,
                                                precision=resolve_precision(embedding.precision, device))
        return self._counts[key]

    def _toptune(self, catalog: Catalog, budget: int | None) -> tuple[float, str]:
        from shelfsight.adapt.toptune import planned_trials

        settings = self.context.config.toptune
        train = _train_count(catalog)
        if budget is not None:
            train = min(train, budget * _class_count(catalog))
        trials = planned_trials(settings, train)
        epochs = trials * settings.trial_epochs * settings.trial_repeats + FINAL_EPOCHS
        return epochs * train * HEAD_SECONDS, f"{trials} trials x {settings.trial_epochs} epochs + final head"

    def _finetune(self, catalog: Catalog, rate: float, source: str, label: str,
                  budget: int | None = None) -> tuple[float, str]:
        settings = self.context.config.finetune
        key = (f"{label}@finetune{'' if budget is None else f'/{budget}'}", source)
        train_size = settings.input_size or 224
        eval_size = settings.eval_input_size or train_size
        seconds = 0.0
        if key not in self._embedded:
            self._embedded.add(key)
            source_catalog = self.context.catalog(self.context.dataset(source))
            train = _train_count(source_catalog)
            per_class = budget if budget is not None else settings.train_per_class
            if per_class is not None:
                train = min(train, per_class * _class_count(source_catalog))
            train_rate = rate * (224 / train_size) ** 2 / TRAIN_SLOWDOWN
            seconds += settings.epochs * train / train_rate
        seconds += len(catalog) / (rate * (224 / eval_size) ** 2)
        return seconds, f"fine-tune {settings.epochs} epoch(s) at {train_size} px, embed at {eval_size} px"


def _class_count(catalog: Catalog) -> int:
    return len({item.label for item in catalog.items if item.split == "train"}) or 1


def _train_count(catalog: Catalog) -> int:
    train = sum(1 for item in catalog.items if item.split == "train")
    return train or int(len(catalog) * 0.6)
