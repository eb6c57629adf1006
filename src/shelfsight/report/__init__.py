"""The report: one self-contained HTML page and a Markdown summary, from a run folder's stored results.

``write_report(RUN)`` writes ``RUN/report/report.html`` (figures and thumbnails inlined, opens
offline), ``RUN/report/report.md`` and ``RUN/report/figures/*.png``, and logs them to the run's
MLflow experiment. The recommendation inside is computed from the results table by
``recommend``, a pure function that can be called on any table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shelfsight.bench.tracking import Tracker, default_tracking_uri
from shelfsight.report.build import Report, build
from shelfsight.report.data import RunData, load_run
from shelfsight.report.html import render_html
from shelfsight.report.markdown import render_markdown
from shelfsight.report.recommend import Recommendation, Recommendations, describe, recommend

__all__ = [
    "Recommendation", "Recommendations", "Report", "ReportFiles", "RunData", "build", "describe", "load_run",
    "recommend", "render_html", "render_markdown", "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    figures: tuple[Path, ...]
    mlflow_run_id: str | None = None
    mlflow_error: str | None = None
    recommendations: Recommendations | None = None
    """What the report recommends (for a one-line answer on the console)."""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, log_mlflow: bool = True) -> ReportFiles:
    """Render the report of the bench run in ``run_dir`` into ``out_dir`` (default ``RUN/report``)."""
    run = load_run(run_dir)
    target = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    figures_dir = target / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = build(run)
    written = []
    for plot in report.plots:
        path = figures_dir / f"{plot.name}.png"
        path.write_bytes(plot.png)
        written.append(path)
    html = target / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    markdown = target / "report.md"
    markdown.write_text(render_markdown(report), encoding="utf-8")
    run_id, error = (_log_to_mlflow(run, target) if log_mlflow else (None, None))
    return ReportFiles(html, markdown, tuple(written), run_id, error, report.recommendations)


def _log_to_mlflow(run: RunData, folder: Path) -> tuple[str | None, str | None]:
    """Log the report folder to the run's MLflow experiment; best effort, the files are on disk already."""
    tracking = run.config.get("tracking") or {}
    uri = tracking.get("uri") or default_tracking_uri(run.run_dir)
    if not tracking.get("enabled", True) or (not tracking.get("uri") and not (run.run_dir / "mlflow.db").is_file()):
        return None, None
    tracker = Tracker(uri, tracking.get("experiment") or run.name, artifact_root=run.run_dir / "mlflow-artifacts")
    try:
        return tracker.log_report(f"{run.name}-report", folder), None
    except Exception as exc:  # noqa: BLE001 - tracking is best effort; the report is written
        return None, f"{type(exc).__name__}: {exc}"
