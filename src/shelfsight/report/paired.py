"""The run's one family of paired tests as the report reads it (``bench.significance``): the family the bench
stored with its tables, or, for a run without one for its plan (older, or stopped before its tables), one
computed here, in memory, the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shelfsight.bench.compare import Family, FamilySettings, significance_table
from shelfsight.bench.leaderboard import read_significance
from shelfsight.bench.significance import describe_family, run_family

COMPUTED_HERE = ("computed for this report: the run holds no family for its current plan (written by an older "
                 "shelfsight, or stopped before its tables), so significance.csv and label-budgets-tests.csv on disk "
                 "may disagree with it; rerun `shelfsight bench` to store one")


@dataclass(frozen=True)
class ReportFamily:
    """The family the report reads, the significance table drawn from it and a note when computed here."""

    family: Family
    significance: pd.DataFrame | None
    note: str = ""

    def describe(self) -> str:
        return describe_family(self.family) + (f" The family was {self.note}." if self.note else "")


def family_for_report(run_dir: str | Path, settings: FamilySettings) -> ReportFamily:
    """The stored family with its ``significance.csv``, else both computed now."""
    stored = Family.read(run_dir)
    if stored is not None:
        return ReportFamily(stored, read_significance(run_dir))
    found = run_family(run_dir, settings)
    return ReportFamily(found.family, significance_table(found.family, found.significance), COMPUTED_HERE)
