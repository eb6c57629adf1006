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
"""Columns in order; the first present one sorts the rows (mMP@5, the paper's main retrieval score)."""


def leaderboard_frames(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, protocol) -> rows (model, strategy), columns metric means, plus '<metric> std'."""
    frames = {}
    for (dataset, protocol), group in table.groupby(["dataset", "protocol"], sort=True):
        means = group.pivot_table(index=["model", "strategy"], columns="metric", values="mean")
        stds = group.pivot_table(index=["model", "strategy"], columns="metric", values="std")
        metrics = [m for m in MAIN_METRICS if m in means.columns]
        metrics += sorted(c for c in means.columns if c.startswith("index_recall"))
        frame = means[metrics].copy()
        for metric in metrics:
            frame[f"{metric} std"] = stds[metric]
        frames[(str(dataset), str(protocol))] = frame.sort_values(metrics[0], ascending=False)
    return frames


def _cell(value: float, std: float, best: bool, markdown: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.3f}" + (f" ± {std:.3f}" if std and std > 0 else "")
    if best:
        return f"**{text}**" if markdown else f"[bold green]{text}[/]"
    return text


def _metrics(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.endswith(" std")]


def to_markdown(frames: dict[tuple[str, str], pd.DataFrame]) -> str:
    lines = ["# Leaderboard", "", "Mean over seeds (± standard deviation when repeated); best per column in bold.", ""]
    for (dataset, protocol), frame in frames.items():
        metrics = _metrics(frame)
        lines += [f"## {dataset} · {protocol}", "", "| model | strategy | " + " | ".join(metrics) + " |",
                  "|" + " --- |" * (len(metrics) + 2)]
        best = {m: frame[m].max() for m in metrics}
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
        table.add_column("model")
        table.add_column("strategy")
        for metric in metrics:
            table.add_column(metric, justify="right")
        best = {m: frame[m].max() for m in metrics}
        for (model, strategy), row in frame.iterrows():
            table.add_row(str(model), str(strategy),
                          *[_cell(row[m], row[f"{m} std"], row[m] == best[m], markdown=False) for m in metrics])
        out.print(table)
    target = Path(run_dir) / "leaderboard.md"
    target.write_text(to_markdown(frames), encoding="utf-8")
    return target
