"""MLflow tracking: one MLflow run per cell, local SQLite store by default, any URI for teams."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shelfsight.bench.results import CellResult


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def metric_key(protocol: str, metric: str) -> str:
    """MLflow allows letters, digits, ``_ - . / :`` and spaces in names: ``mMP@5`` -> ``mMP_at_5``."""
    return re.sub(r"[^\w\-./: ]", "_", f"{protocol}/{metric}".replace("@", "_at_"))


class Tracker:
    """Logs cells to MLflow; a disabled tracker does nothing (``tracking.enabled: false``)."""

    def __init__(self, uri: str, experiment: str, *, enabled: bool = True, artifact_root: Path | None = None) -> None:
        self.enabled = enabled
        self.artifact_root = artifact_root
        self.uri = uri
        self.experiment = experiment
        self._ready = False

    def _setup(self) -> Any:
        import logging

        import mlflow

        if not self._ready:
            for name in ("mlflow", "alembic"):  # schema migration chatter would drown the progress lines
                logging.getLogger(name).setLevel(logging.WARNING)
            mlflow.set_tracking_uri(self.uri)
            if self.artifact_root is not None and mlflow.get_experiment_by_name(self.experiment) is None:
                # with a database store MLflow would otherwise put artifacts in ./mlruns of the working directory
                mlflow.create_experiment(self.experiment, artifact_location=self.artifact_root.resolve().as_uri())
            mlflow.set_experiment(self.experiment)
            self._ready = True
        return mlflow

    def log_cell(self, result: CellResult, params: dict[str, Any], artifact: Path) -> str | None:
        if not self.enabled:
            return None
        mlflow = self._setup()
        with mlflow.start_run(run_name=result.cell.cell_id) as run:
            mlflow.set_tags({"shelfsight.cell": result.cell.cell_id, "shelfsight.status": result.status,
                             "shelfsight.cell_key": result.key})
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            metrics = {metric_key(p, m): v for p, values in result.metrics.items() for m, v in values.items()}
            metrics.update({metric_key("cost", k): v for k, v in result.costs.items()})
            if metrics:
                mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(artifact))
            return str(run.info.run_id)

    def log_table(self, run_name: str, files: list[Path], params: dict[str, Any]) -> str | None:
        """A summary run holding the combined results table as artifacts."""
        if not self.enabled:
            return None
        mlflow = self._setup()
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.set_tag("shelfsight.summary", "true")
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            for path in files:
                mlflow.log_artifact(str(path))
            return str(run.info.run_id)

    def log_report(self, run_name: str, folder: Path) -> str | None:
        """Log a rendered report folder (HTML, Markdown, figures) under ``report/`` of one MLflow run.

        Re-rendering the same run's report logs into the same MLflow run (tag ``shelfsight.report``),
        replacing the files, rather than adding a run each time.
        """
        if not self.enabled:
            return None
        mlflow = self._setup()
        previous = mlflow.search_runs(experiment_names=[self.experiment], output_format="list", max_results=1,
                                      filter_string="tags.`shelfsight.report` = 'true'",
                                      order_by=["attributes.start_time DESC"])
        run_id = previous[0].info.run_id if previous else None
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
            mlflow.set_tag("shelfsight.report", "true")
            mlflow.log_artifacts(str(folder), artifact_path="report")
            return str(run.info.run_id)
