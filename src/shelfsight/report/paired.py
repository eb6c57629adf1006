"""Paired tests between the cells a report compares, over the run's stored per-query scores, with Holm's
correction over every comparison the report makes (one family)."""

from __future__ import annotations

import numpy as np

from shelfsight.bench.compare import CellComparison, RunScores, decide
from shelfsight.errors import ShelfsightError
from shelfsight.report.recommend import Choice, PairedTest
from shelfsight.stats import holm

Key = tuple[str, str, str, str, str, str, str]


class PairedTests:
    """A ``Tester`` over a run's stored per-query scores; ``adjust`` applies Holm over every comparison
    asked for so far (one family: the report)."""

    def __init__(self, run_dir: str, *, alpha: float = 0.05, n_permutations: int = 10000,
                 n_resamples: int = 1000, seed: int = 0) -> None:
        self.scores = RunScores(run_dir)
        self.alpha = alpha
        self.n_permutations, self.n_resamples, self.seed = n_permutations, n_resamples, seed
        self.raw: dict[Key, CellComparison | None] = {}
        self.adjusted: dict[Key, float] = {}

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest | None:
        key = (dataset, protocol, metric, a.model, a.strategy, b.model, b.strategy)
        if key not in self.raw:
            try:
                self.raw[key] = self.scores.compare(
                    (a.model, dataset, a.strategy), (b.model, dataset, b.strategy), protocol, metric,
                    n_permutations=self.n_permutations, n_resamples=self.n_resamples, seed=self.seed)
            except (ShelfsightError, KeyError, ValueError):  # no per-query scores: the verdict says "untested"
                self.raw[key] = None
        found = self.raw[key]
        if found is None:
            return None
        result = found.result
        adjusted = self.adjusted.get(key, float(result.p_value))
        return PairedTest(float(result.difference), float(result.low), float(result.high), float(result.p_value),
                          adjusted, decide(result, adjusted, self.alpha), str(result.method),
                          p_floor=1 / (self.n_permutations + 1))

    def adjust(self) -> None:
        """Holm over every comparison made so far; later calls report the adjusted p-values."""
        found = {key: comparison for key, comparison in self.raw.items() if comparison is not None}
        p_values = np.array([comparison.result.p_value for comparison in found.values()], dtype=float)
        self.adjusted = dict(zip(found, (float(p) for p in holm(p_values)), strict=True)) if found else {}
