"""The candidates of a recommendation: every measured (model, strategy) of a task on a dataset with its numbers
and costs, and the paired test that compares two of them. Pure functions over the results table
(``bench.table``); the recommendation (``bench.recommend``) and the guidance checks (``bench.guidance``) rank
and test these."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from shelfsight.bench.table import cost_frame, main_metric, main_protocol, metric_rows

VISUAL_SEARCH = "visual search"
AUTO_TAGGING = "auto-tagging"
SECONDARY = {VISUAL_SEARCH: ("R@1", "MAP@R"), AUTO_TAGGING: ("macro_f1",)}
"""Metrics quoted beside the deciding one."""
COSTS_QUOTED = ("tune_seconds", "extract_images_per_s", "params_m", "index_bytes")


@dataclass(frozen=True)
class Choice:
    """One (model, strategy) with its measured value, spread over repeats, costs and side metrics."""

    model: str
    family: str
    strategy: str
    mean: float
    std: float
    n: int
    costs: dict[str, float] = field(default_factory=dict)
    also: dict[str, float] = field(default_factory=dict)
    low: float = math.nan
    high: float = math.nan
    """95% bootstrap interval over queries (and seeds)."""

    @property
    def label(self) -> str:
        return f"{self.model} · {self.strategy}"


@dataclass(frozen=True)
class PairedTest:
    """A - B on the same queries: difference, its interval (at ``confidence``: 1 - the run's alpha), raw and
    Holm-adjusted p-values."""

    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float
    significant: bool
    method: str
    p_floor: float = 0.0
    """The smallest p-value the permutation test can give (1 / (permutations + 1)): one at it is a bound."""
    confidence: float = 0.95

    def numbers(self) -> str:
        p = f"p≤{self.p_floor:.1g}" if self.p_value <= self.p_floor * (1 + 1e-9) else f"p={self.p_value:.2g}"
        return (f"difference {self.difference:+.3f}, {self.confidence:.0%} CI {self.low:+.3f} to {self.high:+.3f}, "
                f"{p} (Holm {self.p_adjusted:.2g})")


Tester = Callable[[str, str, str, "Choice", "Choice"], PairedTest | None]
"""(dataset, protocol, metric, A, B) -> the paired test of A - B, or None when it cannot be computed."""


def task_metric(table: pd.DataFrame, task: str, dataset: str) -> tuple[str, str] | None:
    """(protocol, metric) deciding a task: the main retrieval protocol's mMP@5, or classification accuracy."""
    protocol = main_protocol(table, dataset) if task == VISUAL_SEARCH else "classification"
    metric = main_metric(table, dataset, protocol) if protocol else None
    return (protocol, metric) if protocol and metric else None


def choices(table: pd.DataFrame, task: str, dataset: str) -> list[Choice]:
    """Every measured (model, strategy) for a task on a dataset, best first."""
    decided = task_metric(table, task, dataset)
    if decided is None:
        return []
    protocol, metric = decided
    costs = cost_frame(table, dataset)
    side = table[(table["dataset"] == dataset) & (table["protocol"] == protocol)]
    side = side[side["metric"].isin(SECONDARY[task])].set_index(["model", "strategy", "metric"])["mean"]
    found = []
    for row in metric_rows(table, dataset, protocol, metric).itertuples():
        key = (row.model, row.strategy)
        cost = costs.loc[key] if not costs.empty and key in costs.index else pd.Series(dtype=float)
        found.append(Choice(
            model=str(row.model), family=str(row.family), strategy=str(row.strategy), mean=float(row.mean),
            std=float(row.std), n=int(row.n), low=float(row.ci_low), high=float(row.ci_high),
            costs={c: float(cost[c]) for c in COSTS_QUOTED if c in cost and not math.isnan(cost[c])},
            also={m: float(side[(*key, m)]) for m in SECONDARY[task] if (*key, m) in side.index}))
    return found


def number_text(choice: Choice, extra: str = "") -> str:
    """'0.712 [0.690, 0.731] (n=1, deterministic)' or '0.705 ± 0.004 [0.69, 0.72] (n=3 seeds)'."""
    spread = f" ± {choice.std:.3f}" if choice.n > 1 else ""
    interval = f" [{choice.low:.3f}, {choice.high:.3f}]" if not (math.isnan(choice.low) or math.isnan(choice.high)) \
        else ""
    return f"{choice.mean:.3f}{spread}{interval} (n={choice.n}{extra})"

