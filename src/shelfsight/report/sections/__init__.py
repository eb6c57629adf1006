"""Report sections beyond the core ones: each is one module with a builder ``(RunData) -> Section | None``.

A builder reads what it needs from the run folder (cells, side files such as ``compression.csv``) and
returns a ``Section`` with its HTML body, its Markdown body and its figures, or ``None`` when the run has
nothing for it (the page then leaves it out). Adding a section is one module and one line in ``BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shelfsight.report.data import RunData
from shelfsight.report.sections import (
    compression,
    duplicates,
    fuller,
    groups,
    label_budgets,
    openset,
    own_vectors,
    skipped,
    zeroshot,
)


@dataclass(frozen=True)
class Plot:
    """A figure of the report: its file name under ``figures/`` (no extension), a title, the PNG bytes and a
    caption. Core sections and extra ones use the same class."""

    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One extra section: ``html`` is trusted markup built by the section (escape what it quotes)."""

    id: str
    title: str
    html: str
    markdown: str
    plots: list[Plot] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    """Sentences for the report's first screen, after the answers of the core recommendation."""


SectionBuilder = Callable[[RunData], "Section | None"]

BUILDERS: list[SectionBuilder] = [
    own_vectors.build,
    skipped.build,
    groups.build,
    label_budgets.build,
    compression.build,
    duplicates.build,
    zeroshot.build,
    openset.build,
]
"""Every extra section, in page order (after the core sections, before the configuration)."""


def build_sections(run: RunData) -> list[Section]:
    """Every extra section that has something to show for ``run``, then what a fuller config would add."""
    found = [section for builder in BUILDERS if (section := builder(run)) is not None]
    more = fuller.build(run, {section.id for section in found})
    return [*found, *([more] if more is not None else [])]
