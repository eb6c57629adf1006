"""Assemble the report's content from a run folder: every section computed once, from stored results
only, then rendered to HTML and Markdown. A section that cannot be drawn says why."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH, task_metric
from shelfsight.bench.compare import FamilySettings
from shelfsight.bench.leaderboard import TIED, leaderboard_frames, metric_columns
from shelfsight.bench.recommend import TIERS, Recommendations, recommend
from shelfsight.bench.significance import PairedTests
from shelfsight.bench.table import datasets, main_metric, main_protocol, retrieval_protocols
from shelfsight.report import figures
from shelfsight.report.analysis import ADAPTATIONS, adaptation_gains, cross_tuning, family_gains, quality_and_cost
from shelfsight.report.data import RunData
from shelfsight.report.images import Thumbnails
from shelfsight.report.paired import family_for_report
from shelfsight.report.sections import Plot, Section, build_sections

CATEGORY_SPREAD = 0.01
"""Cosine spread of a query's same-class top neighbours under which a ranking tells the category, not the look-alike
(the issue-27 catalogue: 0.979-0.982 across a whole category with top-tuned vectors)."""
CATEGORY_QUERIES = 3
"""Fewest example queries (with two or more same-class neighbours) behind a category-ranking warning."""
CATEGORY_RULE = ("Top-tuning on category labels teaches the embedding the category: its scores within a category "
                 "bunch together, so it ranks by category, not by look-alike. For look-alike search serve the "
                 "pre-trained embedding, or tune on product ids.")
MAX_GRID_ROWS = 12
"""Model x strategy rows per retrieval grid: the best ones by the main metric, so the page stays light."""
TOP_CONFUSIONS = 10


@dataclass(frozen=True)
class BoardCell:
    metric: str
    value: float
    std: float
    best: bool
    low: float = math.nan
    high: float = math.nan
    """The 95% interval, shown for the ranking metric (the first column)."""
    tied: bool = False
    """Not significantly below the column's best (paired test, Holm-corrected over the run's family)."""

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


@dataclass(frozen=True)
class Board:
    """One leaderboard table: a dataset and protocol, rows (model, strategy), best per column marked."""

    dataset: str
    protocol: str
    metrics: list[str]
    rows: list[tuple[str, str, list[BoardCell]]]

    @property
    def ranked(self) -> bool:
        return self.protocol != "cost"


@dataclass(frozen=True)
class Neighbour:
    uri: str
    key: str
    relevant: bool
    score: float


@dataclass(frozen=True)
class GridRow:
    label: str
    value: float
    neighbours: list[Neighbour]

    @property
    def hits(self) -> int:
        return sum(n.relevant for n in self.neighbours)


@dataclass(frozen=True)
class GridQuery:
    query: str
    key: str
    uri: str
    rows: list[GridRow]


@dataclass(frozen=True)
class Grid:
    dataset: str
    protocol: str
    metric: str
    queries: list[GridQuery]
    note: str = ""


@dataclass(frozen=True)
class Confusion:
    dataset: str
    label: str
    accuracy: float
    seeds: int
    classes: int
    plot: Plot
    top: list[tuple[str, str, int]]
    """(true class, predicted class, count), the most frequent mistakes first."""


@dataclass
class Report:
    """Everything the renderings show; ``absent`` maps a section id to why it is empty."""

    run: RunData
    generated: str
    recommendations: Recommendations
    boards: list[Board]
    bars: list[Plot]
    gains: pd.DataFrame
    family_gains: pd.DataFrame
    gains_plot: Plot | None
    cost_plots: list[Plot]
    cross_plots: list[Plot]
    grids: list[Grid]
    confusions: list[Confusion]
    index_recall: pd.DataFrame
    thumbnails_missing: int
    absent: dict[str, str] = field(default_factory=dict)
    extras: list[Section] = field(default_factory=list)
    """Sections from ``shelfsight.report.sections`` that have something to show for this run."""
    family: str = ""
    """The run's one Holm family: its size, alpha and what it holds."""
    category: dict[tuple[str, str], str] = field(default_factory=dict)
    """(dataset, model) -> a warning that the model's top-tuned vectors rank by category (``category_ranking``)."""

    def category_of(self, dataset: str) -> list[str]:
        return [warning for (where, _), warning in sorted(self.category.items()) if where == dataset]

    def category_answers(self) -> list[str]:
        """The category warning of the recommended visual search, when it is top-tuned and flagged: first screen."""
        return [f"{rec.dataset}, recommended {rec.best.label}: {self.category[(rec.dataset, rec.best.model)]}"
                for rec in self.recommendations.items
                if rec.task == VISUAL_SEARCH and rec.tier.name == TIERS[-1].name and rec.best is not None
                and (rec.dataset, rec.best.model) in self.category
                and rec.best is not None and rec.best.strategy == registry.toptune.NAME]

    @property
    def scope(self) -> list[str]:
        """What the tables hold and how they were tested: the family, stale cells, a run stopped half-way."""
        return [*([self.family] if self.family else []), *self.run.scope_notes]

    @property
    def plots(self) -> list[Plot]:
        """Every figure, in page order: these are also written to ``figures/`` and logged to MLflow."""
        return [*self.bars, *([self.gains_plot] if self.gains_plot else []), *self.cost_plots, *self.cross_plots,
                *(c.plot for c in self.confusions), *(p for s in self.extras for p in s.plots)]

    @property
    def datasets(self) -> list[str]:
        return datasets(self.run.table)

    @property
    def single_seed(self) -> bool:
        return bool(len(self.run.table)) and int(self.run.table["n"].max()) <= 1


def slug(*parts: str) -> str:
    """A name safe in file names and HTML ids."""
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in part) for part in parts)


def build(run: RunData, progress: Callable[[str], None] | None = None) -> Report:
    """Compute every section of the report for ``run``."""
    say = progress or (lambda _: None)
    table = run.table
    strategies = sorted(str(s) for s in table["strategy"].unique())
    colours = figures.strategy_colours([*strategies, *ADAPTATIONS])
    absent: dict[str, str] = {}
    say("paired tests")
    settings = FamilySettings.of(run.config.get("stats"))
    tests = family_for_report(run.run_dir, settings)
    say("recommendation")
    recs = recommend(table, PairedTests(tests.family, settings))
    say("leaderboard")
    boards = _boards(table, tests.significance)
    say("charts")
    bars = [Plot(f"bars-{slug(d)}", d, png) for d in datasets(table)
            if (png := figures.dataset_bars(table, d, colours)) is not None]
    gains = adaptation_gains(table)
    gains_png = figures.gains_chart(gains, {a: colours[a] for a in ADAPTATIONS})
    gains_plot = Plot("gains", "Gain over the pre-trained embedding", gains_png) if gains_png else None
    if gains_plot is None:
        absent["gains"] = (f"no backbone has both a {registry.baseline().name} cell and a {registry.toptune.NAME} "
                           f"or {registry.finetune.NAME} cell with retrieval results on the same dataset")
    cost_plots = _cost_plots(table, colours)
    if not cost_plots:
        absent["cost"] = "no cost rows in the results table"
    cross_plots = [Plot(f"cross-{slug(model, tuned)}", f"{model} · {tuned}",
                        figures.heatmap(matrix, f"{model}: {tuned} on one dataset, evaluated on another",
                                        "main retrieval metric"))
                   for (model, tuned), matrix in cross_tuning(table).items()]
    if not cross_plots:
        absent["cross-tuning"] = ("no cross-tuning cells in this run: strategies named "
                                  f"{registry.toptune.NAME}@<dataset> or {registry.finetune.NAME}@<dataset> "
                                  "evaluate a head or backbone tuned on another dataset")
    say("retrieval grids")
    thumbnails = Thumbnails()
    grids = [grid for d in datasets(table) if (grid := _grid(run, d, thumbnails)) is not None]
    if not grids:
        absent["retrieval-examples"] = ("no cell records example queries (details[protocol]['examples']); runs "
                                        "made before the report existed lack them: re-run the bench")
    say("confusion matrices")
    confusions = [c for d in datasets(table) if (c := _confusion(run, recs, d)) is not None]
    if not confusions:
        absent["confusion"] = ("no classification cell with a confusion matrix (strategies "
                               f"{registry.linear.NAME}, {registry.knn.NAME}, {registry.toptune.NAME}, "
                               f"{registry.finetune.NAME} record one)")
    recall = _index_recall(table)
    if recall.empty:
        absent["index-recall"] = "no index_recall rows: no retrieval cell finished"
    say("extra sections")
    extras = build_sections(run)
    return Report(run=run, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  recommendations=recs, boards=boards, bars=bars, gains=gains, family_gains=family_gains(gains),
                  gains_plot=gains_plot, cost_plots=cost_plots, cross_plots=cross_plots, grids=grids,
                  confusions=confusions, index_recall=recall, thumbnails_missing=len(thumbnails.missing),
                  absent=absent, extras=extras, family=tests.describe(), category=category_ranking(run))


def category_ranking(run: RunData) -> dict[tuple[str, str], str]:
    """(dataset, model) -> the warning when the model's top-tuned vectors rank by category: on the main protocol's
    example queries (``CATEGORY_QUERIES`` or more), the median spread (max - min cosine) of a query's same-class top
    neighbours is under ``CATEGORY_SPREAD`` and under a fifth of the same model's pre-trained spread."""
    found = {}
    for dataset in datasets(run.table):
        protocol = main_protocol(run.table, dataset)
        spreads = {(c.cell.model, c.cell.strategy): spread for c in run.cells
                   if c.status == "ok" and c.cell.dataset == dataset and protocol is not None
                   and (spread := _same_class_spread(c.details.get(protocol))) is not None}
        for (model, strategy), (width, queries) in sorted(spreads.items()):
            pretrained = spreads.get((model, registry.baseline().name))
            if strategy != registry.toptune.NAME or pretrained is None or queries < CATEGORY_QUERIES:
                continue
            if width < CATEGORY_SPREAD and width < pretrained[0] / 5:
                found[(dataset, model)] = (
                    f"{model}'s top-tuned vectors rank by category: a query's same-class top neighbours sit within "
                    f"{_cosine(width)} cosine of each other (median over {queries} example queries; pre-trained: "
                    f"{_cosine(pretrained[0])}), so their scores cannot tell a look-alike from any item of its "
                    "category. For look-alike search, serve the pre-trained embedding, or tune on product ids.")
    return found


def _cosine(value: float) -> str:
    return f"{value:.3f}" if value >= 0.0005 else "<0.001"


def _same_class_spread(details: Any) -> tuple[float, int] | None:
    """(median spread, queries) of the relevant neighbours' scores over the stored example queries (two or more
    relevant neighbours with scores); None when the details carry none."""
    examples = details.get("examples") if isinstance(details, dict) else None
    spreads = []
    for example in examples or []:
        scores = [float(n["score"]) for n in example.get("neighbours", [])
                  if n.get("relevant") and isinstance(n.get("score"), int | float) and math.isfinite(n["score"])]
        if len(scores) >= 2:
            spreads.append(max(scores) - min(scores))
    return (float(np.median(spreads)), len(spreads)) if spreads else None


def _boards(table: pd.DataFrame, significance: pd.DataFrame | None) -> list[Board]:
    """The leaderboard's frames, in protocol order (main retrieval first, then classification, then cost)."""
    frames = leaderboard_frames(table, significance)
    boards = []
    for dataset in datasets(table):
        for protocol in [*retrieval_protocols(table, dataset), "classification", "cost"]:
            frame = frames.get((dataset, protocol))
            if frame is None:
                continue
            metrics = metric_columns(frame)
            best = {m: (math.nan if protocol == "cost" else frame[m].max()) for m in metrics}
            ranked = protocol != "cost"
            rows = [(str(model), str(strategy),
                     [BoardCell(m, float(row[m]), float(row[f"{m} std"]), bool(row[m] == best[m]),
                                float(row[f"{m} low"]) if ranked and i == 0 else math.nan,
                                float(row[f"{m} high"]) if ranked and i == 0 else math.nan,
                                bool(row[TIED]) and ranked and i == 0 and row[m] != best[m])
                      for i, m in enumerate(metrics)])
                    for (model, strategy), row in frame.iterrows()]
            boards.append(Board(dataset, protocol, [str(m) for m in metrics], rows))
    return boards


def _cost_plots(table: pd.DataFrame, colours: dict[str, str]) -> list[Plot]:
    plots = []
    for dataset in datasets(table):
        for task in (VISUAL_SEARCH, AUTO_TAGGING):
            decided = task_metric(table, task, dataset)
            if decided is None:
                continue
            protocol, metric = decided
            frame = quality_and_cost(table, dataset, protocol, metric)
            png = figures.cost_chart(frame, f"{dataset} · {task} · {protocol} {metric}", colours)
            if png is not None:
                plots.append(Plot(f"cost-{slug(dataset, task)}", f"{dataset} · {task}", png,
                                  f"{protocol} {metric} against each cost; dashed: the Pareto front"))
    return plots


def _grid(run: RunData, dataset: str, thumbnails: Thumbnails) -> Grid | None:
    """The same seeded queries for every model and strategy, best rows first, on the main protocol."""
    table = run.table
    protocol = main_protocol(table, dataset)
    metric = main_metric(table, dataset, protocol) if protocol else None
    if protocol is None or metric is None:
        return None
    ranking = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
    ranking = ranking.sort_values("mean", ascending=False)
    examples: list[tuple[str, float, dict[str, Any]]] = []
    for row in ranking.itertuples():
        cells = run.cells_of(str(row.model), dataset, str(row.strategy))
        stored = cells[0].details.get(protocol, {}).get("examples") if cells else None
        if stored:
            label = f"{row.model} · {row.strategy}" + (f" (seed {cells[0].cell.seed})" if row.n > 1 else "")
            examples.append((label, float(row.mean), {e["query"]: e for e in stored}))
    if not examples:
        return None
    note = ""
    if len(examples) > MAX_GRID_ROWS:
        note = f"the best {MAX_GRID_ROWS} of {len(examples)} model x strategy rows by {metric}"
        examples = examples[:MAX_GRID_ROWS]
    queries = []
    for query_id, first in examples[0][2].items():
        rows = [GridRow(label, value, [Neighbour(thumbnails.uri(n.get("path", "")), str(n.get("key", "")),
                                                 bool(n.get("relevant")), float(n.get("score", math.nan)))
                                       for n in by_query[query_id]["neighbours"]])
                for label, value, by_query in examples if query_id in by_query]
        queries.append(GridQuery(query_id, str(first.get("query_key", "")), thumbnails.uri(first.get("query_path", "")),
                                 rows))
    return Grid(dataset, protocol, metric, queries, note)


def _confusion(run: RunData, recs: Recommendations, dataset: str) -> Confusion | None:
    """The best classifier of any budget, its confusion matrices summed over seeds."""
    best = recs.get(AUTO_TAGGING, dataset, TIERS[-1].name).best
    if best is None:
        return None
    stored = [c.details["confusion"] for c in run.cells_of(best.model, dataset, best.strategy)
              if isinstance(c.details.get("confusion"), dict)]
    if not stored:
        return None
    classes = [str(c) for c in stored[0]["classes"]]
    same = [s for s in stored if [str(c) for c in s["classes"]] == classes]
    counts = np.sum([np.asarray(s["matrix"], dtype=np.int64) for s in same], axis=0)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:TOP_CONFUSIONS]
    top = [(classes[i], classes[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape), strict=True)
           if off[i, j] > 0]
    title = f"{dataset}: {best.label} ({len(same)} seed{'s' if len(same) > 1 else ''})"
    plot = Plot(f"confusion-{slug(dataset)}", title, figures.confusion_chart(classes, counts.tolist(), title),
                "rows: true class, columns: predicted; colour: share of the true class")
    return Confusion(dataset, best.label, best.mean, len(same), len(classes), plot, top)


def _index_recall(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and protocol: the vector database's recall@k against exact search, over all cells."""
    rows = table[table["metric"].astype(str).str.startswith("index_recall")]
    if rows.empty:
        return pd.DataFrame(columns=["dataset", "protocol", "metric", "min", "mean", "cells"])
    grouped = rows.groupby(["dataset", "protocol", "metric"], sort=True)["mean"]
    return grouped.agg(min="min", mean="mean", cells="count").reset_index()
