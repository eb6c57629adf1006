"""The leaderboard: per dataset and protocol, every model x strategy side by side, best marked."""

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
                "index_bytes", "cell_seconds")
"""Costs are shown, not ranked: their better direction differs from column to column."""


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


def print_leaderboard(run_dir: str | os.PathLike[str], console: Console | None = None) -> Path:
    """Print a Rich table per dataset and protocol; write ``RUN/leaderboard.md``; return its path."""
    out = console or Console()
    frames = leaderboard_frames(read_table(run_dir))
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
    target = Path(run_dir) / "leaderboard.md"
    target.write_text(to_markdown(frames), encoding="utf-8")
    return target
