"""The benchmark: a YAML matrix of models x datasets x strategies, run cell by cell, resumable,
stored as plain files with provenance, logged to MLflow, compared on a leaderboard."""

from shelfsight.bench.config import BenchConfig, ConfigError, load_config
from shelfsight.bench.leaderboard import leaderboard_frames, print_leaderboard
from shelfsight.bench.plan import plan_cells
from shelfsight.bench.results import Cell, CellResult, ResultStore, read_table
from shelfsight.bench.runner import BenchSummary, run_bench

__all__ = [
    "BenchConfig", "BenchSummary", "Cell", "CellResult", "ConfigError", "ResultStore", "leaderboard_frames",
    "load_config", "plan_cells", "print_leaderboard", "read_table", "run_bench",
]
