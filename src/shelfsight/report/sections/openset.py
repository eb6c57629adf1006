"""Open-set search and tagging (the ``openset`` strategy): per backbone, task and (head, score), how well the score
separates photos of known classes from photos of classes held out of the catalogue (AUROC with its interval, FPR at
95% TPR), the threshold chosen on validation for the target precision of "match" answers and what it accepts; then
whether a tuned head rejects unknowns better or worse than the frozen embedding (paired AUROC differences), and
for the first screen, per task, the threshold to serve with.

AUROC intervals: with one seed, the cell's bootstrap over whole classes; with several, a t interval over the seeds
(each a fresh draw of unknown classes): ``bench.strategies.openset_scoring``. The results table leaves AUROC's
interval empty on purpose (AUROC is no mean of per-query values)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from shelfsight.bench.results import CellResult
from shelfsight.bench.strategies.openset import NAME
from shelfsight.bench.strategies.openset_data import RETRIEVAL, TAGGING
from shelfsight.bench.strategies.openset_scoring import seeds_interval, seeds_p
from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

TASKS = {RETRIEVAL: "search", TAGGING: "tagging"}
LEAD = ("A quarter of the training classes (by default; drawn per seed, stratified by class size) is held out of "
        "the gallery and of every head; their test photos ask for something the catalogue does not have. AUROC: the "
        "chance that a photo of a known class scores above one of an unknown class (0.5 = no better than a coin); "
        "FPR95: the share of unknown photos accepted when 95% of known ones are. The threshold is chosen on the "
        "validation photos for the target precision of 'match' answers; known accepted and unknown turned away are "
        "measured on the test photos at that threshold.")

PAIRED = ("Does tuning help or hurt rejection? Each tuned head's first score against the frozen embedding's (search: "
          "top-1 cosine; tagging: nearest class mean), paired on the same photos and the same unknown classes. With "
          "several seeds the interval and p are a t interval and t test over the seeds' differences (each seed a "
          "fresh draw of unknown classes); with one seed, a bootstrap over whole classes. Not corrected for "
          "multiplicity.")


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    task: str
    key: str
    seeds: int
    auroc: tuple[float, float, float]
    means: dict[str, float]
    reached: int
    """Seeds whose validation photos reached the target precision (the threshold's mean is over those)."""


def _mean(cells: list[CellResult], task: str, metric: str) -> float:
    values = [c.metrics.get(task, {}).get(metric, math.nan) for c in cells]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def rows_of(cells: list[CellResult]) -> list[Row]:
    """One row per (task, head:score) of one (model, dataset)'s seeds."""
    first, rows = cells[0], []
    for task in TASKS:
        keys = [m.split(":", 1)[1] for m in first.metrics.get(task, {}) if m.startswith("auroc:")]
        for key in keys:
            per_seed = [c.metrics.get(task, {}).get(f"auroc:{key}", math.nan) for c in cells]
            single = first.details.get(task, {}).get("scores", {}).get(key, {}).get("auroc_interval")
            means = {m: _mean(cells, task, f"{m}:{key}") for m in
                     ("fpr95", "threshold", "known_accept", "unknown_accept", "openset_accuracy", "known_accuracy")}
            reached = sum(math.isfinite(c.metrics.get(task, {}).get(f"threshold:{key}", math.nan)) for c in cells)
            rows.append(Row(first.cell.model, first.cell.dataset, task, key, len(cells),
                            seeds_interval(per_seed, single if len(cells) == 1 else None), means, reached))
    return rows


def paired_rows(cells: list[CellResult]) -> list[tuple[str, ...]]:
    """Each tuned head against the task's frozen baseline: the AUROC difference, its interval, a verdict."""
    found: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        for task in TASKS:
            for pair in cell.details.get(task, {}).get("paired", []):
                found[(task, pair["a"], pair["b"])].append(pair)
    out: list[tuple[str, ...]] = []
    for (task, a, b), pairs in found.items():
        single = [pairs[0]["low"], pairs[0]["high"]] if len(pairs) == 1 else None
        differences = [p["difference"] for p in pairs]
        mean, low, high = seeds_interval(differences, single)
        p_value = seeds_p(differences, pairs[0]["p"] if len(pairs) == 1 else None)
        verdict = ("rejects unknowns better" if low > 0 else "rejects unknowns worse" if high < 0
                   else "no clear difference")
        out.append((cells[0].cell.model, cells[0].cell.dataset, TASKS[task], f"{a} vs {b}",
                    f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", _p(p_value), str(len(pairs)), verdict))
    return out


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.0%}"


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def _num(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def table_row(row: Row) -> tuple[str, ...]:
    mean, low, high = row.auroc
    return (row.model, row.dataset, TASKS[row.task], row.key, f"{_num(mean)} [{_num(low)}, {_num(high)}]",
            _num(row.means["fpr95"]), _threshold(row),
            _pct(row.means["known_accept"]), _pct(1.0 - row.means["unknown_accept"]),
            _num(row.means["openset_accuracy"]), str(row.seeds))


def _threshold(row: Row) -> str:
    if not row.reached:
        return "not reached"
    value = _num(row.means["threshold"])
    return value if row.reached == row.seeds else f"{value} ({row.reached} of {row.seeds} seeds)"


def answers(rows: list[Row], target: float | None) -> list[str]:
    """Per dataset and task, the best-separating (model, head, score) and the threshold to serve with."""
    best: dict[tuple[str, str], Row] = {}
    for row in rows:
        kept = best.get((row.dataset, row.task))
        if math.isfinite(row.auroc[0]) and (kept is None or row.auroc[0] > kept.auroc[0]):
            best[(row.dataset, row.task)] = row
    said = []
    aim = f" (target precision {target:.0%})" if target else ""
    for (dataset, task), row in sorted(best.items()):
        mean, low, high = row.auroc
        threshold = row.means["threshold"]
        head = f"Open-set {TASKS[task]} on {dataset}: {row.model} with {row.key} separates best (AUROC {mean:.3f} " \
               f"[{low:.3f}, {high:.3f}])"
        if not math.isfinite(threshold):
            said.append(f"{head}; no threshold reached the target precision{aim} on validation: answer nothing "
                        "automatically, or lower the target.")
            continue
        said.append(f"{head}; serve with threshold {_threshold(row)}{aim}: it turns away "
                    f"{_pct(1.0 - row.means['unknown_accept'])} of photos of unknown classes, at the cost of "
                    f"{_pct(1.0 - row.means['known_accept'])} of known ones." + _strict(row))
    return said


def _strict(row: Row) -> str:
    """Why most known photos are turned away, when they are: the answers themselves are often wrong."""
    if not row.means["known_accept"] < 0.5:
        return ""
    return (f" Its answers to known photos are right {_pct(row.means['known_accuracy'])} of the time, so the target "
            "precision needs a strict threshold: lower `openset.target_precision` to answer more photos.")


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Section

    groups: dict[tuple[str, str], list[CellResult]] = defaultdict(list)
    for cell in run.cells:
        if cell.status == "ok" and cell.cell.strategy == NAME:
            groups[(cell.cell.model, cell.cell.dataset)].append(cell)
    if not groups:
        return None
    rows = [r for key in sorted(groups) for r in rows_of(groups[key])]
    paired = [p for key in sorted(groups) for p in paired_rows(groups[key])]
    section = run.config.get(NAME)
    target = section.get("target_precision") if isinstance(section, dict) else None
    head = ("model", "dataset", "task", "head:score", "AUROC [95% interval]", "FPR95", "threshold", "known accepted",
            "unknown turned away", "open-set accuracy", "seeds")
    pair_head = ("model", "dataset", "task", "AUROC difference", "mean [95% interval]", "p", "seeds", "verdict")
    html = [f"<p>{escape(LEAD)}</p>", _html_table(head, [table_row(r) for r in rows], "openset-rejection"),
            f"<p>{escape(PAIRED)}</p>", _html_table(pair_head, paired, "openset-paired")]
    markdown = [LEAD, "", _md_table(head, [table_row(r) for r in rows]), "",
                PAIRED, "",
                _md_table(pair_head, paired)]
    said = answers(rows, target)
    return Section(NAME, "Open-set search and tagging: no close match", "\n".join(html), "\n".join(markdown),
                   answers=said)


def _html_table(head: tuple[str, ...], rows: list[tuple[str, ...]], css: str) -> str:
    lines = [f'<table class="{css}"><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows]
    return "\n".join([*lines, "</table>"])


def _md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(v.replace("|", "/") for v in row) + " |" for row in rows])
