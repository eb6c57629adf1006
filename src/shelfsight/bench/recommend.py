"""The measured recommendation: for each task, dataset and budget, the best cell and the numbers behind it.

Pure functions over the results table (``bench.results.read_table``): nothing here is canned text.
Each claim of the paper's guidance is checked against the same numbers (``bench.guidance``) and stated as agree,
disagree, tied within noise or not measured, with the evidence.

Every "better" is a paired test on the same queries (``bench.significance.PairedTests``: a permutation test,
Holm-corrected over the run's one family of comparisons); without per-query scores the verdicts fall back to means
and say so. A best cell tied within noise with a cheaper one (faster extraction, then fewer parameters, then
a smaller index) gives way to it. Which pairs are compared depends on the table's means and costs only, so the
bench gathers them into the run's family before any test (``bench.significance.report_requests``); the report
words the result (``report.recommend``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH, Choice, PairedTest, Tester, choices, task_metric
from shelfsight.bench.guidance import GuidanceCheck, guidance_checks
from shelfsight.bench.table import datasets

RATE, PARAMS, TUNE, INDEX = "extract_images_per_s", "params_m", "tune_seconds", "index_bytes"
TUNE_RATIO = 1.5
"""Training times within this ratio count as equal (a measured time moves by that much on a shared CPU)."""
TIE_CANDIDATES = 3
"""The best is tested against the cheaper cells among the next few by mean (which pairs depends on means and
costs only, so the bench gathers them into the run's family before any test): a tie with one of them gives
the choice to the cheapest tied."""
RATE_TOLERANCE = 0.10
"""Extraction rates within 10% count as equal (a measured rate moves by that much between runs on a shared
CPU): parameters, then the index's size, decide."""


@dataclass(frozen=True)
class Tier:
    """A cost budget: the most expensive kind of adaptation it allows."""

    name: str
    level: int
    description: str


TIERS = (
    Tier("no training", registry.NO_TRAINING, "the frozen embedding as it is; tagging by a vote of its nearest "
         "neighbours (kNN)"),
    Tier("head only", registry.HEAD_ONLY, "a head trained on frozen embeddings: linear probe or top-tuning (CPU "
         "minutes)"),
    Tier("any budget", registry.FULL_TRAINING, "including fine-tuning the backbone end to end (GPU hours at "
         "catalogue scale)"),
)


def strategy_level(strategy: str) -> int:
    """The strategy's declared cost tier (a cross-tuned cell costs what its carried strategy costs)."""
    return registry.tier_of(strategy)


@dataclass(frozen=True)
class Recommendation:
    """The best measured choice for a task on a dataset within a budget, and how sure it is."""

    task: str
    dataset: str
    protocol: str
    metric: str
    tier: Tier
    best: Choice | None
    runner_up: Choice | None = None
    reason: str = ""
    """Why there is no choice, when ``best`` is None."""
    test: PairedTest | None = None
    """The paired test of best against runner-up (of ``passed_over`` against ``best`` when it gave way)."""
    passed_over: Choice | None = None
    """The best-scoring cell, when it was tied within noise with the cheaper ``best`` (then also ``runner_up``)."""

    @property
    def margin(self) -> float | None:
        return None if self.best is None or self.runner_up is None else self.best.mean - self.runner_up.mean

    @property
    def decisive(self) -> bool | None:
        """Is the lead significant (paired test, Holm-corrected)? None when untested."""
        return None if self.test is None else self.test.significant


@dataclass(frozen=True)
class Recommendations:
    items: tuple[Recommendation, ...]
    checks: tuple[GuidanceCheck, ...]

    def get(self, task: str, dataset: str, tier: str) -> Recommendation:
        return next(r for r in self.items if (r.task, r.dataset, r.tier.name) == (task, dataset, tier))


def recommend(table: pd.DataFrame, tester: Tester | None = None) -> Recommendations:
    """For visual search and auto-tagging, on each dataset and in each budget tier, the best cell; verdicts from
    ``tester`` (the run's family: ``bench.significance.PairedTests``), untested without one. Which pairs are
    compared depends on the table's means only, so the bench can gather them into the family beforehand."""
    items = []
    for dataset in datasets(table):
        for task in (VISUAL_SEARCH, AUTO_TAGGING):
            decided = task_metric(table, task, dataset)
            ranked = choices(table, task, dataset)
            for tier in TIERS:
                allowed = [c for c in ranked if strategy_level(c.strategy) <= tier.level]
                protocol, metric = decided or ("", "")
                if not allowed:
                    reason = (f"no {task} result on {dataset}" if not ranked else
                              f"no strategy within this budget was run ({_allowed_names(tier)})")
                    items.append(Recommendation(task, dataset, protocol, metric, tier, None, reason=reason))
                    continue
                items.append(_pick(task, dataset, (protocol, metric), tier, allowed, tester))
    checks = [check for dataset in datasets(table) for check in guidance_checks(table, dataset, tester)]
    return Recommendations(tuple(items), tuple(checks))


def _pick(task: str, dataset: str, on: tuple[str, str], tier: Tier, allowed: list[Choice],
          tester: Tester | None) -> Recommendation:
    """The best of ``allowed`` against the runner-up; against each cheaper cell among the next few too, and the
    cheapest of those tied with it recommended instead."""
    best, runner = allowed[0], (allowed[1] if len(allowed) > 1 else None)

    def test(other: Choice) -> PairedTest | None:
        return tester(dataset, *on, best, other) if tester else None

    tests = {id(other): test(other) for other in allowed[1:1 + TIE_CANDIDATES] if other is runner or
             cheaper(other, best)}
    tied = [c for c in allowed[1:1 + TIE_CANDIDATES]
            if cheaper(c, best) and (found := tests.get(id(c))) is not None and not found.significant]
    if tied:
        cheapest = tied[0]
        for other in tied[1:]:
            cheapest = other if cheaper(other, cheapest) else cheapest
        return Recommendation(task, dataset, *on, tier, cheapest, best, test=tests[id(cheapest)], passed_over=best)
    return Recommendation(task, dataset, *on, tier, best, runner, test=tests.get(id(runner)))


def cheaper(a: Choice, b: Choice) -> bool:
    """Does ``a`` cost less than ``b``: a lighter adaptation tier (no training before a trained head before
    fine-tuning), else a faster extraction (by more than :data:`RATE_TOLERANCE`), else fewer parameters, else a
    shorter training (by more than :data:`TUNE_RATIO`), else a smaller index? False when the costs that would
    decide are not measured."""
    level_a, level_b = strategy_level(a.strategy), strategy_level(b.strategy)
    if level_a != level_b:
        return level_a < level_b
    name = deciding_cost(a, b)
    if name is None:
        return False
    return a.costs[name] > b.costs[name] if name == RATE else a.costs[name] < b.costs[name]


def deciding_cost(a: Choice, b: Choice) -> str | None:
    """The first cost, in the order :func:`cheaper` reads them, on which ``a`` and ``b`` differ beyond noise."""
    for name in (RATE, PARAMS, TUNE, INDEX):
        x, y = a.costs.get(name), b.costs.get(name)
        if x is None or y is None:
            continue
        if name == RATE:
            differ = abs(x - y) > RATE_TOLERANCE * max(x, y)
        elif name == TUNE:
            differ = max(x, y) > TUNE_RATIO * min(x, y) and abs(x - y) > 1.0
        else:
            differ = not math.isclose(x, y, rel_tol=1e-6)
        if differ:
            return name
    return None


def _allowed_names(tier: Tier) -> str:
    return ", ".join(s.name for s in registry.REGISTRY.values() if s.tier <= tier.level and not s.expands)
