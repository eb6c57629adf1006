"""Zero-shot tagging and text-to-image search (the ``zeroshot`` strategy), cell by cell: its scores where the
model loaded real text-image weights, and "not measured" otherwise. A cell on randomly initialised weights
(how the code is tested offline) exercises the pipeline but says nothing of zero-shot quality, and a model
without a text tower cannot be asked at all: neither is reported as a quality."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from shelfsight.bench.results import CellResult
from shelfsight.bench.strategies.zeroshot import NAME, TEXT_PROTOCOL
from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

NOT_MEASURED = "not measured"
LEAD = ("Zero-shot tagging classifies each test photo by the class prompt (class name in sentence templates, "
        "with the product description where there is one) whose text vector is closest; text-to-image search "
        "lets each class prompt query the test photos. Quality is reported only for models that loaded real "
        "text-image weights.")


def verdict(cell: CellResult) -> tuple[str, str, str]:
    """(accuracy, text-to-image mMP@5, note) of one zeroshot cell; "not measured" where it is not a quality."""
    if cell.status != "ok":
        reason = (cell.error or "failed").splitlines()[0]
        return NOT_MEASURED, NOT_MEASURED, f"{NOT_MEASURED}: {reason}"
    weights = str(cell.details.get("weights") or cell.inputs.get("model", {}).get("weights", ""))
    if weights.startswith("random-init"):
        return NOT_MEASURED, NOT_MEASURED, (f"{NOT_MEASURED}: randomly initialised weights ({weights}), a test of "
                                            "the pipeline, not a zero-shot quality")
    accuracy = cell.metrics.get("classification", {}).get("accuracy")
    search = cell.metrics.get(TEXT_PROTOCOL, {}).get("mMP@5")
    return _number(accuracy), _number(search), f"measured with {weights}"


def _number(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.3f}"


def build(run: RunData) -> Section | None:
    from shelfsight.report.sections import Section

    cells = [c for c in run.cells if c.cell.strategy == NAME]
    listed = any((s if isinstance(s, str) else s.get("name")) == NAME for s in run.config.get("strategies", []))
    if not cells and not listed:
        return None
    rows = [(c.cell.model, c.cell.dataset, *verdict(c)) for c in sorted(cells, key=lambda c: c.cell.cell_id)]
    if not rows:
        rows = [("-", "-", NOT_MEASURED, NOT_MEASURED, f"{NOT_MEASURED}: no {NAME} cell has run")]
    header = ("model", "dataset", "accuracy", "text-to-image mMP@5", "note")
    html = [f"<p>{escape(LEAD)}</p>", "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    html += ["<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows]
    html.append("</table>")
    markdown = [LEAD, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    markdown += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in rows]
    return Section(NAME, "Zero-shot tagging and text search", "\n".join(html), "\n".join(markdown))
