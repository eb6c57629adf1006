"""The run's one family of paired tests, as the report reads it: every comparison the run reports (each cell
against its column's best, the label-budget tests, and the recommendation's and guidance's comparisons made
here) tested once and Holm-adjusted together, so a pair has one verdict in every table and sentence.

The bench writes the family (``RUN/comparisons.csv``) when it writes its tables; ``report_requests`` tells it
which comparisons the report will make. A run without a stored family for its plan (older, or stopped before
its tables) gets one computed here, in memory, the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from shelfsight.bench.compare import (
    PURPOSES,
    REPORT,
    Family,
    FamilySettings,
    Request,
    RunScores,
    read_significance,
    significance_requests,
    significance_table,
)
from shelfsight.bench.label_budgets import BudgetTest, budget_requests, planned_budget_tests
from shelfsight.bench.results import RunPlan
from shelfsight.report.data import load_run
from shelfsight.report.recommend import Choice, PairedTest, recommend

COMPUTED_HERE = ("computed for this report: the run holds no family for its current plan (written by an older "
                 "shelfsight, or stopped before its tables), so significance.csv and label-budgets-tests.csv on disk "
                 "may disagree with it; rerun `shelfsight bench` to store one")


class PairedTests:
    """A ``Tester`` answering from the run's family: the stored numbers and Holm-adjusted p-value of A - B, or
    None when the pair is not in it (no per-query scores, no shared query)."""

    def __init__(self, family: Family, settings: FamilySettings) -> None:
        self.family, self.settings = family, settings

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest | None:
        found = self.family.get(protocol, metric, (a.model, dataset, a.strategy), (b.model, dataset, b.strategy))
        if found is None:
            return None
        r = found.result
        return PairedTest(float(r.difference), float(r.low), float(r.high), float(r.p_value),
                          float(found.p_adjusted if found.p_adjusted is not None else r.p_value),
                          found.significant(self.family.alpha), str(r.method),
                          p_floor=1 / (self.settings.permutations + 1), confidence=found.confidence)


@dataclass
class _Recorder:
    """A ``Tester`` that only notes what it is asked (the report's comparisons), answering "untested"."""

    requests: list[Request] = field(default_factory=list)

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest | None:
        self.requests.append(Request(REPORT, protocol, metric, (a.model, dataset, a.strategy),
                                     (b.model, dataset, b.strategy)))
        return None


def report_requests(run_dir: str | Path) -> list[Request]:
    """The comparisons the report's recommendation and guidance make on the run's results table (which pairs
    they compare depends on the means only, never on a test's outcome)."""
    recorder = _Recorder()
    recommend(load_run(run_dir).table, recorder)
    return recorder.requests


@dataclass(frozen=True)
class RunFamily:
    """The family and what asked for it: the significance requests and the label-budget tests."""

    family: Family
    significance: list[Request]
    budget_tests: list[BudgetTest]


def run_family(run_dir: str | Path, settings: FamilySettings, plan: RunPlan | None = None) -> RunFamily:
    """Test every comparison the run reports, as one Holm family, over the planned cells only."""
    scores = RunScores(run_dir, plan)
    significance = significance_requests(scores)
    budget = planned_budget_tests(Path(run_dir))
    requests = [*significance, *budget_requests(budget), *report_requests(run_dir)]
    return RunFamily(Family.test(scores, requests, settings), significance, budget)


@dataclass(frozen=True)
class ReportFamily:
    """The family the report reads, the significance table drawn from it and a note when computed here."""

    family: Family
    significance: pd.DataFrame | None
    note: str = ""

    def describe(self) -> str:
        return describe_family(self.family) + (f" The family was {self.note}." if self.note else "")


def family_for_report(run_dir: str | Path, settings: FamilySettings) -> ReportFamily:
    """The stored family with its ``significance.csv``, else both computed now."""
    stored = Family.read(run_dir)
    if stored is not None:
        return ReportFamily(stored, read_significance(run_dir))
    found = run_family(run_dir, settings)
    return ReportFamily(found.family, significance_table(found.family, found.significance), COMPUTED_HERE)


def describe_family(family: Family) -> str:
    """Its size, alpha, the intervals' level, and what asked for its comparisons."""
    counts: Counter[str] = Counter(p for _, _, _, why in family.rows for p in why)
    shared = sum(len(why) > 1 for _, _, _, why in family.rows)
    parts = [f"{counts[p]} {text}" for p, text in PURPOSES.items() if counts[p]]
    size = f"{len(family)} comparison{'s' if len(family) != 1 else ''}"
    return (f"One Holm family of {size} at alpha {family.alpha:g}, every interval of a difference at "
            f"{1 - family.alpha:.0%}: {'; '.join(parts) or 'none'}"
            + (f"; {shared} pair{'s' if shared != 1 else ''} asked for by more than one, tested once" if shared else "")
            + ". Each pair has one adjusted p-value and one verdict wherever it appears (RUN/comparisons.csv).")
