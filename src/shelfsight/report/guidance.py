"""What a run tells its reader to do. The paper's guidance, claim by claim, against the run's numbers: agree,
disagree, tied within noise or not measured, with the evidence (a claim that one choice beats another holds
only where the paired test on the same queries says so). And the exact ``shelfsight index`` and ``shelfsight
serve`` commands that serve the recommended choice (:func:`serving_commands`)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.report.analysis import BASELINE

if TYPE_CHECKING:
    from shelfsight.bench.results import CellResult
    from shelfsight.report.data import RunData
    from shelfsight.report.recommend import Choice, PairedTest, Recommendations, Tester

Verdict = Literal["agree", "disagree", "tied within noise", "not measured"]
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
    from shelfsight.report.recommend import AUTO_TAGGING, VISUAL_SEARCH, choices, task_metric

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


Test = Callable[["Choice", "Choice"], "PairedTest | None"]


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
    triples = [(model, s[BASELINE], s[TOPTUNE], s[FINETUNE]) for model, s in sorted(_by_model(ranked).items())
               if {BASELINE, TOPTUNE, FINETUNE} <= s.keys()]
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


def _value(choice: Choice) -> str:
    from shelfsight.report.recommend import number_text

    return f"{choice.label} {number_text(choice)}"


# ---------------------------------------------------------------- the commands that serve the choice

SERVE_PORT = 8000
NO_TAG = {"knn": "kNN tagging has no head: its vote is the labels of `POST /search`'s nearest items",
          FINETUNE: "the fine-tuned backbone's cosine head is not an `index --head`: /tag is not served"}


@dataclass(frozen=True)
class ServingCommands:
    """One index and its service for a dataset's recommended choice(s), copy-pasteable."""

    dataset: str
    serves: str
    """What it answers: "visual search and auto-tagging", or one of them."""
    index: str
    serve: str
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [f"# {self.dataset}: {self.serves}", *(f"# {note}" for note in self.notes), self.index, self.serve]


@dataclass(frozen=True)
class _Served:
    """What one choice needs from ``shelfsight index``."""

    model: list[str]
    head: str | None = None
    vectors_head: bool = False
    notes: tuple[str, ...] = ()


def serving_commands(run: RunData, recs: Recommendations) -> list[ServingCommands]:
    """Per dataset, the commands that index and serve the widest budget's visual search and auto-tagging choices:
    one index when both use the same backbone and at most one head (the tagging head beside the search vectors),
    else one each."""
    from shelfsight.report.recommend import AUTO_TAGGING, TIERS, VISUAL_SEARCH

    found: list[ServingCommands] = []
    port = SERVE_PORT
    for dataset in dict.fromkeys(r.dataset for r in recs.items):
        search = recs.get(VISUAL_SEARCH, dataset, TIERS[-1].name).best
        tagging = recs.get(AUTO_TAGGING, dataset, TIERS[-1].name).best
        wanted = [(task, _served(run, dataset, choice, task == VISUAL_SEARCH)) for task, choice in
                  ((VISUAL_SEARCH, search), (AUTO_TAGGING, tagging)) if choice is not None]
        if len(wanted) == 2 and wanted[0][1].model == wanted[1][1].model and (
                None in (wanted[0][1].head, wanted[1][1].head) or wanted[0][1].head == wanted[1][1].head):
            one = wanted[1][1]
            wanted = [(f"{VISUAL_SEARCH} and {AUTO_TAGGING}",
                       _Served(one.model, one.head or wanted[0][1].head, wanted[0][1].vectors_head,
                               tuple(dict.fromkeys(wanted[0][1].notes + one.notes))))]
        for task, served in wanted:
            suffix = {VISUAL_SEARCH: "-search", AUTO_TAGGING: "-tagging"}.get(task, "") if len(wanted) > 1 else ""
            folder = run.run_dir.resolve() / "index" / f"{dataset}{suffix}"
            index = ["shelfsight", "index", *served.model, *_catalogue(run.config, dataset), "--index-dir",
                     str(folder)]
            index += ["--head", served.head] if served.head else []
            index += ["--vectors", "head"] if served.vectors_head else []
            serve = ["shelfsight", "serve", "--index-dir", str(folder), "--port", str(port)]
            found.append(ServingCommands(dataset, task, shlex.join(index), shlex.join(serve), served.notes))
            port += 1
    return found


def _served(run: RunData, dataset: str, choice: Choice, searching: bool) -> _Served:
    """The model options, head and notes that serve ``choice``: a head from its cell's work folder."""
    entry = _model_entry(run.config, choice.model)
    model = ["--model", str(entry.get("name", choice.model))]
    model += ["--weights", str(entry["weights"])] if entry.get("weights") else []
    notes = [f"the run embedded with preprocessing {entry['preprocess']}, which `index` has no option for: the index "
             "embeds at the model's own, so its vectors (and a head's inputs) differ from those measured"] \
        if entry.get("preprocess") else []
    notes += ["a randomly initialised model (pretrained: false): `index` loads the pre-trained weights"] \
        if entry.get("pretrained") is False else []
    cell = _cell(run, dataset, choice)
    details = cell.details if cell is not None else {}
    here = run.run_dir / "work" / cell.cell.cell_id / "head" if cell is not None else None
    head = str(here) if here is not None and (here / "head.json").is_file() else details.get("head")  # a moved run
    if choice.strategy == FINETUNE and details.get("finetuned"):
        model[1] = f"{model[1]}@finetune:{Path(str(details['finetuned'])).resolve()}"
    if searching:
        if choice.strategy.startswith(TOPTUNE) and head:
            return _Served(model, str(Path(head).resolve()), True, tuple(notes))
        return _Served(model, None, False, tuple(notes))
    if head and (Path(head) / "head.json").is_file():
        return _Served(model, str(Path(head).resolve()), False, tuple(notes))
    reason = NO_TAG.get(choice.strategy, f"{choice.label} saved no head in its work folder: /tag is not served")
    return _Served(model, None, False, (*notes, reason))


def _model_entry(config: dict[str, Any], label: str) -> dict[str, Any]:
    """The config's model entry whose label (alias, else name) the results use."""
    for entry in config.get("models") or []:
        item = {"name": entry} if isinstance(entry, str) else dict(entry)
        if label in (item.get("alias"), item.get("name")):
            return item
    return {"name": label}


def _catalogue(config: dict[str, Any], dataset: str) -> list[str]:
    """``--catalog`` (the user catalogue behind an alias, else the registered name), its image root, data dir."""
    entry = next((dict(e) if isinstance(e, dict) else {"name": e} for e in config.get("datasets") or []
                  if (e.get("name") if isinstance(e, dict) else e) == dataset), {"name": dataset})
    options = ["--catalog", _absolute(str(entry["source"])) if entry.get("source") else str(entry["name"])]
    options += ["--image-root", _absolute(str(entry["image_root"]))] if entry.get("image_root") else []
    options += ["--data-dir", str(config["data_dir"])] if config.get("data_dir") and not entry.get("source") else []
    return options


def _absolute(location: str) -> str:
    """A user catalogue's path made absolute where it exists (the commands may be pasted in another folder)."""
    return str(Path(location).resolve()) if Path(location).exists() else location


def _cell(run: RunData, dataset: str, choice: Choice) -> CellResult | None:
    """The choice's stored cell (the first seed of a repeated one)."""
    cells = [c for c in run.cells if c.status == "ok" and c.cell.group == (choice.model, dataset, choice.strategy)]
    return min(cells, key=lambda c: c.cell.seed or 0, default=None)
