"""``make demo``: real pretrained backbones benchmarked on the real datasets at hand, offline."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console

from shelfsight import paths
from shelfsight.bench import load_config, print_leaderboard, run_bench
from shelfsight.catalog import load_catalog
from shelfsight.errors import DatasetNotFoundError
from shelfsight.report import write_report

DEFAULT_RUN_DIR = Path("runs") / "demo"


def demo_config_text() -> str:
    """The embedded demo config (``shelfsight/configs/demo.yaml``)."""
    return resources.files("shelfsight").joinpath("configs/demo.yaml").read_text(encoding="utf-8")


def run_demo(*, data_dir: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None,
             console: Console) -> Path:
    """Run the demo benchmark on the datasets present; print the leaderboard, write the report; return the
    run folder."""
    raw = yaml.safe_load(demo_config_text())
    present, missing = [], []
    for entry in raw["datasets"]:
        name = entry if isinstance(entry, str) else entry["name"]
        try:
            load_catalog(name, data_dir=data_dir, splits=("test",))
            present.append(entry)
        except DatasetNotFoundError as exc:
            missing.append(f"{name}: {exc}")
    for note in missing:
        console.print(f"[yellow]left out[/] {note}")
    if not present:
        raise DatasetNotFoundError("No demo dataset found; see the notes above.")
    raw["datasets"] = present
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    config = load_config(raw)
    target = Path(run_dir) if run_dir is not None else DEFAULT_RUN_DIR
    console.print(f"[bold]demo[/]: {len(config.models)} backbones x {len(config.datasets)} datasets, "
                  f"run folder {target}, embedding cache {paths.cache_dir()}")
    summary = run_bench(config, target, console=console)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} cell(s) failed[/]: {', '.join(summary.failed)}")
    board = print_leaderboard(target, console=console)
    console.print(f"results: {target / 'results.csv'} · leaderboard: {board} · MLflow: {summary.tracking_uri}")
    if (target / "results.csv").is_file():
        files = write_report(target)
        if files.mlflow_error:
            console.print(f"[yellow]MLflow logging of the report failed: {files.mlflow_error}[/]")
        console.print(f"[bold]report[/]: {files.html.resolve()}", highlight=False, soft_wrap=True)
    else:
        console.print("[yellow]no report[/]: the bench wrote no results table")
    return target
