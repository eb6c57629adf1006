"""Render the report as one self-contained HTML page: figures and thumbnails inlined as data: URIs."""

from __future__ import annotations

import json
import math

import jinja2

from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH
from shelfsight.bench.leaderboard import COUNTS
from shelfsight.bench.recommend import TIERS
from shelfsight.report.build import CATEGORY_RULE, Report, slug
from shelfsight.report.guidance import serving_commands
from shelfsight.report.images import png_uri
from shelfsight.report.recommend import (
    answer,
    consensus,
    describe,
    format_cost,
    headline,
    margin_note,
)
from shelfsight.report.sections import Plot

SECTIONS = (
    ("recommendation", "Recommendation"), ("leaderboard", "Leaderboard"), ("per-dataset", "Per dataset"),
    ("gains", "Adaptation gains"), ("cost", "Quality vs cost"), ("cross-tuning", "Cross-tuning"),
    ("retrieval-examples", "Retrieval examples"), ("confusion", "Confusion"), ("index-recall", "Index recall"),
    ("tests", "Tests and scope"), ("configuration", "Configuration"), ("failed", "Failed cells"),
)


def number(value: float, metric: str = "") -> str:
    """Three decimals, thousands grouped above 100, whole numbers for counts (trials, epochs, dimensions)."""
    if value is None or math.isnan(value):
        return "-"
    if metric in COUNTS:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def render_html(report: Report) -> str:
    run = report.run
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    from shelfsight.report.template import TEMPLATE

    table = run.table
    index = run.config.get("index") or {}
    versions = [("shelfsight", run.provenance.get("shelfsight", "?")), ("python", run.provenance.get("python", "?")),
                ("platform", run.provenance.get("platform", "?")),
                ("config digest", run.provenance.get("config_digest", "?")),
                *sorted((str(k), str(v)) for k, v in (run.provenance.get("packages") or {}).items())]
    consensus_lines = [line for task in (VISUAL_SEARCH, AUTO_TAGGING)
                       if (line := consensus(report.recommendations, task, TIERS[-1].name))]
    return environment.from_string(TEMPLATE).render(
        r=report, sections=_sections(report),
        answers=[*(answer(report.recommendations, task) for task in (VISUAL_SEARCH, AUTO_TAGGING)),
                 *report.category_answers(), *(line for extra in report.extras for line in extra.answers)],
        headline=headline(report.recommendations), consensus=consensus_lines,
        commands=serving_commands(run, report.recommendations),
        tiers=TIERS,
        tasks=(VISUAL_SEARCH, AUTO_TAGGING), models=sorted(str(m) for m in table["model"].unique()),
        strategies=sorted(str(s) for s in table["strategy"].unique()),
        ok_cells=sum(1 for c in run.cells if c.status == "ok"),
        recs_for=lambda task, dataset: [report.recommendations.get(task, dataset, t.name) for t in TIERS],
        category_rule=CATEGORY_RULE, describe=describe, margin_note=margin_note, format_cost=format_cost,
        number=number, slug=slug,
        uri=lambda plot: png_uri(plot.png) if isinstance(plot, Plot) else "",
        index_text=_index_text(index), versions=versions,
        config_text=json.dumps(run.config, indent=2, sort_keys=True) if run.config else "(no config.json)",
    )


def _sections(report: Report) -> list[tuple[str, str]]:
    """The navigation: core sections, then the extra ones, then tests, configuration and failed cells."""
    return [*SECTIONS[:-3], *((extra.id, extra.title) for extra in report.extras), *SECTIONS[-3:]]


def _index_text(index: dict[str, object]) -> str:
    if not index:
        return "index settings not recorded"
    text = f"{index.get('backend', '?')} {index.get('type', '')}".strip()
    return text + (f", {index['params']}" if index.get("params") else "")
