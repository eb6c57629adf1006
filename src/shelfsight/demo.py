"""``make demo`` and ``shelfsight run``: a config run end to end, then the leaderboard, the report and the
answer in one sentence per task, then the commands that index and serve it.

Both go through :func:`run_and_report`: the demo with its embedded config (real pretrained backbones on
the datasets at hand, offline), ``shelfsight run PATH`` with a config made for a user's folder or manifest
(``shelfsight.zero_config``). The same path, so the tests of one test the other.
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from shelfsight import paths
from shelfsight.bench import load_config, print_leaderboard, run_bench
from shelfsight.bench.run_progress import duration
from shelfsight.catalog import load_catalog
from shelfsight.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from shelfsight.report.recommend import Recommendations

DEFAULT_RUN_DIR = Path("runs") / "demo"
HOW_TO_GET = {
    "grocery-store": "clone https://github.com/marcusklasson/GroceryStoreDataset into $SHELFSIGHT_DATA_DIR/"
                     "grocery-store (MIT licence)",
    "fashion-mnist": "apt-get install dataset-fashion-mnist (Debian), or `make system-deps`",
}


def demo_config_text(name: str = "demo") -> str:
    """An embedded config (``shelfsight/configs/NAME.yaml``): ``demo`` or ``demo-full``."""
    return resources.files("shelfsight").joinpath(f"configs/{name}.yaml").read_text(encoding="utf-8")


def run_demo(*, data_dir: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None,
             console: Console, config_name: str = "demo") -> Path:
    """Run the demo benchmark on the datasets present (saying which are missing and how to get them); print
    the leaderboard, write the report; return the run folder."""
    raw = yaml.safe_load(demo_config_text(config_name))
    present, missing = [], []
    for entry in raw["datasets"]:
        name = entry if isinstance(entry, str) else entry["name"]
        try:
            load_catalog(name, data_dir=data_dir, splits=("test",))
            present.append(entry)
        except DatasetNotFoundError as exc:
            missing.append(name)
            console.print(f"[yellow]left out {name}[/]: {exc}\n  to add it: "
                          f"{HOW_TO_GET.get(name, 'see docs/datasets.md')}")
    if not present:
        raise DatasetNotFoundError("No demo dataset found; see the notes above.")
    raw["datasets"] = present
    _drop_filters_of(raw, missing)
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    return run_and_report(raw, Path(run_dir) if run_dir is not None else DEFAULT_RUN_DIR, console=console)


def _drop_filters_of(raw: dict[str, Any], missing: list[str]) -> None:
    """Strategies kept to a missing dataset lose that filter entry (or the strategy, if nothing is left)."""
    kept = []
    for entry in raw.get("strategies", []):
        if isinstance(entry, dict) and entry.get("datasets"):
            entry["datasets"] = [d for d in entry["datasets"] if d not in missing]
            if not entry["datasets"]:
                continue
        kept.append(entry)
    raw["strategies"] = kept


def print_serving_commands(run_dir: Path, recs: Recommendations, console: Console) -> None:
    """The exact ``shelfsight index`` / ``shelfsight serve`` commands for the choice, as the report's first screen
    shows them: plain lines (no markup, no wrapping) so that they paste whole."""
    from shelfsight.report import load_run
    from shelfsight.report.guidance import serving_commands

    found = serving_commands(load_run(run_dir), recs)
    if found:
        console.print("[bold]serve the choice:[/]")
    for commands in found:
        for line in commands.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def run_and_report(raw: dict[str, Any], run_dir: Path, *, console: Console) -> Path:
    """Validate ``raw``, run the bench (plan, overall progress, cells), print the leaderboard, write the report,
    and print one sentence per task and the total time."""
    from shelfsight.report import write_report
    from shelfsight.report.recommend import AUTO_TAGGING, VISUAL_SEARCH, answer

    started = time.perf_counter()
    config = load_config(raw)
    console.print(f"[bold]{config.name}[/]: {len(config.models)} backbone(s) x {len(config.datasets)} dataset(s), "
                  f"run folder {run_dir}, embedding cache {paths.cache_dir()}")
    summary = run_bench(config, run_dir, console=console)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} cell(s) failed[/]: {', '.join(summary.failed)}")
    board = print_leaderboard(run_dir, console=console)
    console.print(f"results: {run_dir / 'results.csv'} · leaderboard: {board} · MLflow: {summary.tracking_uri}")
    if not (run_dir / "results.csv").is_file():
        console.print("[yellow]no report[/]: the bench wrote no results table")
        return run_dir
    files = write_report(run_dir)
    if files.mlflow_error:
        console.print(f"[yellow]MLflow logging of the report failed: {files.mlflow_error}[/]")
    for task in (VISUAL_SEARCH, AUTO_TAGGING):
        if files.recommendations is not None:
            console.print(f"[bold]{answer(files.recommendations, task)}[/]", highlight=False, soft_wrap=True)
    if files.recommendations is not None:
        print_serving_commands(run_dir, files.recommendations, console)
    console.print(f"[bold]done in {duration(time.perf_counter() - started)}[/]; report: {files.html.resolve()}",
                  highlight=False, soft_wrap=True)
    return run_dir
