"""``shelfsight bench``, ``compare``, ``leaderboard``, ``report`` and ``demo``: run an experiment and read its
results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shelfsight.cli.common import DataDir, Group, ImageRoot, console


def bench_command(
    config: Annotated[Path, typer.Argument(help="Experiment YAML: models x datasets x strategies.")],
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<config name>).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: SQLite in the run folder).")] = None,
    data_dir: DataDir = None,
    recompute: Annotated[list[str] | None, typer.Option(
        "--recompute", help="Glob of cell ids to compute again whatever is stored (repeatable), e.g. '*toptune*'.",
    )] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Print the cells, what each will do and the estimated "
                                                      "time; run nothing.")] = False,
) -> None:
    """Run every cell of an experiment. A stored cell is reused only when its inputs (weights, preprocessing,
    catalogue, strategy settings, index, seed) are unchanged, so an interrupted run resumes and a changed
    config recomputes exactly what it changed."""
    from shelfsight.bench import load_config, print_leaderboard, run_bench

    settings = load_config(config)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": str(data_dir)})
    target = run_dir or Path("runs") / settings.name
    if plan:
        from shelfsight.bench.runner import show_plan

        show_plan(settings, target, console=console, recompute=recompute or ())
        return
    summary = run_bench(settings, target, tracking_uri=tracking_uri, progress=not quiet, console=console,
                        recompute=recompute or ())
    console.print(f"{len(summary.computed)} computed, {len(summary.reused)} reused, "
                  f"{len(summary.failed)} failed · {target / 'results.csv'}")
    if summary.table is not None and len(summary.table):
        print_leaderboard(target, console=console)
    if summary.failed:
        raise typer.Exit(1)


def compare_command(
    run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")],
    a: Annotated[str, typer.Argument(help="First cell, MODEL:STRATEGY (e.g. efficientnet_lite2:pretrained).")],
    b: Annotated[str, typer.Argument(help="Second cell, MODEL:STRATEGY.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset (needed when the cells ran on several).")] = None,
    protocol: Annotated[str | None, typer.Option(help="Protocol, or 'classification' (default: the first "
                                                      "retrieval protocol).")] = None,
    metric: Annotated[str | None, typer.Option(help="Metric (default: mMP@5, or accuracy).")] = None,
    permutations: Annotated[int | None, typer.Option(help="Permutations of the paired test (default: the run's "
                                                          "stats); a pair the run reports keeps its own.")] = None,
    resamples: Annotated[int | None, typer.Option(help="Bootstrap resamples of the interval (default: the "
                                                       "run's stats).")] = None,
) -> None:
    """A - B on the same queries, over the run's planned cells: the difference, its interval at the run's
    confidence (1 - stats.alpha) and the paired test's p-value. A pair the run reports is read from its one Holm
    family (RUN/comparisons.csv), so the verdict is the one every table of the run shows."""
    from shelfsight.bench.compare import Family, FamilySettings, compare

    settings = FamilySettings.of_run(run_dir)
    found = compare(run_dir, a, b, metric=metric, protocol=protocol, dataset=dataset, n_permutations=permutations,
                    n_resamples=resamples)
    r = found.result
    family = Family.read(run_dir)
    holm = (f"{found.p_adjusted:.4g}, one of the run's {len(family) if family else '?'} comparisons "
            "(RUN/comparisons.csv)" if found.p_adjusted is not None
            else "not a comparison the run reports: unadjusted")
    p_floor = permutations if found.p_adjusted is None and permutations else settings.permutations
    alpha = settings.alpha
    table = Table(title=f"{found.dataset} · {found.protocol} · {found.metric}", show_header=False)
    for row in (("A", f"{found.a}: {found.mean_a:.4f}"), ("B", f"{found.b}: {found.mean_b:.4f}"),
                ("A - B", f"{r.difference:+.4f}"),
                (f"{found.confidence:.0%} interval", f"{r.low:+.4f} to {r.high:+.4f}"),
                ("p-value", f"{_p_text(r.p_value, p_floor)} ({r.method})"), ("Holm-adjusted", holm),
                ("queries", f"{r.n_queries}"), ("seeds", f"A {r.seeds_a}, B {r.seeds_b}"),
                ("verdict", f"significant at {alpha:g} (p < {alpha:g} and the interval excludes 0)"
                 if found.significant(alpha) else f"tied within noise (p >= {alpha:g} or the interval holds 0)")):
        table.add_row(*row)
    console.print(table)


def leaderboard_command(run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")]) -> None:
    """Print the run's leaderboard and write RUN/leaderboard.md."""
    from shelfsight.bench import print_leaderboard

    path = print_leaderboard(run_dir, console=console)
    console.print(f"written: {path}")


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A bench run folder.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN/report).")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML report in a browser.")] = False,
    mlflow: Annotated[bool, typer.Option(help="Log the report to the run's MLflow experiment.")] = True,
) -> None:
    """Write RUN/report/report.html (self-contained, opens offline) and report.md from the stored results."""
    from shelfsight.report import write_report

    files = write_report(run_dir, out, log_mlflow=mlflow)
    console.print(f"report: {files.html}\nsummary: {files.markdown}", highlight=False)
    if files.mlflow_error:
        console.print(f"[yellow]MLflow logging failed: {files.mlflow_error}[/]")
    if open_browser:
        import webbrowser

        webbrowser.open(files.html.resolve().as_uri())


def demo_command(
    data_dir: DataDir = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/demo).")] = None,
    full: Annotated[bool, typer.Option("--full", help="The paper-sized budgets (configs/demo-full.yaml; about an "
                                                      "hour on a 2-core CPU).")] = False,
) -> None:
    """Benchmark real pretrained backbones (EfficientNet-Lite) on the real datasets at hand."""
    from shelfsight.demo import run_demo

    run_demo(data_dir=data_dir, run_dir=run_dir or (Path("runs") / "demo-full" if full else None), console=console,
             config_name="demo-full" if full else "demo")


def run_command(
    path: Annotated[Path, typer.Argument(help="A folder of class sub-folders, or a manifest (CSV/Parquet).")],
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<catalogue name>).")] = None,
    image_root: ImageRoot = None,
    group: Group = None,
) -> None:
    """Benchmark the offline backbones on your own photos with no config: plan, run, report, one-line answer."""
    from shelfsight.catalog import load_catalog
    from shelfsight.catalog.check import doubtful_labels, doubtful_note
    from shelfsight.demo import run_and_report
    from shelfsight.zero_config import config_for, display_name

    root = str(image_root) if image_root else None
    catalog = load_catalog(path, image_root=root)  # once: the labels are checked here, the config made from it
    doubtful = doubtful_labels(catalog)
    if doubtful:
        console.print(f"[yellow]labels to check:[/] {doubtful_note(doubtful)}", highlight=False)
    target = run_dir or Path("runs") / display_name(path)
    raw = config_for(catalog, path, target, console=console, image_root=root, group=group)
    run_and_report(raw, target, console=console)


def _p_text(p_value: float, permutations: int) -> str:
    """A p-value at the permutation test's floor is a bound, not a value."""
    floor = 1 / (permutations + 1)
    return f"<= {floor:.2g} (the floor of {permutations:,} permutations)" if p_value <= floor * (1 + 1e-9) \
        else f"{p_value:.4g}"
