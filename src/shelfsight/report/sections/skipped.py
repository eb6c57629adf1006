"""Photos left out: every file the run could not use (unreadable, missing, non-finite embedding), counted by
dataset and reason, the first ones listed, from the run folder's ``skipped.csv``."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import pandas as pd

from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

SHOWN = 20


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Section

    path = run.run_dir / "skipped.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path, dtype=str).fillna("")
    if rows.empty:
        return None
    counts = rows.groupby(["dataset", "reason"]).size().reset_index(name="photos")
    lead = (f"{len(rows)} photo(s) could not be used and are left out of every cell that reads them; the list is "
            f"{path.name} in the run folder.")
    html = [f"<p>{escape(lead)}</p>", "<table><tr><th>dataset</th><th>reason</th><th>photos</th></tr>"]
    html += [f"<tr><td>{escape(r.dataset)}</td><td>{escape(r.reason)}</td><td class=\"num\">{r.photos}</td></tr>"
             for r in counts.itertuples()]
    html += ["</table>", "<table><tr><th>dataset</th><th>item</th><th>path</th><th>reason</th></tr>"]
    html += [f"<tr><td>{escape(r.dataset)}</td><td>{escape(r.item_id)}</td><td>{escape(r.path)}</td>"
             f"<td>{escape(r.reason)}</td></tr>" for r in rows.head(SHOWN).itertuples()]
    html.append("</table>")
    markdown = [lead, "", "| dataset | reason | photos |", "| --- | --- | --- |"]
    markdown += [f"| {r.dataset} | {r.reason} | {r.photos} |" for r in counts.itertuples()]
    return Section("skipped", "Photos left out", "\n".join(html), "\n".join(markdown))
