"""Paired tests between the cells a report compares, over the run's stored per-query scores, with Holm's
correction over every comparison the report makes (one family)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shelfsight.report.recommend import Choice, PairedTest

if TYPE_CHECKING:
    pass


class PairedTests:
    """A ``Tester`` over a run's stored per-query scores; ``adjust`` applies Holm over every comparison
    asked for so far (one family: the report)."""

    def __init__(self, run_dir: str, *, alpha: float = 0.05, n_permutations: int = 10000,
                 n_resamples: int = 1000, seed: int = 0) -> None:
        from shelfsight.bench.compare import RunScores

        self.scores = RunScores(run_dir)
        self.alpha = alpha
        self.options = {"n_permutations": n_permutations, "n_resamples": n_resamples, "seed": seed}
        self.raw: dict[tuple[str, ...], object] = {}
        self.adjusted: dict[tuple[str, ...], float] = {}

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest | None:
        from shelfsight.errors import ShelfsightError

        key = (dataset, protocol, metric, a.model, a.strategy, b.model, b.strategy)
        if key not in self.raw:
            try:
                self.raw[key] = self.scores.compare((a.model, dataset, a.strategy), (b.model, dataset, b.strategy),
                                                    protocol, metric, **self.options)  # type: ignore[arg-type]
            except (ShelfsightError, KeyError, ValueError):
                self.raw[key] = None
        found = self.raw[key]
        if found is None:
            return None
        from shelfsight.bench.compare import decide

        result = found.result  # type: ignore[attr-defined]
        adjusted = self.adjusted.get(key, float(result.p_value))
        return PairedTest(float(result.difference), float(result.low), float(result.high), float(result.p_value),
                          adjusted, decide(result, adjusted, self.alpha), str(result.method),
                          p_floor=1 / (int(self.options["n_permutations"]) + 1))

    def adjust(self) -> None:
        import numpy as np

        from shelfsight.stats import holm

        keys = [k for k, v in self.raw.items() if v is not None]
        p_values = np.array([float(self.raw[k].result.p_value) for k in keys])  # type: ignore[attr-defined]
        self.adjusted = dict(zip(keys, (float(p) for p in holm(p_values)), strict=True)) if keys else {}
