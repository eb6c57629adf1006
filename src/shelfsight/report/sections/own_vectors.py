"""Precomputed vectors (``name: vectors`` models, docs/own-embeddings.md): which file each one read, how its rows
matched the catalogue, and that they were L2-normalised on load as the built-in backbones' embeddings are, so a
reader knows the cosine scores compare like with like and which file (by content digest) the numbers belong to."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

LEAD = ("These models are precomputed vectors read from a file, not computed by this run. Every row was "
        "L2-normalised on load, as the built-in backbones' embeddings are (rows already of unit length are kept "
        "bit for bit), so cosine scores compare like with like. A file is identified by the SHA-256 of its bytes in "
        "every cell key: a changed file is another model. Ids the catalogue lacks were ignored; catalogue items the "
        "file lacks were refused, or, with `missing: skip`, left out and listed under photos left out.")
HEADER = ("model", "dataset", "file", "sha256", "rows", "dim", "dtype", "matched by", "extra ids ignored",
          "items skipped", "rows rescaled")


def rows_of(run: RunData) -> list[tuple[str, ...]]:
    """One row per (vectors model, dataset), from the first of its cells that recorded the file it read."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in sorted(run.cells, key=lambda c: c.cell.cell_id):
        notes = cell.details.get("vectors") if cell.status == "ok" else None
        if isinstance(notes, dict):
            found.setdefault((cell.cell.model, cell.cell.dataset), notes)
    return [(model, dataset, str(n.get("file", "")), str(n.get("sha256", ""))[:16], str(n.get("rows", "")),
             str(n.get("dim", "")), str(n.get("dtype", "")), str(n.get("matched_by", "")),
             str(n.get("extra_ids_ignored", "")), str(n.get("missing_skipped", "")), str(n.get("rows_rescaled", "")))
            for (model, dataset), n in found.items()]


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Section

    rows = rows_of(run)
    if not rows:
        return None
    html = [f"<p>{escape(LEAD)}</p>", "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in HEADER) + "</tr>"]
    html += ["<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows]
    html.append("</table>")
    markdown = [LEAD, "", "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    markdown += ["| " + " | ".join(v.replace("|", "/") for v in row) + " |" for row in rows]
    return Section("own-vectors", "Precomputed vectors", "\n".join(html), "\n".join(markdown))
