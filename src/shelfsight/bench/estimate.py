"""The run's plan before its first cell: what each cell will cost, from measured rates where there are any.

A cell's cost is mostly extraction (only the photos the per-photo cache lacks, at the rate the last
extraction of that backbone measured, else one derived from its GFLOPs), scoring (per retrieval protocol: the
exact ranking of every query, and the vector database's insert, build and sampled search at the engine's measured
rates: ``index_costs``) and the strategy's own work, which its ``estimate`` says (``Strategy.estimate``:
top-tuning's trials x epochs x training photos, fine-tuning's epochs at the training input size...). The
constants were measured on a 2-core CPU; during the run the estimate of the cells left is scaled by how the
finished ones compared with theirs, so the ETA corrects itself. A protocol whose gallery is past what Milvus Lite
handles well (:data:`LITE_GALLERY_LIMIT`) is a warning of the plan, with the command that starts a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shelfsight.backbones import Backbone
from shelfsight.bench import strategies
from shelfsight.bench.config import BenchConfig, BenchDataset, IndexConfig, ModelEntry
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import CostQuery, parse_strategy, split_budget
from shelfsight.bench.strategy_inputs import scored_protocols
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings.extract import resolve_device, resolve_precision
from shelfsight.embeddings.plan import uncached_photos
from shelfsight.protocols import RetrievalProtocol

GFLOPS_RATE = 75.0
"""Images/s x GFLOPs/image (as torch's flop counter counts them, two per multiply-add) of exported CNNs on a
2-core CPU (efficientnet_lite0 at 224 px, 0.77 GFLOPs: about 100 images/s with ONNX Runtime): the extraction
rate assumed before any has been measured."""
CLASSIFY_SECONDS = 1e-4
"""Seconds per catalogue item for a classification-only cell (kNN, nearest class mean) besides its fitting."""
CELL_OVERHEAD = 2.0
DEFAULT_DIM = 1024
"""The embedding dimension assumed where a backbone's spec does not declare one."""

EXACT_FLOPS = 6e10
"""Multiply-adds x 2 per second of the exact ranking's blocked float32 products on the 2-core CPU (SOP size,
60,502 x 60,502 x 1,280: top-100 in 107 s quiet, ~88 GFLOP/s; 6e10 allows for a shared machine)."""
RANK_SECONDS = 2e-4
"""Seconds per query to rank its relevant items and score its metrics beside the products."""
LITE_GALLERY_LIMIT = 100_000
"""Gallery size past which Milvus Lite stops being practical on the 2-core CPU (issue 32's measurements): 100k
rows insert in 79 s quiet and 202 s loaded; at 300k the insert takes 269 s quiet, search 16 s per 1,000 queries
and 8.2 GB of memory, and a loaded machine did not finish in 10 minutes. A server holds 300k in ~5 GB."""


@dataclass(frozen=True)
class EngineRates:
    """One vector database's measured costs on the 2-core CPU (``benchmarks/scale.py``; docs/scaling.md)."""

    insert_rows_per_second: float
    per_query: float
    """Seconds per query at k = 100 besides the scan (Milvus Lite: Python work per hit, so it grows with k)."""
    per_query_row: float
    """Seconds per query per gallery row (a FLAT scan; an IVF index scans nprobe / nlist of the rows)."""
    build_rows_per_second: float | None = None
    """Index build rate; None where nothing is built beyond the inserted rows (FLAT)."""


ENGINE_RATES: dict[tuple[str, str], EngineRates] = {
    ("milvus-lite", "FLAT"): EngineRates(1_100, 7.5e-3, 28e-9),
    ("milvus-lite", "IVF_FLAT"): EngineRates(1_100, 7.5e-3, 2.8e-9, 5_000),
    ("milvus-lite", "HNSW"): EngineRates(1_100, 7.5e-3, 0.0, 250),
    ("milvus", "FLAT"): EngineRates(4_400, 1e-3, 3.5e-7),
    ("milvus", "IVF_FLAT"): EngineRates(4_400, 1e-3, 7.2e-8, 1_000),
    ("milvus", "HNSW"): EngineRates(4_400, 2.3e-3, 0.0, 530),
    ("milvus", "IVF_PQ"): EngineRates(4_400, 1e-3, 1.5e-8, 250),
}
"""(backend, index type) -> rates. Issue 32 (quiet): Milvus Lite inserts ~1,100 rows/s and spends ~7.5 ms of
per-hit Python work per query at k = 100 plus 28 ns per gallery row (FLAT); the server inserts ~4,400 rows/s, at
100k rows answers 1,000 queries at k = 100 in 35 s FLAT, 7.2 s IVF_FLAT, 2.3 s HNSW, and builds HNSW on 300k rows
in ~570 s. Build rates otherwise from ``benchmarks/scale.py`` at 10k-30k rows (docs/scaling.md, loaded machine):
Lite HNSW 10k in 50 s, IVF_FLAT 30k in 6 s; server IVF_FLAT 30k in 29 s, IVF_PQ 30k in 120 s."""


@dataclass(frozen=True)
class ProtocolLoad:
    """A retrieval protocol's side sizes in a catalogue."""

    name: str
    queries: int
    gallery: int


def protocol_sizes(protocols: tuple[RetrievalProtocol, ...], catalog: Catalog) -> list[ProtocolLoad]:
    """Queries and gallery items of each protocol (every photo counted: skipped files are not known yet)."""
    sizes = []
    for protocol in protocols:
        counted = [item for item in catalog if protocol.takes_part(item)]
        sizes.append(ProtocolLoad(protocol.name, sum(item.split in protocol.query_splits for item in counted),
                                  sum(item.split in protocol.gallery_splits for item in counted)))
    return sizes


def scoring_seconds(size: ProtocolLoad, index: IndexConfig, *, depth: int, dim: int) -> tuple[float, str]:
    """(seconds, what) to score one protocol: the exact ranking of every query, the index's insert and build of
    the gallery, and its search of the recall sample (``index.recall_queries``; none when 0) at ``depth``."""
    exact = 2.0 * size.queries * size.gallery * dim / EXACT_FLOPS + RANK_SECONDS * size.queries
    sampled = min(size.queries, index.recall_queries)
    rates = ENGINE_RATES.get((index.backend, index.type))
    if sampled == 0:  # no index is made (index.recall_queries: 0)
        database = 0.0
    elif rates is None:  # exact or FAISS: the sample costs what the exact ranking costs per query
        database = exact * sampled / max(size.queries, 1)
    else:
        hits = depth / 100 if index.backend == "milvus-lite" else 1.0
        database = size.gallery / rates.insert_rows_per_second \
            + (size.gallery / rates.build_rows_per_second if rates.build_rows_per_second else 0.0) \
            + sampled * (rates.per_query * hits + rates.per_query_row * size.gallery)
    return exact + database, f"{size.name}: {size.queries:,} x {size.gallery:,}"


def engine_warning(dataset: str, size: ProtocolLoad, index: IndexConfig) -> str | None:
    """Why and how to move to a server, when a protocol's gallery is past Milvus Lite's measured comfort."""
    if index.backend != "milvus-lite" or size.gallery <= LITE_GALLERY_LIMIT or index.recall_queries == 0:
        return None
    return (f"{dataset} · {size.name}: a gallery of {size.gallery:,} items is past what Milvus Lite handles well on "
            f"this machine (~{LITE_GALLERY_LIMIT:,}: at 300k its insert takes minutes and 8 GB of memory); run a "
            "Milvus server instead: `shelfsight milvus start --data DIR` (it prints its URI), then "
            "`index: {backend: milvus, uri: http://127.0.0.1:19530}` in the config")


@dataclass(frozen=True)
class CellEstimate:
    """What a cell will do and about how long it will take (0 for a reused cell)."""

    seconds: float
    work: str
    warnings: tuple[str, ...] = field(default=())
    """What the plan should say before the run (a gallery past Milvus Lite's comfort, with the fix)."""


class RunEstimator:
    """Estimates cells in plan order: each (backbone, dataset) extraction, and each tuned model's training, is
    charged to its first cell."""

    def __init__(self, config: BenchConfig, provision: Provision) -> None:
        self.config = config
        self.provision = provision
        self._embedded: set[tuple[str, str]] = set()
        self._trained: set[tuple[str, str, str, int | None]] = set()
        self._counts: dict[tuple[int, str], tuple[int, dict[str, object]]] = {}
        self._sizes: dict[tuple[int, str], list[ProtocolLoad]] = {}

    def estimate(self, cell: Cell, model: ModelEntry, dataset: BenchDataset) -> CellEstimate:
        kind, source = parse_strategy(cell.strategy)
        catalog = self.provision.catalog(dataset)
        backbone = self.provision.backbone(model, self.provision.seed_of(cell))
        rate = self._rate(backbone, catalog)
        strategy = strategies.get(kind)
        retrieves = strategy.baseline or strategy.adaptation or source is not None
        warnings: tuple[str, ...] = ()
        if retrieves:
            sizes = self._scored(cell, dataset, catalog)
            dim = backbone.spec.embed_dim or DEFAULT_DIM
            scoring = sum(scoring_seconds(size, self.config.index, depth=self.config.retrieval.k, dim=dim)[0]
                          for size in sizes)
            warnings = tuple(w for size in sizes if (w := engine_warning(dataset.name, size, self.config.index)))
        else:
            scoring = CLASSIFY_SECONDS * len(catalog)
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
        if parts[0][0] >= 60:
            work = f"score {parts[0][0] / 60:.0f} min" + (f", {work}" if work != "scoring" else "")
        return CellEstimate(seconds, work, warnings)

    def _scored(self, cell: Cell, dataset: BenchDataset, catalog: Catalog) -> list[ProtocolLoad]:
        """The sizes of the retrieval protocols the cell scores (counted once per dataset)."""
        key = (id(catalog), dataset.name)
        if key not in self._sizes:
            self._sizes[key] = protocol_sizes(protocols_for(dataset.name, catalog), catalog)
        scored = scored_protocols(self.config, cell.strategy, dataset.name, catalog)
        return [size for size in self._sizes[key] if scored is None or size.name in scored]

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
