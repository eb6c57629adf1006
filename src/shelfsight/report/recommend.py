"""The recommendation in words: one sentence per choice with the numbers behind it, the first screen's answer,
and whether one choice wins everywhere. The recommendation itself is computed by the bench from the results table
(``bench.recommend``: pure functions, nothing canned); its names are importable from here for the report's users.
"""

from __future__ import annotations

import math

from shelfsight.bench import strategies as registry
from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH, Choice, PairedTest, Tester, number_text, task_metric
from shelfsight.bench.recommend import (
    RATE,
    TIERS,
    Recommendation,
    Recommendations,
    Tier,
    deciding_cost,
    recommend,
    strategy_level,
)

__all__ = [
    "AUTO_TAGGING", "TIERS", "VISUAL_SEARCH", "Choice", "PairedTest", "Recommendation", "Recommendations", "Tester",
    "Tier", "answer", "cheaper_note", "consensus", "describe", "format_cost", "headline", "margin_note",
    "number_text", "recommend", "task_metric",
]


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


def _value(choice: Choice) -> str:
    return f"{choice.label} {number_text(choice)}"


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
