"""What a strategy is: a declared object the runner, leaderboard, report and recommendation all read.

A ``Strategy`` says its name, its cost tier (no training / head only / full training), whether its
result depends on the seed, what it reads (the classification splits), what it produces (a tuned
model another dataset can borrow: cross-tuning), the config section it owns and the ones it reads, its cost
estimate, where label budgets apply, how the runner prepares a cell (a tuned model to evaluate) and how it
scores one. Each lives in its own module of this package and the registry (``strategies.REGISTRY``) lists them.

Nothing here knows the bench's config or runner: a strategy sees its config sections (validated objects, by
section name), a ``CellRequest`` whose ``services`` make the tuned models, and ``StrategyInputs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pandas as pd

from shelfsight.bench.evaluate import IndexFactory
from shelfsight.bench.leakage import DedupePolicy, DuplicateDecision
from shelfsight.bench.results import Cell
from shelfsight.catalog import Catalog
from shelfsight.embeddings import Embeddings

if TYPE_CHECKING:
    import torch

    from shelfsight.adapt import MLPHead
    from shelfsight.backbones import Backbone

NO_TRAINING, HEAD_ONLY, FULL_TRAINING = 0, 1, 2
TIER_NAMES = {NO_TRAINING: "no training", HEAD_ONLY: "head only", FULL_TRAINING: "full training"}
CLASSIFICATION = "classification"
TUNING_RECORD = "tuning.json"
"""Costs and details of a top-tuned head, next to it, so cross-tuning can quote them."""

Scores = dict[str, dict[str, float]]
Sections = Mapping[str, Any]
"""Config sections by name (``toptune``, ``compress``...): the validated objects a strategy's settings and runs read."""
CostParts = list[tuple[float, str]]
"""Seconds and what they are spent on (``"fine-tune 3 epoch(s)..."``), as the run's plan shows them."""


@dataclass(frozen=True)
class ConfigSection:
    """A strategy's top-level section of the bench config (``toptune:``): its name and the class that validates it
    (a dataclass or pydantic model whose defaults are the section's). A ``seed`` field is the cell's, never given."""

    name: str
    model: type[Any]
    renamed: tuple[tuple[str, str], ...] = ()
    """(old, new) dotted paths from the config's top level of settings renamed: the old one is refused, naming the
    new (``("knn_k", "knn.k")``)."""


@dataclass(frozen=True)
class StrategyInputs:
    """Everything a strategy reads; ``workdir`` is where it may keep resumable state (studies, heads)."""

    dataset: str
    catalog: Catalog
    embeddings: Embeddings
    make_index: IndexFactory
    collection_prefix: str
    k: int
    ks: tuple[int, ...]
    seed: int
    workdir: Path
    sections: Sections
    """The config sections the running strategy reads (``Strategy.sections``)."""
    progress: bool = False
    tuned: TunedModel | None = None
    """For ``finetune`` and cross-tuning cells: the tuned model the runner prepared."""
    protocol_tuned: dict[str, tuple[TunedModel, Embeddings]] = field(default_factory=dict)
    """For ``finetune`` on class-disjoint protocols: the backbone tuned on the protocol's training items
    and the catalogue embedded with it, by protocol name."""
    keep_collections: bool = False
    dedupe: DedupePolicy | DuplicateDecision | None = None
    """What to do about queries with a duplicate in their gallery (the config's ``dedupe``; with a near-duplicate
    threshold, the run's decision for the dataset, the same for every cell)."""
    label_budget: int | None = None
    """For a label-budget cell (``linear/5``): the labelled training photos per class it may learn from, a
    seeded draw nested across budgets (``adapt.splits.at_most_per_class``); validation and test untouched."""
    retrieval_protocols: tuple[str, ...] | None = None
    """The retrieval protocols to score (None: every protocol of the dataset)."""
    same_group: Literal["exclude", "keep"] = "exclude"
    """Whether a query's own group's photos are left out of its ranking (the dataset's ``same_group``)."""
    recall_queries: int | None = None
    """Queries the index answers per protocol for its recall against exact search (the config's
    ``index.recall_queries``; None: ``evaluate.RECALL_QUERIES``; 0: no index, no recall row)."""


@dataclass(frozen=True)
class TunedModel:
    """A model tuned on ``dataset``: a top-tuned head (applied to the cell's frozen embeddings) or a
    fine-tuned backbone (which computed the cell's embeddings; its cosine head classifies them)."""

    kind: str
    """The strategy that tuned it."""
    dataset: str
    path: Path
    costs: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    head: MLPHead | None = None
    class_weights: torch.Tensor | None = None
    classes: tuple[str, ...] = ()
    learned_from: tuple[str, ...] = ()
    """Ids of the items it trained and early-stopped on (checked against class-disjoint protocols)."""


@dataclass(frozen=True)
class StrategyOutput:
    """Scores per protocol (classification under ``classification``), costs, details, and the per-query
    scores of every protocol (``ResultStore`` layout)."""

    scores: Scores
    costs: dict[str, float]
    details: dict[str, Any]
    per_query: pd.DataFrame


@dataclass(frozen=True)
class Prepared:
    """What the runner hands a cell: the backbone that embeds the catalogue, the tuned model it evaluates,
    and per-protocol tuned backbones for class-disjoint protocols."""

    backbone: Backbone
    tuned: TunedModel | None = None
    protocol_tuned: dict[str, tuple[TunedModel, Embeddings]] = field(default_factory=dict)


class TuningServices(Protocol):
    """What a strategy's ``prepare`` and ``carry`` ask of the run (``bench.tuned.TunedModels``): models by their
    label, datasets by their name; each tuned model made once per run and read back from its work folder."""

    def backbone(self, model: str, seed: int) -> Backbone: ...

    def catalog(self, dataset: str) -> Catalog: ...

    def claim_work(self, cell: Cell, seed: int) -> Path:
        """The cell's work folder, cleared first when it holds work made from other inputs."""
        ...

    def toptuned(self, model: str, source: str, seed: int, progress: bool) -> TunedModel: ...

    def finetuned(self, model: str, source: str, seed: int, progress: bool,
                  budget: int | None = None) -> tuple[TunedModel, Backbone]: ...

    def protocol_finetuned(self, model: str, dataset: str, tuned: TunedModel, seed: int, progress: bool,
                           budget: int | None = None) -> dict[str, tuple[TunedModel, Embeddings]]: ...


@dataclass(frozen=True)
class CellRequest:
    """One cell as a strategy's ``prepare`` sees it."""

    services: TuningServices
    cell: Cell
    seed: int
    progress: bool
    workdir: Path
    sections: Sections
    """The config sections the strategy reads."""

    @property
    def model(self) -> str:
        """The model's label."""
        return self.cell.model

    @property
    def dataset(self) -> str:
        return self.cell.dataset

    @property
    def source(self) -> str | None:
        """For a cross-tuning cell (``toptune@A``): the dataset the model was tuned on."""
        return parse_strategy(self.cell.strategy)[1]


@dataclass(frozen=True)
class CostQuery:
    """What a strategy's cost estimate reads (``bench.estimate`` fills it; the generic parts, extraction and
    scoring, are estimated there)."""

    catalog: Catalog
    trained_on: Catalog
    """The catalogue its model learns from: the cell's, or the source's for a cross-tuning cell."""
    sections: Sections
    rate: float
    """Images/s the backbone extracts at 224 px (measured by an earlier run, else derived from its GFLOPs)."""
    budget: int | None
    carried: bool
    """A cross-tuning cell (``toptune@A``): its model is tuned by another cell."""
    first: bool
    """The first cell of the plan to need this tuned model (later ones read it back)."""


def no_settings(sections: Sections) -> dict[str, Any]:
    return {}


def no_cost(query: CostQuery) -> CostParts:
    return []


def train_count(catalog: Catalog) -> int:
    """Training photos (60 % of the catalogue when it has no training split)."""
    train = sum(1 for item in catalog.items if item.split == "train")
    return train or int(len(catalog) * 0.6)


def class_count(catalog: Catalog) -> int:
    return len({item.label for item in catalog.items if item.split == "train"}) or 1


@dataclass(frozen=True)
class Strategy:
    """One strategy, declared once."""

    name: str
    tier: int
    stochastic: bool
    description: str
    run: Callable[[StrategyInputs], StrategyOutput]
    section: ConfigSection | None = None
    """The config section it owns (``toptune:``), validated by the config and handed to it."""
    reads: tuple[str, ...] = ()
    """Other strategies' sections it reads too (``compress-toptune``: ``compress`` and ``toptune``)."""
    settings: Callable[[Sections], dict[str, Any]] = no_settings
    """The config values that decide its numbers (part of every cell's key), from its sections."""
    estimate: Callable[[CostQuery], CostParts] = no_cost
    """Its own work's cost (training, fitting, compressing); extraction and scoring are estimated for all."""
    frozen_embedding: bool = True
    """Embeds with the frozen backbone (``finetune``: with its tuned one, which its estimate includes)."""
    prepare: Callable[[CellRequest], Prepared] | None = None
    """Builds what a cell evaluates (default: the frozen backbone)."""
    carry: Callable[[CellRequest], Prepared] | None = None
    """For strategies whose tuned model other datasets can evaluate (``NAME@SOURCE`` cells)."""
    classifies: bool = False
    """Reads the classification splits (its validation part may be a seeded draw)."""
    adaptation: bool = False
    """An adaptation of the pre-trained embedding, whose gain the report shows per backbone family."""
    baseline: bool = False
    """The frozen embedding itself, the point every adaptation is measured from."""
    expands: bool = False
    """Expands into ``NAME@SOURCE`` cells of the carried strategies (cross-tuning)."""
    budgeted: bool = False
    """Learns from the training labels, so a label-efficiency curve can limit them (``KIND/N`` cells)."""
    budget_default: bool = True
    """For a budgeted strategy: limited by default when the config runs it (``finetune``: costly, named to have it)."""
    zero_label_reference: bool = False
    """Learns from no label: the zero-label level of the label-efficiency curves (pretrained, zeroshot)."""
    budget_compared_with: str | None = None
    """The strategy its label-budget cells are tested against at each budget (``toptune``: ``linear``)."""

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections it reads: its own, then those it borrows."""
        return ((self.section.name,) if self.section is not None else ()) + self.reads

    @property
    def tier_name(self) -> str:
        return TIER_NAMES[self.tier]


BUDGET_MARK = "/"
"""A label-budget cell's strategy is ``KIND/N``: ``KIND`` trained on N labelled photos per class."""


def parse_strategy(strategy: str) -> tuple[str, str | None]:
    """``toptune@fashion-mnist`` -> ``("toptune", "fashion-mnist")``; ``linear`` and the label-budget cell
    ``linear/5`` -> ``("linear", None)``."""
    kind, _, source = strategy.partition("@")
    return split_budget(kind)[0], source or None


def budget_strategy(kind: str, per_class: int) -> str:
    """The strategy name of ``kind`` trained on ``per_class`` labelled photos per class: ``linear/5``."""
    return f"{kind}{BUDGET_MARK}{per_class}"


def split_budget(strategy: str) -> tuple[str, int | None]:
    """``linear/5`` -> ``("linear", 5)``; any other name -> ``(name, None)``."""
    kind, mark, budget = strategy.partition(BUDGET_MARK)
    return (kind, int(budget)) if mark and budget.isdigit() else (strategy, None)
