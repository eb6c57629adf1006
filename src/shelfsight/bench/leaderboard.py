"""The leaderboard: per dataset and protocol, every model x strategy side by side, the best marked and every
cell not significantly below it marked as tied (``RUN/significance.csv``: paired tests, Holm-corrected over the
run's one family, ``bench.compare.Family``);
the ranking metric shows its 95% interval. Then, per dataset, an overview that sets each strategy's
quality beside what its training cost."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from shelfsight.bench import strategies
from shelfsight.bench.results import read_table

MAIN_METRICS = ("mMP@5", "R@1", "R@5", "MAP@R", "MRR", "NDCG@10", "MAP")
"""Retrieval columns in order; the first present one sorts the rows (mMP@5, the paper's main score)."""
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
COST_METRICS = ("params_m", "gflops_per_image", "embed_dim", "extract_images_per_s", "tune_seconds",
                "trials_completed", "trials_pruned", "epochs", "final_epochs", "train_images_per_s", "index_bytes",
                "cell_seconds")
COUNTS = ("trials_completed", "trials_pruned", "epochs", "final_epochs", "embed_dim")
"""Costs that are whole numbers: printed without decimals."""
SUFFIXES = (" std", " low", " high")
TIED = "tied with best"
LEGEND = ("Mean over seeds (± standard deviation when repeated; deterministic cells run once); the ranking "
          "metric (first column) shows its 95% bootstrap interval over queries in brackets. Best per column in "
          "bold; ≈ marks a cell not significantly below the best on the ranking metric (paired permutation test, "
          "Holm-corrected over the run's one family of comparisons, RUN/comparisons.csv).")
"""Costs are shown, not ranked: their better direction differs from column to column."""
OVERVIEW_COSTS = ("tune_seconds", "epochs", "train_images_per_s", "extract_images_per_s")
SIGNIFICANCE_FILE = "significance.csv"
"""Each cell against its column's best (written by ``bench.compare.write_significance``): the ≈ marks."""


def read_significance(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    path = Path(run_dir) / SIGNIFICANCE_FILE
    return pd.read_csv(path) if path.is_file() else None


def _columns(protocol: str, available: pd.Index) -> list[str]:
    if protocol == "cost":
        return [m for m in COST_METRICS if m in available]
    if protocol == "classification":
        return [m for m in CLASSIFICATION_METRICS if m in available]
    return [m for m in MAIN_METRICS if m in available] + sorted(c for c in available if c.startswith("index_recall"))


def leaderboard_frames(table: pd.DataFrame, significance: pd.DataFrame | None = None
                       ) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, protocol) -> rows (model, strategy), columns metric means, plus '<metric> std', '<metric> low'
    and '<metric> high' (the interval), and ``tied with best`` (bool) from the significance table."""
    frames = {}
    for (dataset, protocol), group in table.groupby(["dataset", "protocol"], sort=True):
        pivots = {column: group.pivot_table(index=["model", "strategy"], columns="metric", values=column,
                                            dropna=False, aggfunc="first")
                  for column in ("mean", "std", "ci_low", "ci_high")}
        metrics = _columns(str(protocol), pivots["mean"].columns)
        if not metrics:
            continue
        frame = pivots["mean"][metrics].dropna(how="all").copy()  # pivots hold every model x strategy pair
        for metric in metrics:
            frame[f"{metric} std"] = pivots["std"][metric].reindex(frame.index)
            frame[f"{metric} low"] = pivots["ci_low"][metric].reindex(frame.index)
            frame[f"{metric} high"] = pivots["ci_high"][metric].reindex(frame.index)
        frame[TIED] = _tied(frame.index, significance, str(dataset), str(protocol))
        frames[(str(dataset), str(protocol))] = frame if protocol == "cost" else frame.sort_values(metrics[0],
                                                                                                  ascending=False)
    return frames


def _tied(index: pd.Index, significance: pd.DataFrame | None, dataset: str, protocol: str) -> list[bool]:
    """Per row: the significance table says it is not significantly below the column's best."""
    if significance is None or significance.empty:
        return [False] * len(index)
    rows = significance[(significance["dataset"] == dataset) & (significance["protocol"] == protocol)]
    tied = {(str(r.model), str(r.strategy)) for r in rows.itertuples() if bool(r.tied)}
    return [(str(model), str(strategy)) in tied for model, strategy in index]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a leaderboard frame (not their spreads, intervals or flags)."""
    return [str(c) for c in frame.columns if c != TIED and not str(c).endswith(SUFFIXES)]


def overview_frames(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """dataset -> rows (model, strategy), columns: each protocol's main retrieval metric, test accuracy and
    the training costs. Only for datasets with more than one strategy (the comparison it exists for)."""
    frames = {}
    for dataset, group in table.groupby("dataset", sort=True):
        if group["strategy"].nunique() < 2:
            continue
        columns: dict[str, pd.Series] = {}
        for protocol, part in group.groupby("protocol", sort=False):
            present = set(part["metric"])
            if protocol == "cost":
                chosen = [(m, m) for m in OVERVIEW_COSTS if m in present]
            elif protocol == "classification":
                chosen = [("accuracy", "accuracy")] if "accuracy" in present else []
            else:
                main = next((m for m in MAIN_METRICS if m in present), None)
                chosen = [(main, f"{protocol} {main}")] if main else []
            for metric, label in chosen:
                columns[label] = part[part["metric"] == metric].set_index(["model", "strategy"])["mean"]
        frame = pd.DataFrame(columns)
        retrieval = [c for c in frame.columns if c not in OVERVIEW_COSTS and c != "accuracy"]
        frame = frame[retrieval + [c for c in ("accuracy", *OVERVIEW_COSTS) if c in frame.columns]]
        order = sorted(frame.index, key=lambda key: (str(key[0]), strategies.rank(str(key[1]))))
        frames[str(dataset)] = frame.loc[order]
    return frames


def _overview_best(frame: pd.DataFrame) -> dict[str, float]:
    return {c: (math.nan if c in OVERVIEW_COSTS else frame[c].max()) for c in frame.columns}


def _number(value: float, metric: str) -> str:
    if metric in COUNTS:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def format_value(row: pd.Series, metric: str, *, main: bool, best: bool, markdown: bool) -> str:
    """'0.712 ± 0.004 [0.690, 0.731] ≈': mean, spread over seeds, interval (ranking metric), tie mark."""
    value = row[metric]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = _number(float(value), metric)
    std = row.get(f"{metric} std", math.nan)
    if isinstance(std, float) and std > 0:
        text += f" ± {std:.3f}"
    low, high = row.get(f"{metric} low", math.nan), row.get(f"{metric} high", math.nan)
    if main and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.3f}, {high:.3f}]"
    if main and not best and bool(row.get(TIED, False)):
        text += " ≈"
    if best:
        return f"**{text}**" if markdown else f"[bold green]{text}[/]"
    return text


def _best(frame: pd.DataFrame, metrics: list[str], protocol: str) -> dict[str, float]:
    """Column maxima to mark; none for costs."""
    return {m: (math.nan if protocol == "cost" else frame[m].max()) for m in metrics}


def to_markdown(frames: dict[tuple[str, str], pd.DataFrame]) -> str:
    lines = ["# Leaderboard", "", LEGEND, ""]
    for (dataset, protocol), frame in frames.items():
        metrics = metric_columns(frame)
        lines += [f"## {dataset} · {protocol}", "", "| model | strategy | " + " | ".join(metrics) + " |",
                  "|" + " --- |" * (len(metrics) + 2)]
        best = _best(frame, metrics, protocol)
        for (model, strategy), row in frame.iterrows():
            cells = [format_value(row, m, main=i == 0 and protocol != "cost", best=row[m] == best[m], markdown=True)
                     for i, m in enumerate(metrics)]
            lines.append(f"| {model} | {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def overview_markdown(frames: dict[str, pd.DataFrame]) -> str:
    lines: list[str] = []
    for dataset, frame in frames.items():
        columns = list(frame.columns)
        lines += [f"## {dataset} · overview: quality beside training cost", "",
                  "| model | strategy | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
        best = _overview_best(frame)
        for (model, strategy), row in frame.iterrows():
            cells = [format_value(row, c, main=False, best=row[c] == best[c], markdown=True) for c in columns]
            lines.append(f"| {model} | {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def print_leaderboard(run_dir: str | os.PathLike[str], console: Console | None = None) -> Path:
    """Print a Rich table per dataset and protocol; write ``RUN/leaderboard.md``; return its path."""
    out = console or Console()
    table_data = read_table(run_dir)
    frames = leaderboard_frames(table_data, read_significance(run_dir))
    overviews = overview_frames(table_data)
    for (dataset, protocol), frame in frames.items():
        metrics = metric_columns(frame)
        table = Table(title=f"{dataset} · {protocol}", caption=None if protocol == "cost" else
                      "[95% interval] · ≈ not significantly below the best")
        models = [str(model) for model, _ in frame.index]
        table.add_column("model", no_wrap=True, min_width=max(len(m) for m in models))  # names must stay readable
        table.add_column("strategy", no_wrap=True)
        for metric in metrics:
            table.add_column(metric, justify="right")
        best = _best(frame, metrics, protocol)
        for (model, strategy), row in frame.iterrows():
            table.add_row(str(model), str(strategy),
                          *[format_value(row, m, main=i == 0 and protocol != "cost", best=row[m] == best[m],
                                         markdown=False) for i, m in enumerate(metrics)])
        out.print(table)
    for dataset, frame in overviews.items():
        out.print(_overview_table(dataset, frame))
    target = Path(run_dir) / "leaderboard.md"
    markdown = to_markdown(frames) + ("\n" + overview_markdown(overviews) if overviews else "")
    target.write_text(markdown, encoding="utf-8")
    return target


def _overview_table(dataset: str, frame: pd.DataFrame) -> Table:
    table = Table(title=f"{dataset} · overview: quality beside training cost")
    table.add_column("model", no_wrap=True, min_width=max(len(str(model)) for model, _ in frame.index))
    table.add_column("strategy", no_wrap=True)
    for column in frame.columns:
        table.add_column(column, justify="right")
    best = _overview_best(frame)
    for (model, strategy), row in frame.iterrows():
        table.add_row(str(model), str(strategy),
                      *[format_value(row, c, main=False, best=row[c] == best[c], markdown=False)
                        for c in frame.columns])
    return table
