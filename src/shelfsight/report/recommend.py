"""The measured recommendation: for each task, dataset and budget, the best cell and the numbers behind it.

Pure functions over the results table (``bench.results.read_table``): nothing here is canned text.
Each claim of the paper's guidance is checked against the same numbers and stated as agree, disagree,
tied within noise or not measured, with the evidence.

Every "better" is a paired test on the same queries (``PairedTests``: a permutation test, Holm-corrected
over all the comparisons one report makes); without per-query scores the verdicts fall back to means
and say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from shelfsight.report.analysis import BASELINE, cost_frame, cross_source
from shelfsight.report.data import datasets, main_metric, main_protocol, metric_rows

Verdict = Literal["agree", "disagree", "tied within noise", "not measured"]

VISUAL_SEARCH = "visual search"
AUTO_TAGGING = "auto-tagging"
SECONDARY = {VISUAL_SEARCH: ("R@1", "MAP@R"), AUTO_TAGGING: ("macro_f1",)}
"""Metrics quoted beside the deciding one."""
COSTS_QUOTED = ("tune_seconds", "extract_images_per_s", "params_m", "index_bytes")


@dataclass(frozen=True)
class Tier:
    """A cost budget: the most expensive kind of adaptation it allows."""

    name: str
    level: int
    description: str


TIERS = (
    Tier("no training", 0, "the frozen embedding as it is; tagging by a vote of its nearest neighbours (kNN)"),
    Tier("head only", 1, "a head trained on frozen embeddings: linear probe or top-tuning (CPU minutes)"),
    Tier("any budget", 2, "including fine-tuning the backbone end to end (GPU hours at catalogue scale)"),
)
_LEVEL = {"pretrained": 0, "knn": 0, "linear": 1, "toptune": 1, "finetune": 2}


def strategy_level(strategy: str) -> int:
    """0 fits nothing, 1 trains a head on frozen embeddings, 2 trains the backbone; unknown counts as 2."""
    source = cross_source(strategy)
    return _LEVEL.get(source[0] if source else strategy, 2)


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
    """A - B on the same queries: difference, 95% interval, raw and Holm-adjusted p-values."""

    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float
    significant: bool
    method: str

    def numbers(self) -> str:
        return (f"difference {self.difference:+.3f}, 95% CI {self.low:+.3f} to {self.high:+.3f}, "
                f"p={self.p_value:.2g} (Holm {self.p_adjusted:.2g})")


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
    """The paired test of best against runner-up."""

    @property
    def margin(self) -> float | None:
        return None if self.best is None or self.runner_up is None else self.best.mean - self.runner_up.mean

    @property
    def decisive(self) -> bool | None:
        """Is the lead significant (paired test, Holm-corrected)? None when untested."""
        return None if self.test is None else self.test.significant


@dataclass(frozen=True)
class GuidanceCheck:
    """One claim of the paper's guidance against this run's numbers."""

    claim: str
    dataset: str
    verdict: Verdict
    evidence: str


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


def recommend(table: pd.DataFrame, tests: Tester | None = None) -> Recommendations:
    """For visual search and auto-tagging, on each dataset and in each budget tier, the best cell. With
    ``tests``, two passes: the first gathers every comparison, Holm adjusts them together, the second
    words the verdicts from the adjusted p-values."""
    if isinstance(tests, PairedTests):
        _recommend(table, tests)
        tests.adjust()
    return _recommend(table, tests)


def _recommend(table: pd.DataFrame, tester: Tester | None) -> Recommendations:
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
                runner = allowed[1] if len(allowed) > 1 else None
                test = tester(dataset, protocol, metric, allowed[0], runner) if tester and runner else None
                items.append(Recommendation(task, dataset, protocol, metric, tier, allowed[0], runner, test=test))
    checks = [check for dataset in datasets(table) for check in guidance_checks(table, dataset, tester)]
    return Recommendations(tuple(items), tuple(checks))


class PairedTests:
    """A ``Tester`` over a run's stored per-query scores; ``adjust`` applies Holm over every comparison
    asked for so far (one family: the report)."""

    def __init__(self, run_dir: str, *, alpha: float = 0.05, n_permutations: int = 10000,
                 n_resamples: int = 1000, seed: int = 0) -> None:
        from shelfsight.bench.compare import RunScores

        self.scores = RunScores(run_dir)
        self.alpha = alpha
        self.options = {"n_permutations": n_permutations, "n_resamples": n_resamples, "seed": seed}
        self.raw: dict[tuple[str, ...], object] = {}
        self.adjusted: dict[tuple[str, ...], float] = {}

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest | None:
        from shelfsight.errors import ShelfsightError

        key = (dataset, protocol, metric, a.model, a.strategy, b.model, b.strategy)
        if key not in self.raw:
            try:
                self.raw[key] = self.scores.compare((a.model, dataset, a.strategy), (b.model, dataset, b.strategy),
                                                    protocol, metric, **self.options)  # type: ignore[arg-type]
            except (ShelfsightError, KeyError, ValueError):
                self.raw[key] = None
        found = self.raw[key]
        if found is None:
            return None
        from shelfsight.bench.compare import decide

        result = found.result  # type: ignore[attr-defined]
        adjusted = self.adjusted.get(key, float(result.p_value))
        return PairedTest(float(result.difference), float(result.low), float(result.high), float(result.p_value),
                          adjusted, decide(result, adjusted, self.alpha), str(result.method))

    def adjust(self) -> None:
        import numpy as np

        from shelfsight.stats import holm

        keys = [k for k, v in self.raw.items() if v is not None]
        p_values = np.array([float(self.raw[k].result.p_value) for k in keys])  # type: ignore[attr-defined]
        self.adjusted = dict(zip(keys, (float(p) for p in holm(p_values)), strict=True)) if keys else {}


def _allowed_names(tier: Tier) -> str:
    return ", ".join(s for s, level in _LEVEL.items() if level <= tier.level)


# ---------------------------------------------------------------- the paper's guidance

CLAIM_RETRIEVAL = "Visual search: a contrastive (text-image) backbone with top-tuning retrieves best."
CLAIM_TOPTUNE_HELPS = "Visual search: top-tuning improves on the pre-trained embedding."
CLAIM_CLASSIFICATION = "Auto-tagging: a fine-tuned supervised backbone classifies best."
CLAIM_MIDDLE = "Top-tuning is the cheap middle: a gain over pre-trained, at a fraction of fine-tuning's time."


def guidance_checks(table: pd.DataFrame, dataset: str, tester: Tester | None = None) -> list[GuidanceCheck]:
    """The paper's guidance, claim by claim, on one dataset; "better" only where the paired test says so."""
    search = choices(table, VISUAL_SEARCH, dataset)
    tagging = choices(table, AUTO_TAGGING, dataset)
    search_on = task_metric(table, VISUAL_SEARCH, dataset) or ("", "")
    tagging_on = task_metric(table, AUTO_TAGGING, dataset) or ("", "")

    def test_on(on: tuple[str, str]) -> Callable[[Choice, Choice], PairedTest | None]:
        return lambda a, b: tester(dataset, on[0], on[1], a, b) if tester else None

    return [
        _best_is(CLAIM_RETRIEVAL, dataset, search, "contrastive", "toptune", test_on(search_on)),
        _toptune_helps(dataset, search, test_on(search_on)),
        _best_is(CLAIM_CLASSIFICATION, dataset, tagging, "supervised", "finetune", test_on(tagging_on)),
        _cheap_middle(dataset, search, test_on(search_on)),
    ]


Test = Callable[[Choice, Choice], PairedTest | None]


def _ahead(a: Choice, b: Choice, test: Test) -> tuple[bool | None, str]:
    """Is A significantly ahead of B? None when untested; and the numbers that say so."""
    found = test(a, b)
    if found is None:
        return None, f"{a.mean - b.mean:+.3f}, no paired test (per-query scores missing)"
    return found.significant and found.difference > 0, found.numbers()


def _best_is(claim: str, dataset: str, ranked: list[Choice], family: str, strategy: str,
             test: Test) -> GuidanceCheck:
    if not ranked:
        return GuidanceCheck(claim, dataset, "not measured", f"no result for this task on {dataset}")
    best = ranked[0]
    candidates = [c for c in ranked if c.family == family and c.strategy == strategy]
    if not candidates:
        families = sorted({c.family for c in ranked})
        strategies = sorted({c.strategy for c in ranked})
        return GuidanceCheck(claim, dataset, "not measured",
                             f"no {family} backbone with {strategy} in this run (families: {', '.join(families)}; "
                             f"strategies: {', '.join(strategies)}); best measured: {_value(best)}")
    if candidates[0] is best:
        others = [c for c in ranked if not (c.family == family and c.strategy == strategy)]
        if not others:
            return GuidanceCheck(claim, dataset, "agree", f"best is {_value(best)}, the only kind measured")
        ahead, numbers = _ahead(best, others[0], test)
        verdict: Verdict = "tied within noise" if ahead is False else "agree"
        return GuidanceCheck(claim, dataset, verdict, f"best is {_value(best)}, vs {_value(others[0])}: {numbers}")
    ahead, numbers = _ahead(best, candidates[0], test)
    verdict = "tied within noise" if ahead is False else "disagree"
    return GuidanceCheck(claim, dataset, verdict,
                         f"best {family} {strategy}: {_value(candidates[0])}, below {_value(best)} "
                         f"({best.family}): {numbers}")


def _by_model(ranked: list[Choice]) -> dict[str, dict[str, Choice]]:
    found: dict[str, dict[str, Choice]] = {}
    for choice in ranked:
        found.setdefault(choice.model, {})[choice.strategy] = choice
    return found


def _toptune_helps(dataset: str, ranked: list[Choice], test: Test) -> GuidanceCheck:
    pairs = [(model, s[BASELINE], s["toptune"]) for model, s in sorted(_by_model(ranked).items())
             if BASELINE in s and "toptune" in s]
    if not pairs:
        return GuidanceCheck(CLAIM_TOPTUNE_HELPS, dataset, "not measured",
                             "no backbone has both pretrained and toptune retrieval results")
    better = worse = 0
    notes = []
    for model, base, tuned in pairs:
        up, numbers = _ahead(tuned, base, test)
        down, _ = _ahead(base, tuned, test)
        better += bool(up if up is not None else tuned.mean > base.mean)
        worse += bool(down if down is not None else tuned.mean < base.mean)
        notes.append(f"{model} {base.mean:.3f} → {tuned.mean:.3f} ({numbers})")
    verdict: Verdict = ("agree" if 2 * better > len(pairs) else "disagree" if 2 * worse > len(pairs)
                        else "tied within noise")
    return GuidanceCheck(CLAIM_TOPTUNE_HELPS, dataset, verdict,
                         f"top-tuning is significantly better than pre-trained for {better} of {len(pairs)} "
                         f"backbones and significantly worse for {worse}: " + "; ".join(notes))


def _cheap_middle(dataset: str, ranked: list[Choice], test: Test) -> GuidanceCheck:
    triples = [(model, s[BASELINE], s["toptune"], s["finetune"]) for model, s in sorted(_by_model(ranked).items())
               if {BASELINE, "toptune", "finetune"} <= s.keys()]
    if not triples:
        return GuidanceCheck(CLAIM_MIDDLE, dataset, "not measured",
                             "no backbone has pretrained, toptune and finetune retrieval results")
    holds, notes = 0, []
    for model, base, top, fine in triples:
        top_s, fine_s = top.costs.get("tune_seconds", math.nan), fine.costs.get("tune_seconds", math.nan)
        gains, _ = _ahead(top, base, test)
        beyond_fine, _ = _ahead(top, fine, test)
        middle = (gains if gains is not None else top.mean > base.mean) and not (
            beyond_fine if beyond_fine is not None else top.mean > fine.mean)
        cheaper = top_s < fine_s  # False when either time is unknown
        holds += bool(middle and cheaper)
        share = (top.mean - base.mean) / (fine.mean - base.mean) if fine.mean != base.mean else math.nan
        notes.append(f"{model}: pretrained {base.mean:.3f}, toptune {top.mean:.3f} in {top_s:.1f} s "
                     f"({'a significant gain' if gains else 'no significant gain' if gains is False else 'untested'}"
                     f"), finetune {fine.mean:.3f} in {fine_s:.1f} s (top-tuning gets {share:.0%} of the gain "
                     f"for {top_s / fine_s:.0%} of the time)")
    verdict: Verdict = "agree" if 2 * holds > len(triples) else "disagree"
    return GuidanceCheck(CLAIM_MIDDLE, dataset, verdict,
                         f"holds for {holds} of {len(triples)} backbones; " + "; ".join(notes))


# ---------------------------------------------------------------- words

def _value(choice: Choice) -> str:
    return f"{choice.label} {_number(choice)}"


def _number(choice: Choice, extra: str = "") -> str:
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
    return (f"{head}: {best.label} ({best.family}), {rec.protocol} {rec.metric} {_number(best, side)}; "
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


def consensus(recs: Recommendations, task: str, tier: str) -> str | None:
    """Whether one choice wins the task on every dataset; None with a single dataset."""
    chosen = [r for r in recs.items if r.task == task and r.tier.name == tier and r.best is not None]
    if len({r.dataset for r in chosen}) < 2:
        return None
    labels = {r.best.label for r in chosen if r.best}
    if len(labels) == 1:
        return f"{labels.pop()} wins {task} ({tier}) on all {len(chosen)} datasets."
    per = "; ".join(f"{r.dataset}: {r.best.label}" for r in chosen if r.best)
    return f"No single winner for {task} ({tier}): {per}."
