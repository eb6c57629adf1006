"""The Markdown summary: the recommendation, the main leaderboards and the figures as files beside it."""

from __future__ import annotations

from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH
from shelfsight.bench.recommend import TIERS
from shelfsight.report.build import CATEGORY_RULE, Board, Report
from shelfsight.report.guidance import serving_commands
from shelfsight.report.html import number
from shelfsight.report.recommend import (
    answer,
    consensus,
    describe,
    format_cost,
    headline,
    margin_note,
)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _board(board: Board) -> list[str]:
    lines = [f"### {board.dataset} · {board.protocol}", "",
             "| model | strategy | " + " | ".join(board.metrics) + " |", "|" + " --- |" * (len(board.metrics) + 2)]
    for model, strategy, cells in board.rows:
        values = []
        for c in cells:
            text = number(c.value, c.metric) + (f" ± {c.std:.3f}" if c.std > 0 else "")
            text += f" [{c.low:.3f}, {c.high:.3f}]" if c.has_interval else ""
            text += " ≈" if c.tied else ""
            values.append(f"**{text}**" if c.best else text)
        lines.append(f"| {_cell(model)} | {_cell(strategy)} | " + " | ".join(values) + " |")
    return [*lines, ""]


def _commands(report: Report) -> list[str]:
    """The commands that serve the choice, as a shell block on the first screen."""
    found = serving_commands(report.run, report.recommendations)
    return ["Serve the choice:", "", "```bash", *(line for c in found for line in c.lines()), "```", ""] if found \
        else []


def render_markdown(report: Report, figures_dir: str = "figures") -> str:
    run = report.run
    recs = report.recommendations
    lines = [f"# shelfsight report · {run.name}", "",
             f"Generated {report.generated} from `{run.run_dir}`; the full report with retrieval grids is "
             "`report.html` beside this file.", "",
             *(f"**{answer(recs, task)}**\n" for task in (VISUAL_SEARCH, AUTO_TAGGING)),
             *(f"**{line}**\n" for line in report.category_answers()),
             *(f"**{line}**\n" for extra in report.extras for line in extra.answers),
             *_commands(report), "## Recommendation", ""]
    if not report.datasets:
        lines.append("No result to recommend from: no cell finished (see the failed cells below).")
    lines += [f"- {describe(rec)}" for rec in headline(recs)]
    lines += [f"- {line}" for task in (VISUAL_SEARCH, AUTO_TAGGING)
              if (line := consensus(recs, task, TIERS[-1].name))]
    lines += [f"- Visual search on {dataset}: {warning}" for (dataset, _), warning in sorted(report.category.items())]
    lines += [f"- {CATEGORY_RULE}"] if report.datasets else []
    lines += ["", "### Every budget", "", "| task | dataset | budget | choice | value | lead | cost |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for rec in recs.items:
        if rec.best is None:
            lines.append(f"| {rec.task} | {rec.dataset} | {rec.tier.name} | - | - | {_cell(rec.reason)} | - |")
            continue
        value = f"{rec.metric} {rec.best.mean:.3f}" + (f" ± {rec.best.std:.3f}" if rec.best.n > 1 else "")
        costs = "; ".join(format_cost(n, v) for n, v in rec.best.costs.items())
        lines.append(f"| {rec.task} | {rec.dataset} | {rec.tier.name} | {_cell(rec.best.label)} | "
                     f"{value} (n={rec.best.n}) | {_cell(margin_note(rec))} | {costs} |")
    lines += ["", "### Against the paper's guidance", "", "| claim | dataset | verdict | evidence |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {_cell(c.claim)} | {c.dataset} | **{c.verdict}** | {_cell(c.evidence)} |" for c in recs.checks]
    lines += ["", "## Leaderboard (main protocol and classification; every protocol in `leaderboard.md`)", ""]
    for dataset in report.datasets:
        main = next((b for b in report.boards if b.dataset == dataset and b.protocol not in ("classification", "cost")),
                    None)
        for board in report.boards:
            if board.dataset == dataset and (board is main or board.protocol == "classification"):
                lines += _board(board)
    for extra in report.extras:
        lines += [f"## {extra.title}", "", extra.markdown.rstrip(), ""]
    scope = report.scope or ["No paired comparison in this run."]
    lines += ["## Tests and scope", "", *(f"- {line}" for line in scope), ""]
    lines += ["## Figures", ""]
    for plot in report.plots:
        lines += [f"![{plot.title}]({figures_dir}/{plot.name}.png)", ""]
    for section, reason in report.absent.items():
        lines += [f"- {section}: not shown, {reason}."]
    if not report.index_recall.empty:
        lines += ["", "## Vector database against exact search", "", "| dataset | protocol | metric | min | mean |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r.dataset} | {r.protocol} | {r.metric} | {r.min:.4f} | {r.mean:.4f} |"
                  for r in report.index_recall.itertuples()]
    if run.failed:
        lines += ["", "## Failed cells", ""] + [f"- `{c.cell.cell_id}`: {c.error}" for c in run.failed]
    return "\n".join(lines) + "\n"
