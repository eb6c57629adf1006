"""The run's one family of paired tests: every comparison the run reports (each cell against its column's best,
the label-budget tests, and the comparisons the recommendation and the guidance make) tested once and
Holm-adjusted together, so a pair has one verdict in every table and sentence.

The bench writes the family (``RUN/comparisons.csv``) when it writes its tables; ``report_requests`` says which
comparisons the recommendation will make (which pairs depends on the table's means and costs only). The report
reads the stored family, or computes one the same way for a run without it (``report.paired``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shelfsight.bench.choices import Choice, PairedTest
from shelfsight.bench.compare import PURPOSES, REPORT, Family, FamilySettings, Request, RunScores, significance_requests
from shelfsight.bench.label_budgets import BudgetTest, budget_requests, planned_budget_tests
from shelfsight.bench.recommend import recommend
from shelfsight.bench.results import RunPlan
from shelfsight.bench.table import load_table


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
    recommend(load_table(run_dir), recorder)
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
