"""The leaderboard: per dataset and protocol, every model x strategy side by side, best marked; then,
per dataset, an overview that sets each strategy's quality beside what its training cost."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from shelfsight.bench.results import read_table

MAIN_METRICS = ("mMP@5", "R@1", "R@5", "MAP@R", "MRR", "NDCG@10", "MAP")
"""Retrieval columns in order; the first present one sorts the rows (mMP@5, the paper's main score)."""
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
COST_METRICS = ("params_m", "gflops_per_image", "embed_dim", "extract_images_per_s", "tune_seconds", "trials",
                "epochs", "train_images_per_s", "index_bytes", "cell_seconds")
"""Costs are shown, not ranked: their better direction differs from column to column."""
OVERVIEW_COSTS = ("tune_seconds", "epochs", "train_images_per_s", "extract_images_per_s")
STRATEGY_ORDER = ("pretrained", "linear", "knn", "toptune", "finetune")


def _columns(protocol: str, available: pd.Index) -> list[str]:
    if protocol == "cost":
        return [m for m in COST_METRICS if m in available]
    if protocol == "classification":
        return [m for m in CLASSIFICATION_METRICS if m in available]
    return [m for m in MAIN_METRICS if m in available] + sorted(c for c in available if c.startswith("index_recall"))


def leaderboard_frames(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, protocol) -> rows (model, strategy), columns metric means, plus '<metric> std'."""
    frames = {}
    for (dataset, protocol), group in table.groupby(["dataset", "protocol"], sort=True):
        means = group.pivot_table(index=["model", "strategy"], columns="metric", values="mean")
        stds = group.pivot_table(index=["model", "strategy"], columns="metric", values="std")
        metrics = _columns(str(protocol), means.columns)
        if not metrics:
            continue
        frame = means[metrics].copy()
        for metric in metrics:
            frame[f"{metric} std"] = stds[metric]
        frames[(str(dataset), str(protocol))] = frame if protocol == "cost" else frame.sort_values(metrics[0],
                                                                                                  ascending=False)
    return frames


def _strategy_rank(strategy: str) -> tuple[int, str]:
    """Plain strategies in order of cost, then the cross-tuned ones (``toptune@A``) by name."""
    return (STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER), strategy)


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
        order = sorted(frame.index, key=lambda key: (str(key[0]), _strategy_rank(str(key[1]))))
        frames[str(dataset)] = frame.loc[order]
    return frames


def _overview_best(frame: pd.DataFrame) -> dict[str, float]:
    return {c: (math.nan if c in OVERVIEW_COSTS else frame[c].max()) for c in frame.columns}


def _cell(value: float, std: float, best: bool, markdown: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    number = f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    text = number + (f" ± {std:.3f}" if std and std > 0 else "")
    if best:
        return f"**{text}**" if markdown else f"[bold green]{text}[/]"
    return text


def _best(frame: pd.DataFrame, metrics: list[str], protocol: str) -> dict[str, float]:
    """Column maxima to mark; none for costs."""
    return {m: (math.nan if protocol == "cost" else frame[m].max()) for m in metrics}


def _metrics(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.endswith(" std")]


def to_markdown(frames: dict[tuple[str, str], pd.DataFrame]) -> str:
    lines = ["# Leaderboard", "", "Mean over seeds (± standard deviation when repeated); best per column in bold.", ""]
    for (dataset, protocol), frame in frames.items():
        metrics = _metrics(frame)
        lines += [f"## {dataset} · {protocol}", "", "| model | strategy | " + " | ".join(metrics) + " |",
                  "|" + " --- |" * (len(metrics) + 2)]
        best = _best(frame, metrics, protocol)
        for (model, strategy), row in frame.iterrows():
            cells = [_cell(row[m], row[f"{m} std"], row[m] == best[m], markdown=True) for m in metrics]
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
            cells = [_cell(row[c], 0.0, row[c] == best[c], markdown=True) for c in columns]
            lines.append(f"| {model} | {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def print_leaderboard(run_dir: str | os.PathLike[str], console: Console | None = None) -> Path:
    """Print a Rich table per dataset and protocol; write ``RUN/leaderboard.md``; return its path."""
    out = console or Console()
    table_data = read_table(run_dir)
    frames = leaderboard_frames(table_data)
    overviews = overview_frames(table_data)
    for (dataset, protocol), frame in frames.items():
        metrics = _metrics(frame)
        table = Table(title=f"{dataset} · {protocol}")
        models = [str(model) for model, _ in frame.index]
        table.add_column("model", no_wrap=True, min_width=max(len(m) for m in models))  # names must stay readable
        table.add_column("strategy", no_wrap=True)
        for metric in metrics:
            table.add_column(metric, justify="right")
        best = _best(frame, metrics, protocol)
        for (model, strategy), row in frame.iterrows():
            table.add_row(str(model), str(strategy),
                          *[_cell(row[m], row[f"{m} std"], row[m] == best[m], markdown=False) for m in metrics])
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
                      *[_cell(row[c], 0.0, row[c] == best[c], markdown=False) for c in frame.columns])
    return table
