"""What a strategy is: a declared object the runner, leaderboard, report and recommendation all read.

A ``Strategy`` says its name, its cost tier (no training / head only / full training), whether its
result depends on the seed, what it reads (the classification splits), what it produces (a tuned
model another dataset can borrow: cross-tuning), the config section it takes, how the runner prepares
a cell (a tuned model to evaluate) and how it scores one. Each lives in its own module of this package
and the registry (``strategies.REGISTRY``) lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
    from shelfsight.bench.context import RunContext

NO_TRAINING, HEAD_ONLY, FULL_TRAINING = 0, 1, 2
TIER_NAMES = {NO_TRAINING: "no training", HEAD_ONLY: "head only", FULL_TRAINING: "full training"}
CLASSIFICATION = "classification"
TUNING_RECORD = "tuning.json"
"""Costs and details of a top-tuned head, next to it, so cross-tuning can quote them."""

Scores = dict[str, dict[str, float]]


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
    options: dict[str, Any]
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


@dataclass(frozen=True)
class CellRequest:
    """One cell as a strategy's ``prepare`` sees it."""

    context: RunContext
    cell: Cell
    model: ModelEntry
    dataset: BenchDataset
    seed: int
    progress: bool

    @property
    def source(self) -> str | None:
        """For a cross-tuning cell (``toptune@A``): the dataset the model was tuned on."""
        return parse_strategy(self.cell.strategy)[1]


def no_settings(config: BenchConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Strategy:
    """One strategy, declared once."""

    name: str
    tier: int
    stochastic: bool
    description: str
    run: Callable[[StrategyInputs], StrategyOutput]
    settings: Callable[[BenchConfig], dict[str, Any]] = no_settings
    """The config values that decide its numbers (part of every cell's key)."""
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
