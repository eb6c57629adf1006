"""Duplicates and leakage: the duplicate clusters of the benchmarked catalogue, how many of each protocol's
queries have a duplicate in their gallery (and the scores with and without them), and the calibration that
chose the near-duplicate threshold (recall per transformation at a target precision, embedding against
perceptual hashes).

Reads only stored files: ``RUN/duplicates/summary.json`` (``shelfsight duplicates ... --output RUN/duplicates``),
``RUN/duplicates/calibration-*.json`` (``benchmarks/duplicates.py --output``) and the ``duplicates`` entry the
bench records in each cell's protocol details. From the last, one sentence per dataset for the first screen: the
share of the main protocol's queries that leak and the best cell's headline score with and without them.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelfsight.bench.table import main_protocol
from shelfsight.report.data import RunData
from shelfsight.report.images import Thumbnails

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

FOLDER = "duplicates"
PRECISION = "0.99"
SHOWN_CLUSTERS = 6
SCORE = "mMP@5"


def number(value: float | None) -> str:
    """Three decimals; a dash for a missing value."""
    return "-" if value is None or value != value else f"{value:.3f}"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def cell_leakage_rows(run: RunData) -> list[dict[str, Any]]:
    """One row per (cell, protocol) whose details record duplicates: counts and SCORE with and without."""
    rows = []
    for result in run.cells:
        if result.status != "ok":
            continue
        for protocol, details in result.details.items():
            found = details.get("duplicates") if isinstance(details, dict) else None
            if not isinstance(found, dict):
                continue
            rows.append({"dataset": result.cell.dataset, "protocol": protocol, "model": result.cell.model,
                         "strategy": result.cell.strategy, "queries": found["queries"], "leaking": found["leaking"],
                         "exact": found["exact"], "threshold": found.get("threshold"), "action": found["action"],
                         "all": found["scores_all_queries"].get(SCORE, float("nan")),
                         "without": found["scores_without_duplicates"].get(SCORE, float("nan"))})
    return rows


def leakage_answers(run: RunData, rows: list[dict[str, Any]]) -> list[str]:
    """Per dataset, a first-screen sentence: how many of its main protocol's queries have a duplicate in the
    gallery, and the best cell's SCORE with and without them (the decision is the same for every cell)."""
    answers = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        declared = main_protocol(run.table, dataset) if "dataset" in run.table.columns else None
        protocol = declared if any(r["protocol"] == declared for r in mine) else mine[0]["protocol"]
        chosen = [r for r in mine if r["protocol"] == protocol]
        best = max(chosen, key=lambda r: (r["all"] == r["all"], r["all"]))
        near = (f"cosine ≥ {best['threshold']:.4f} or byte-identical" if best["threshold"] is not None
                else "byte-identical only: no near-duplicate threshold")
        head = f"Leakage ({dataset}, {protocol}): "
        if not best["leaking"]:
            answers.append(f"{head}none of {best['queries']:,} queries has a copy in its gallery ({near}).")
            continue
        answers.append(
            f"{head}{best['leaking']:,} of {best['queries']:,} queries ({100 * best['leaking'] / best['queries']:.1f}%)"
            f" have a copy in their gallery ({near}); {SCORE} of {best['model']} · {best['strategy']} is "
            f"{number(best['all'])} with them, {number(best['without'])} without.")
    return answers


def methods_of(result: dict[str, Any]) -> list[str]:
    """The embedding first, then the hashes in stored order."""
    return sorted(result["methods"], key=lambda name: name != "embedding")


def calibration_rows(result: dict[str, Any], precision: str = PRECISION) -> list[list[str]]:
    """Per transformation: recall at the pooled threshold for ``precision``, one column per method."""
    methods = methods_of(result)
    rows = []
    for name in result["transforms"]:
        rows.append([name] + [number(result["methods"][m]["transforms"][name].get(f"recall@p{precision}",
                                                                                  float("nan")))
                              for m in methods])
    rows.append(["threshold"] + [number(result["methods"][m]["thresholds"][precision]["threshold"])
                                 for m in methods])
    return rows


def _has_precision(result: dict[str, Any]) -> bool:
    methods = result.get("methods")
    return isinstance(methods, dict) and bool(methods) and all(
        PRECISION in entry.get("thresholds", {}) for entry in methods.values())


def _table(head: list[str], rows: list[list[str]]) -> tuple[str, str]:
    html_rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    page = ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + html_rows + "</tbody></table>")
    markdown = "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    return page, markdown


def _summary_part(summary: dict[str, Any]) -> tuple[str, str]:
    """Counts, leakage per protocol, and the largest clusters as thumbnails."""
    line = (f"{summary['catalog']}: {summary['duplicated_items']:,} of {summary['items']:,} images have a duplicate: "
            f"{summary['pairs']:,} pairs ({summary['exact_pairs']:,} exact), {summary['clusters']:,} clusters in which "
            f"every two images are a pair; {summary['model']} at cosine &ge; {summary['threshold']:.4f} "
            f"({escape(summary['threshold_source'])}).")
    rows = [[e["protocol"], f"{e['queries']:,}", f"{e['leaking']:,}", f"{e['exact']:,}",
             f"{100 * e['leaking'] / max(1, e['queries']):.1f}%"] for e in summary["leakage"]]
    page, markdown = _table(["protocol", "queries", "with a duplicate in the gallery", "exact copies", "share"],
                            rows)
    thumbs = Thumbnails()
    clusters = "".join(
        f"<p>Cluster {c['number']} ({c['size']} images, {_similarities(c)}):<br>"
        + "".join(f'<img src="{thumbs.uri(i["path"])}" title="{escape(i["id"])}" alt="{escape(i["id"])}"> '
                  for i in c["items"][:8]) + "</p>"
        for c in summary["largest_clusters"][:SHOWN_CLUSTERS])
    return (f"<p>{line}</p>{page}{clusters}",
            f"{line.replace('&ge;', '>=')}\n\n{markdown}")


def _similarities(cluster: dict[str, Any]) -> str:
    """The cluster's similarity range and weakest pair (a summary of older versions has only the best)."""
    if "weakest" not in cluster:
        return f"best similarity {cluster['max_similarity']:.3f}"
    return (f"similarity {cluster['min_similarity']:.3f} to {cluster['max_similarity']:.3f}; weakest pair "
            f"{escape(' ~ '.join(cluster['weakest']))}")


def _cells_part(rows: list[dict[str, Any]]) -> tuple[str, str]:
    shown = [[r["dataset"], r["protocol"], r["model"], r["strategy"], f"{r['leaking']:,} / {r['queries']:,}",
              r["action"], number(r["all"]), number(r["without"])] for r in rows]
    return _table(["dataset", "protocol", "model", "strategy", "leaking queries", "dedupe", f"{SCORE} all",
                   f"{SCORE} without duplicates"], shown)


def build(run: RunData) -> Section | None:
    """The section, or None when the run holds no duplicate summary, calibration or cell leakage."""
    from shelfsight.report.sections import Section

    folder = run.run_dir / FOLDER
    parts: list[tuple[str, str, str]] = []
    summary = _read(folder / "summary.json")
    if summary is not None:
        parts.append(("Duplicate clusters and leakage", *_summary_part(summary)))
    rows = cell_leakage_rows(run)
    answers = leakage_answers(run, rows)
    if rows and any(r["leaking"] for r in rows):
        parts.append(("Scores with and without the leaking queries", *_cells_part(rows)))
    for path in sorted(folder.glob("calibration-*.json")) if folder.is_dir() else []:
        result = _read(path)
        if result is None or not _has_precision(result):
            continue
        page, markdown = _table(["transformation", *(f"{m} recall" for m in methods_of(result))],
                                calibration_rows(result))
        title = (f"Calibration: {result['model']}, recall at precision {PRECISION} ({result['sources']} photos, "
                 f"{result['copies']:,} copies, {result['distractors']} other photos)")
        parts.append((title, page, markdown))
    if not parts and not answers:
        return None
    html = "".join(f"<p>{escape(line)}</p>" for line in answers) + "".join(
        f"<h3>{escape(title)}</h3>{body}" for title, body, _ in parts)
    markdown = "\n\n".join([*answers, *(f"### {title}\n\n{body}" for title, _, body in parts)])
    return Section(id="duplicates", title="Duplicates and leakage", html=html, markdown=markdown,
                   answers=answers)
