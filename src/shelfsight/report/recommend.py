"""The measured recommendation: for each task, dataset and budget, the best cell and the numbers behind it.

Pure functions over the results table (``bench.results.read_table``): nothing here is canned text.
Each claim of the paper's guidance is checked against the same numbers and stated as agree, disagree,
tied within noise or not measured, with the evidence.

Every "better" is a paired test on the same queries (``PairedTests``: a permutation test, Holm-corrected
over the run's one family of comparisons); without per-query scores the verdicts fall back to means
and say so. A best cell tied within noise with a cheaper one (faster extraction, then fewer parameters, then
a smaller index) gives way to it: the recommendation says so, with both costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.report.analysis import cost_frame
from shelfsight.report.data import datasets, main_metric, main_protocol, metric_rows
from shelfsight.report.guidance import GuidanceCheck, guidance_checks

VISUAL_SEARCH = "visual search"
AUTO_TAGGING = "auto-tagging"
SECONDARY = {VISUAL_SEARCH: ("R@1", "MAP@R"), AUTO_TAGGING: ("macro_f1",)}
"""Metrics quoted beside the deciding one."""
COSTS_QUOTED = ("tune_seconds", "extract_images_per_s", "params_m", "index_bytes")
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


def recommend(table: pd.DataFrame, tester: Tester | None = None) -> Recommendations:
    """For visual search and auto-tagging, on each dataset and in each budget tier, the best cell; verdicts from
    ``tester`` (the run's family: ``report.paired.PairedTests``), untested without one. Which pairs are
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


def cheaper_note(rec: Recommendation, numbers: str) -> str:
    """'tied with X (NUMBERS): the cheaper is recommended, 98 images/s against 42' (or parameters, index size)."""
    best, over = rec.best, rec.passed_over
    assert best is not None and over is not None
    level_best, level_over = strategy_level(best.strategy), strategy_level(over.strategy)
    if level_best != level_over:
        return (f"tied with {over.label} {over.mean:.3f} ({numbers}): the cheaper is recommended, "
                f"{registry.TIER_NAMES[level_best]} against {registry.TIER_NAMES[level_over]}")
    name = deciding_cost(best, over) or RATE
    against = (f", {format_cost(name, best.costs[name])} against {format_cost(name, over.costs[name])}"
               if name in best.costs and name in over.costs else "")
    return f"tied with {over.label} {over.mean:.3f} ({numbers}): the cheaper is recommended{against}"


def _allowed_names(tier: Tier) -> str:
    return ", ".join(s.name for s in registry.REGISTRY.values() if s.tier <= tier.level and not s.expands)


# ---------------------------------------------------------------- words

def _value(choice: Choice) -> str:
    return f"{choice.label} {number_text(choice)}"


def number_text(choice: Choice, extra: str = "") -> str:
    """'0.712 [0.690, 0.731] (n=1, deterministic)' or '0.705 ± 0.004 [0.69, 0.72] (n=3 seeds)'."""
    spread = f" ± {choice.std:.3f}" if choice.n > 1 else ""
    interval = f" [{choice.low:.3f}, {choice.high:.3f}]" if not (math.isnan(choice.low) or math.isnan(choice.high)) \
        else ""
    return f"{choice.mean:.3f}{spread}{interval} (n={choice.n}{extra})"


def format_cost(name: str, value: float) -> str:
    if name == "tune_seconds":
        return "no training" if value == 0 else f"tuning {value:.2g} s" if value < 10 else f"tuning {value:,.0f} s"
    if name == "extract_images_per_s":
        return f"{value:,.0f} images/s"
    if name == "params_m":
        return f"{value:,.1f} M parameters"
    if name == "index_bytes":
        return f"index {value / 1e6:,.1f} MB"
    return f"{name} {value:g}"


def margin_note(rec: Recommendation) -> str:
    """How far ahead the choice is, and whether the paired test on the same queries calls that lead
    significant (Holm-corrected) or a tie within noise."""
    best, runner = rec.best, rec.runner_up
    if best is None or runner is None:
        return "the only candidate measured"
    if rec.passed_over is not None and rec.test is not None:
        return cheaper_note(rec, rec.test.numbers())
    margin = best.mean - runner.mean
    if rec.test is None:
        return f"ahead of {_value(runner)} by {margin:.3f}; not tested (no per-query scores)"
    if rec.test.significant:
        return f"significantly ahead of {_value(runner)}: {rec.test.numbers()}"
    return f"tied within noise with {_value(runner)}: {rec.test.numbers()}"


def describe(rec: Recommendation) -> str:
    """One sentence with the numbers behind the choice."""
    head = f"{rec.task.capitalize()} on {rec.dataset} ({rec.tier.name})"
    if rec.best is None:
        return f"{head}: nothing to recommend ({rec.reason})."
    best = rec.best
    side = "".join(f", {m} {v:.3f}" for m, v in best.also.items())
    costs = ", ".join(format_cost(n, v) for n, v in best.costs.items())
    return (f"{head}: {best.label} ({best.family}), {rec.protocol} {rec.metric} {number_text(best, side)}; "
            f"{margin_note(rec)}.{f' Cost: {costs}.' if costs else ''}")


def headline(recs: Recommendations) -> list[Recommendation]:
    """Per dataset and task: the widest budget's choice, then each cheaper budget where the answer changes."""
    shown = []
    for dataset in dict.fromkeys(r.dataset for r in recs.items):
        for task in (VISUAL_SEARCH, AUTO_TAGGING):
            previous = None
            for tier in reversed(TIERS):
                pick = recs.get(task, dataset, tier.name)
                if pick.best is not None and pick.best.label != previous:
                    shown.append(pick)
                    previous = pick.best.label
    return shown


def answer(recs: Recommendations, task: str) -> str:
    """One sentence for the first screen: the choice for ``task`` at the widest budget on each dataset, with
    its interval, whether it is significantly ahead, and what it costs."""
    widest = TIERS[-1].name
    picks = [r for r in recs.items if r.task == task and r.tier.name == widest and r.best is not None]
    if not picks:
        return f"Which embedding for {task}? Not measured in this run."
    parts = []
    for rec in picks:
        best = rec.best
        assert best is not None
        runner = rec.runner_up
        lead = (cheaper_note(rec, _short_p(rec.test)) if rec.passed_over is not None and rec.test is not None else
                "the only candidate measured" if runner is None else
                f"significantly ahead of {runner.label}" if rec.decisive else
                f"tied within noise with {runner.label}" if rec.decisive is False else
                f"ahead of {runner.label}, not tested")
        costs = ", ".join(format_cost(n, v) for n, v in best.costs.items() if n in ("tune_seconds",
                                                                                  "extract_images_per_s"))
        interval = "" if math.isnan(best.low) else f" [{best.low:.3f}, {best.high:.3f}]"
        parts.append(f"on {rec.dataset}, {best.label} ({rec.protocol} {rec.metric} {best.mean:.3f}{interval}, "
                     f"{lead}{'; ' + costs if costs else ''})")
    return f"Which embedding for {task}? " + "; ".join(parts) + "."


def _short_p(test: PairedTest) -> str:
    return f"p={test.p_value:.2g}, Holm {test.p_adjusted:.2g}"


def consensus(recs: Recommendations, task: str, tier: str) -> str | None:
    """Whether one choice wins the task on every dataset; None with a single dataset."""
    chosen = [r for r in recs.items if r.task == task and r.tier.name == tier and r.best is not None]
    if len({r.dataset for r in chosen}) < 2:
        return None
    labels = {r.best.label for r in chosen if r.best}
    if len(labels) == 1:
        return f"{labels.pop()} wins {task} ({tier}) on all {len(chosen)} datasets."
    per = "; ".join(f"{r.dataset}: {r.best.label}{_tie(r)}" for r in chosen if r.best)
    return f"No single winner for {task} ({tier}): {per}."


def _tie(rec: Recommendation) -> str:
    """Says when a dataset's winner is only tied within noise with its runner-up."""
    return f" (tied within noise with {rec.runner_up.label})" if rec.decisive is False and rec.runner_up else ""
