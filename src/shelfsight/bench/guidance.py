"""The paper's guidance, claim by claim, against a run's numbers: agree, disagree, tied within noise or not
measured, with the evidence. A claim that one choice beats another holds only where the paired test on the same
queries says so; which pairs are tested depends on the table's means only (the bench gathers them into the run's
family beforehand: ``bench.significance.report_requests``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.choices import (
    AUTO_TAGGING,
    VISUAL_SEARCH,
    Choice,
    PairedTest,
    Tester,
    choices,
    number_text,
    task_metric,
)

Verdict = Literal["agree", "disagree", "tied within noise", "not measured"]
BASELINE = registry.baseline().name
TOPTUNE, FINETUNE = registry.toptune.NAME, registry.finetune.NAME
"""The strategies the paper's guidance speaks of."""


@dataclass(frozen=True)
class GuidanceCheck:
    """One claim of the paper's guidance against this run's numbers."""

    claim: str
    dataset: str
    verdict: Verdict
    evidence: str


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
        _best_is(CLAIM_RETRIEVAL, dataset, search, "contrastive", TOPTUNE, test_on(search_on)),
        _toptune_helps(dataset, search, test_on(search_on)),
        _best_is(CLAIM_CLASSIFICATION, dataset, tagging, "supervised", FINETUNE, test_on(tagging_on)),
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
    pairs = [(model, s[BASELINE], s[TOPTUNE]) for model, s in sorted(_by_model(ranked).items())
             if BASELINE in s and TOPTUNE in s]
    if not pairs:
        return GuidanceCheck(CLAIM_TOPTUNE_HELPS, dataset, "not measured",
                             f"no backbone has both {BASELINE} and {TOPTUNE} retrieval results")
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
    triples = [(model, s[BASELINE], s[TOPTUNE], s[FINETUNE]) for model, s in sorted(_by_model(ranked).items())
               if {BASELINE, TOPTUNE, FINETUNE} <= s.keys()]
    if not triples:
        return GuidanceCheck(CLAIM_MIDDLE, dataset, "not measured",
                             f"no backbone has {BASELINE}, {TOPTUNE} and {FINETUNE} retrieval results")
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
        notes.append(f"{model}: {BASELINE} {base.mean:.3f}, {TOPTUNE} {top.mean:.3f} in {top_s:.1f} s "
                     f"({'a significant gain' if gains else 'no significant gain' if gains is False else 'untested'}"
                     f"), {FINETUNE} {fine.mean:.3f} in {fine_s:.1f} s (top-tuning gets {share:.0%} of the gain "
                     f"for {top_s / fine_s:.0%} of the time)")
    verdict: Verdict = "agree" if 2 * holds > len(triples) else "disagree"
    return GuidanceCheck(CLAIM_MIDDLE, dataset, verdict,
                         f"holds for {holds} of {len(triples)} backbones; " + "; ".join(notes))


def _value(choice: Choice) -> str:
    return f"{choice.label} {number_text(choice)}"
