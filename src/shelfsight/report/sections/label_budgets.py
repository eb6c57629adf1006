"""Label efficiency: quality against labelled photos per class, and the budget where tuning starts to pay.

Reads ``label-budgets.csv`` (the curves: each strategy's mean over subset seeds with its 95% interval, the
pre-trained embedding as the zero-label level) and ``label-budgets-tests.csv`` (the paired comparisons behind each
break-even budget, from the run's one Holm family), both written by the bench runner (``bench.label_budgets``).
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

from shelfsight.bench import strategies as registry
from shelfsight.bench.budgets import ALL, CLASSIFICATION_METRIC, RETRIEVAL_METRIC, VALIDATION, ZERO_LABEL
from shelfsight.bench.label_budgets import (
    MIN_DRAWS,
    BreakEven,
    break_evens,
    budget_order,
    read_curves,
)
from shelfsight.bench.strategies.base import CLASSIFICATION
from shelfsight.report.data import RunData
from shelfsight.report.figures import LABEL_PT, png
from shelfsight.report.images import png_uri

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

LEAD = ("Each tuned strategy trained on N labelled photos per class, for several seeded draws of those photos "
        "(nested: the 5-per-class photos hold the 2-per-class ones), scored on the untouched test protocol. "
        f"Validation is {VALIDATION}. Lines: mean over the draws; bars: 95% bootstrap intervals over draws and "
        "queries; dashed: the pre-trained embedding, which needs no label. The break-even budget is the smallest "
        "N at which the strategy is significantly better than its reference on the same queries (paired test, "
        "Holm-corrected over the run's one family of comparisons, and an interval that excludes zero); it is not "
        f"called with fewer than {MIN_DRAWS} draws per budget, where the interval over draws under-covers. Only "
        "measured budgets are named: the break-even lies between that N and the largest budget measured below it, "
        "and nothing is claimed for the budgets in between.")


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Plot, Section  # the package imports this module

    found = read_curves(run.run_dir)
    if found is None:
        return None
    curves, tests = found
    evens = break_evens(tests) if not tests.empty else []
    plots, parts, markdown = [], [f"<p>{html.escape(LEAD)}</p>"], [LEAD, ""]
    answers = advice(evens, curves)
    for dataset, frame in curves.groupby("dataset", sort=True):
        protocol = main_protocol(tests, str(dataset), frame)
        title = f"{dataset}: quality against labelled photos per class"
        plot = Plot(f"label-budgets-{_slug(str(dataset))}", title, curve_plot(frame, protocol, title),
                    "Log x; 'all' is every training photo (its mean per class in brackets); dashed: pre-trained.")
        plots.append(plot)
        rows = [e for e in evens if e.dataset == dataset]
        parts += [f"<h3>{html.escape(str(dataset))}</h3>",
                  f'<img src="{png_uri(plot.png)}" alt="{html.escape(title)}" style="max-width:100%">',
                  _evens_html(rows, curves), _points_html(frame, protocol)]
        markdown += [f"### {dataset}", "", *_evens_markdown(rows, curves), "", *_points_markdown(frame, protocol), ""]
    return Section("label-budgets", "Label efficiency", "\n".join(parts), "\n".join(markdown), plots, answers)


def main_protocol(tests: pd.DataFrame, dataset: str, frame: pd.DataFrame) -> str | None:
    """The retrieval protocol the curves are drawn for: the one the tests used, else the first measured."""
    used = tests.loc[(tests["dataset"] == dataset) & (tests["protocol"] != CLASSIFICATION), "protocol"]
    if not used.empty:
        return str(used.iloc[0])
    measured = sorted(p for p in frame["protocol"].unique() if p != CLASSIFICATION)
    return str(measured[0]) if measured else None


# ---------------------------------------------------------------------------------------------- the curves
def positions(frame: pd.DataFrame) -> dict[str, float]:
    """x of each budget: N itself; ``all`` at the mean training photos per class (to the right of every N)."""
    numbers = sorted(float(b) for b in frame["budget"].unique() if b not in (ALL, str(ZERO_LABEL)))
    per_class = frame.loc[frame["budget"] == ALL, "train_per_class"].dropna()
    largest = numbers[-1] if numbers else 1.0
    end = float(per_class.mean()) if not per_class.empty else largest * 2
    return {**{f"{n:g}": n for n in numbers}, ALL: max(end, largest * 1.3)}


def curve_plot(frame: pd.DataFrame, protocol: str | None, title: str) -> bytes:
    """mMP@5 (main retrieval protocol) and accuracy against labelled photos per class, one line per backbone and
    strategy with 95% interval bars; the pre-trained (and zero-shot) levels as dashed horizontal lines."""
    panels = [(protocol, RETRIEVAL_METRIC)] if protocol else []
    panels.append((CLASSIFICATION, CLASSIFICATION_METRIC))
    figure = Figure(figsize=(5.2 * len(panels), 4.0))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    x_of = positions(frame)
    models = sorted(frame["model"].unique())
    kinds = sorted(set(frame["kind"]), key=registry.rank)
    for axes, (panel_protocol, metric) in zip(axes_list, panels, strict=True):
        part = frame[(frame["protocol"] == panel_protocol) & (frame["metric"] == metric)]
        for m, model in enumerate(models):
            style = ("-", "--", ":", "-.")[m % 4]
            for k, kind in enumerate(kinds):
                line = part[(part["model"] == model) & (part["kind"] == kind) & (part["budget"] != str(ZERO_LABEL))]
                if line.empty:
                    continue
                line = line.assign(x=line["budget"].map(x_of)).dropna(subset=["x"]).sort_values("x")
                below = (line["mean"] - line["ci_low"]).clip(lower=0).fillna(0)
                above = (line["ci_high"] - line["mean"]).clip(lower=0).fillna(0)
                axes.errorbar(line["x"], line["mean"], yerr=[below, above], color=f"C{k % 10}", linestyle=style,
                              marker="o", markersize=3, capsize=2, linewidth=1.2, label=f"{model} · {kind}")
            for level in part[(part["model"] == model) & (part["budget"] == str(ZERO_LABEL))].itertuples():
                axes.axhline(float(level.mean), color="grey" if level.kind == registry.baseline().name else "purple",
                             linestyle=(0, (4, 2 + 2 * m)), linewidth=1, alpha=0.8)
                axes.annotate(f"{model} · {level.kind}", (min(x_of.values()), float(level.mean)), fontsize=LABEL_PT,
                              xytext=(0, 3), textcoords="offset points", color="dimgrey")
        axes.set_xscale("log")
        ticks = sorted(x_of.items(), key=lambda item: item[1])
        axes.set_xticks([x for _, x in ticks], [_tick(b, frame) for b, _ in ticks], fontsize=LABEL_PT)
        axes.minorticks_off()
        axes.set_xlabel("labelled photos per class (log)")
        axes.set_ylabel(f"{metric}" + (f" ({panel_protocol})" if panel_protocol != CLASSIFICATION else ""))
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=LABEL_PT, loc="lower right")
    figure.suptitle(title, fontsize=10)
    return png(figure)


def _tick(budget: str, frame: pd.DataFrame) -> str:
    if budget != ALL:
        return budget
    per_class = frame.loc[frame["budget"] == ALL, "train_per_class"].dropna()
    return f"all (≈{per_class.mean():.0f})" if not per_class.empty else ALL


# ---------------------------------------------------------------------------------------------- the answers
def describe_budget(budget: str | None, curves: pd.DataFrame, dataset: str) -> str:
    if budget is None:
        return "not reached"
    if budget != ALL:
        return f"{budget} per class"
    per_class = _per_class(curves, dataset)
    return f"all training photos, ≈{per_class:.0f} per class" if per_class is not None else "all training photos"


def advice(evens: list[BreakEven], curves: pd.DataFrame) -> list[str]:
    """First-screen sentences: at which measured budgets the pre-trained embedding is the choice for visual
    search. Only measured budgets are named: a break-even lies between two of them, never at a number between."""
    lines = []
    for even in evens:
        if even.reference != registry.baseline().name or even.strategy != registry.toptune.NAME:
            continue
        lines.append(f"How many labels before top-tuning pays? On {even.dataset}, {_answer(even, curves)}")
    return lines


def _answer(even: BreakEven, curves: pd.DataFrame) -> str:
    """The sentence after ``On DATASET,`` for one top-tuning curve against the pre-trained embedding."""
    end = describe_budget(even.largest, curves, even.dataset)
    caveat = "" if even.holds else ", though not at every larger budget"
    if not even.called:
        return (f"for {even.model}: {too_few(even)}; run label_budgets.subsets: {MIN_DRAWS} or more to call a "
                "break-even.")
    if even.budget is None:
        return (f"{even.model}'s top-tuned embedding never beat its pre-trained one significantly "
                f"({RETRIEVAL_METRIC}, up to {end}): use the pre-trained embedding.")
    if even.below is None:
        first = "one labelled photo per class" if even.budget == "1" else \
            f"{describe_budget(even.budget, curves, even.dataset)}, the smallest budget measured"
        return f"{even.model}'s top-tuned embedding beats its pre-trained one from {first} ({_numbers(even)}{caveat})."
    at = describe_budget(even.budget, curves, even.dataset)
    few = "one labelled photo" if even.below == "1" else f"up to {even.below} labelled photos"
    return (f"with {few} per class, use {even.model}'s pre-trained embedding: its top-tuned "
            f"embedding is first significantly better at {at} ({_numbers(even)}{caveat}). {_between(even, curves)}")


def _between(even: BreakEven, curves: pd.DataFrame) -> str:
    """``The break-even lies between 5 and all (≈180 per class): nothing between them was measured.``"""
    upper = str(even.budget)
    if upper == ALL:
        per_class = _per_class(curves, even.dataset)
        upper = f"all ({f'≈{per_class:.0f} per class' if per_class is not None else 'every training photo'})"
    return (f"The break-even lies between {even.below} and {upper}: nothing between them was measured "
            "(add budgets there to narrow it).")


def _per_class(curves: pd.DataFrame, dataset: str) -> float | None:
    per_class = curves.loc[(curves["dataset"] == dataset) & (curves["budget"] == ALL), "train_per_class"].dropna()
    return float(per_class.mean()) if not per_class.empty else None


def _numbers(even: BreakEven) -> str:
    """``mMP@5 0.587 against 0.521, Holm-adjusted p=0.002`` at the break-even budget."""
    text = f"{even.metric} {even.mean:.3f} against {even.reference_mean:.3f}"
    return text + (f", Holm-adjusted p={even.p_holm:.2g}" if not math.isnan(even.p_holm) else "")


def too_few(even: BreakEven) -> str:
    return f"too few draws to call (N = {even.draws} < {MIN_DRAWS})"


def _verdict(even: BreakEven, curves: pd.DataFrame) -> str:
    if not even.called:
        return too_few(even)
    if even.budget is None:
        return f"not reached (tested up to {describe_budget(even.largest, curves, even.dataset)})"
    held = "" if even.holds else "; not significant at every larger budget"
    gap = f"; not at {even.below}, nothing measured between" if even.below is not None else ""
    return describe_budget(even.budget, curves, even.dataset) + gap + held


EVEN_HEADER = ("model", "strategy", "against", "metric", "first significantly better at")


def _even_rows(evens: list[BreakEven], curves: pd.DataFrame) -> list[tuple[str, ...]]:
    return [(e.model, e.strategy, e.reference, e.metric, _verdict(e, curves)) for e in evens]


def _evens_html(evens: list[BreakEven], curves: pd.DataFrame) -> str:
    if not evens:
        return "<p class=\"absent\">No break-even computed: the curves lack their reference cells.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in EVEN_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in _even_rows(evens, curves))
    return f"<table class=\"break-even\"><tr>{head}</tr>{body}</table>"


def _evens_markdown(evens: list[BreakEven], curves: pd.DataFrame) -> list[str]:
    if not evens:
        return ["No break-even computed: the curves lack their reference cells."]
    return ["| " + " | ".join(EVEN_HEADER) + " |", "|" + " --- |" * len(EVEN_HEADER),
            *("| " + " | ".join(row) + " |" for row in _even_rows(evens, curves))]


def _points(frame: pd.DataFrame, protocol: str | None) -> tuple[list[str], list[list[str]]]:
    """One row per backbone and strategy, one column per budget: mean [95% interval] of the main metric(s)."""
    wanted = [(protocol, RETRIEVAL_METRIC)] if protocol else []
    wanted.append((CLASSIFICATION, CLASSIFICATION_METRIC))
    budgets = sorted(frame["budget"].unique(), key=budget_order)
    rows = []
    for (model, kind), part in frame.groupby(["model", "kind"], sort=True):
        for panel_protocol, metric in wanted:
            points = part[(part["protocol"] == panel_protocol) & (part["metric"] == metric)].set_index("budget")
            if points.empty:
                continue
            cells = [_cell(points.loc[b]) if b in points.index else "" for b in budgets]
            rows.append([str(model), str(kind), metric, *cells])
    return ["model", "strategy", "metric", *(("0 (no label)" if b == str(ZERO_LABEL) else b) for b in budgets)], rows


def _cell(row: pd.Series) -> str:
    low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    interval = "" if pd.isna(low) or pd.isna(high) else f" [{low:.3f}, {high:.3f}]"
    return f"{row['mean']:.3f}{interval}"


def _points_html(frame: pd.DataFrame, protocol: str | None) -> str:
    header, rows = _points(frame, protocol)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class=\"scroll\"><table><tr>{head}</tr>{body}</table></div>"


def _points_markdown(frame: pd.DataFrame, protocol: str | None) -> list[str]:
    header, rows = _points(frame, protocol)
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
