"""Groups: how a catalogue's groups (a seller, a listing, a photo shoot) entered the numbers.

Photos of one group share a background and a camera, so a query that may retrieve its own group's photos
scores the shoot, not the product. The cells say, per protocol, what the evaluation did about it
(``details[PROTOCOL]["same_group"]``, written by ``bench.evaluate``); this section states it, and its first
sentence goes on the report's first screen.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from shelfsight.bench import strategies as registry
from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

BASELINE = registry.baseline().name
"""The cells read: the frozen embedding's, one per model, whose neighbours show what a shoot shares."""


def group_rows(run: RunData) -> list[dict[str, Any]]:
    """One row per (dataset, protocol, model) of the pre-trained cells whose catalogue has groups."""
    rows = []
    for cell in run.cells:
        if cell.cell.strategy != BASELINE:
            continue
        for protocol, details in cell.details.items():
            found = details.get("same_group") if isinstance(details, dict) else None
            if isinstance(found, dict):
                rows.append({"dataset": cell.cell.dataset, "protocol": protocol, "model": cell.cell.model, **found})
    return sorted(rows, key=lambda r: (r["dataset"], r["protocol"], r["model"]))


def sentence(row: dict[str, Any]) -> str:
    """What the evaluation did about a query's own group, on one protocol (from one model's cell)."""
    head = f"On {row['dataset']} {row['protocol']}, photos are grouped ({row['groups']:,} groups): "
    if row["policy"] == "keep":
        return (head + f"a query's own group counts ({row['own_group_items']:,} same-group gallery photos; "
                f"{row['top1_own_group']:.0%} of queries have their top-1 neighbour in their own group with "
                f"{row['model']}), as the config asked (same_group: keep).")
    if row["own_group_items"] == 0:
        return head + "no group is on both sides, so no query can retrieve its own group's photos."
    return (head + f"a query never counts its own group's photos: {row['own_group_items']:,} same-group gallery "
            f"photos of {row['queries_with_own_group']:,} queries are left out of their rankings; with them in, "
            f"{row['top1_own_group']:.0%} of queries would have their top-1 neighbour in their own group "
            f"({row['model']}).")


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Section

    rows = group_rows(run)
    if not rows:
        return None
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:  # one sentence per protocol: the first model's
        firsts.setdefault((row["dataset"], row["protocol"]), row)
    lines = [sentence(row) for row in firsts.values()]
    head = ["dataset", "protocol", "model", "groups", "queries with own group", "same-group photos left out",
            "own-group top-1 (nothing left out)"]
    cells = [[r["dataset"], r["protocol"], r["model"], f"{r['groups']:,}", f"{r['queries_with_own_group']:,}",
              f"{r['own_group_items']:,}" if r["policy"] == "exclude" else "0 (keep)", f"{r['top1_own_group']:.1%}"]
             for r in rows]
    html = "".join(f"<p>{escape(line)}</p>" for line in lines)
    html += "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{escape(value)}</td>" for value in row) + "</tr>" for row in cells) + "</table>"
    markdown = "\n\n".join(lines) + "\n\n| " + " | ".join(head) + " |\n|" + " --- |" * len(head) + "\n" + "\n".join(
        "| " + " | ".join(row) + " |" for row in cells)
    return Section("groups", "Groups", html, markdown, answers=lines[:1])
