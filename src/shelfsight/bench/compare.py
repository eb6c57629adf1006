"""Paired comparisons between a run's planned cells on the same queries, and the run's one family of them.

``compare(run, "lite2:pretrained", "lite0:pretrained")``: the difference of a metric, its interval at the run's
confidence ``1 - stats.alpha`` (paired bootstrap over queries, or a two-level interval where a cell has seeds) and a
two-sided p-value (paired permutation test; exact McNemar for single-seed accuracy). Only the cells of
``RUN/plan.json`` enter. A run reports one ``Family`` (``RUN/comparisons.csv``): the comparisons behind
``significance.csv``, the label-budget tests and the report, each pair tested once and Holm-adjusted together, so no
pair is tied in one table and better in another. Significant: Holm-adjusted p below alpha *and* an interval that
excludes zero."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.aggregate import LABEL_COLUMNS, main_metric, per_query_matrix, shared_queries
from shelfsight.bench.leaderboard import CLASSIFICATION_METRICS, SIGNIFICANCE_FILE
from shelfsight.bench.results import CellResult, ResultStore, RunPlan
from shelfsight.bench.strategies.base import CLASSIFICATION, split_budget
from shelfsight.catalog import declared_entry
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write
from shelfsight.stats import Comparison, holm, paired_classification, paired_comparison

COMPARISONS_FILE = "comparisons.csv"
Group = tuple[str, str, str]
"""(model, dataset, strategy): the seeds of one cell."""


@dataclass(frozen=True)
class CellComparison:
    """A - B on one metric of one protocol, with its interval and p-value (Holm-adjusted when known)."""

    dataset: str
    protocol: str
    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    result: Comparison
    p_adjusted: float | None = None
    """Holm-adjusted over the run's family; None for a comparison outside it."""
    confidence: float = 0.95
    """Of the interval: ``1 - alpha`` of the run."""

    def significant(self, alpha: float = 0.05) -> bool:
        return decide(self.result, self.p_adjusted, alpha)

    def sentence(self, alpha: float = 0.05) -> str:
        r = self.result
        p = f"p={r.p_value:.3g}" + (f", Holm-adjusted {self.p_adjusted:.3g}" if self.p_adjusted is not None else "")
        verdict = ("better" if r.difference > 0 else "worse") if self.significant(alpha) else "tied within noise"
        return (f"{self.a} vs {self.b} on {self.dataset} {self.protocol} {self.metric}: {self.mean_a:.4f} vs "
                f"{self.mean_b:.4f}, difference {r.difference:+.4f} ({self.confidence:.0%} CI {r.low:+.4f} to "
                f"{r.high:+.4f}; {p}; {r.method}; {r.n_queries} queries) -> {verdict}")


def decide(result: Comparison, p_adjusted: float | None, alpha: float) -> bool:
    """Significant when the (Holm-adjusted) p-value is below ``alpha`` and the interval of the difference, computed
    at ``1 - alpha`` (``FamilySettings.confidence``), excludes zero. The permutation test sees per-query noise only
    (seed-averaged scores); the interval also resamples seeds, so with few seeds it is the stricter of the two."""
    p = p_adjusted if p_adjusted is not None else result.p_value
    return bool(p < alpha) and not (result.low <= 0.0 <= result.high)


class RunScores:
    """The planned cells of a run (``plan``, else ``RUN/plan.json``; every stored cell for an older run without
    one), grouped by (model, dataset, strategy), with their per-query scores; ``stale`` names the others."""

    def __init__(self, run_dir: str | Path, plan: RunPlan | None = None) -> None:
        self.store = ResultStore(run_dir)
        self.groups: dict[Group, list[CellResult]] = defaultdict(list)
        results, stale = self.store.planned_results(plan)
        self.stale = sorted(r.cell.cell_id for r in stale)
        self._stale_names = sorted({f"{r.cell.model}:{r.cell.strategy}" for r in stale})
        for result in results:
            if result.status == "ok":
                self.groups[result.cell.group].append(result)
        self._frames: dict[Group, list[pd.DataFrame] | None] = {}

    def frames(self, group: Group) -> list[pd.DataFrame] | None:
        if group not in self._frames:
            found = [self.store.per_query(r.cell) for r in self.groups[group]]
            frames = [f for f in found if f is not None]
            self._frames[group] = frames if found and len(frames) == len(found) else None
        return self._frames[group]

    def mean(self, group: Group, protocol: str, metric: str) -> float:
        values = [r.metrics.get(protocol, {}).get(metric, math.nan) for r in self.groups[group]]
        return float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan

    def n_classes(self, group: Group) -> int | None:
        classes = self.groups[group][0].details.get("classes")
        return int(classes) if isinstance(classes, int | float) else None

    def find(self, reference: str, dataset: str | None) -> Group:
        """``MODEL:STRATEGY`` (split at the last colon) on ``dataset`` (optional when only one has it)."""
        model, sep, strategy = reference.rpartition(":")
        if not sep or not model or not strategy:
            raise ShelfsightError(f"cell {reference!r}: write it as MODEL:STRATEGY, e.g. "
                                  f"efficientnet_lite0:{registry.baseline().name}")
        matches = [g for g in self.groups if g[0] == model and g[2] == strategy and dataset in (None, g[1])]
        if len(matches) == 1:
            return matches[0]
        known = sorted({f"{g[0]}:{g[2]}" for g in self.groups})
        if not matches:
            stale = [n for n in self._stale_names if n not in known]
            note = f"; stale, not in this run's plan: {', '.join(stale[:12])}" if stale else ""
            raise ShelfsightError(f"no cell {reference!r}{f' on {dataset}' if dataset else ''} in this run's plan; "
                                  f"known: {', '.join(known[:12])}{note}")
        raise ShelfsightError(f"{reference!r} was run on several datasets ({', '.join(sorted(g[1] for g in matches))});"
                              " name one with --dataset")

    def compare(self, a: Group, b: Group, protocol: str, metric: str, *, n_permutations: int = 10000,
                n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> CellComparison:
        """Paired on the queries both cells scored (NaN rows, queries with nothing relevant, left out)."""
        frames_a, frames_b = self.frames(a), self.frames(b)
        if frames_a is None or frames_b is None:
            missing = a if frames_a is None else b
            raise ShelfsightError(f"{':'.join(missing)} has no per-query scores (not in the run's plan, or computed "
                                  "by an older shelfsight: rerun it with --recompute)")
        columns = list(LABEL_COLUMNS) if protocol == CLASSIFICATION else [metric]
        shared = shared_queries(frames_a + frames_b, protocol, columns)
        if not shared:
            raise ShelfsightError(f"{':'.join(a)} and {':'.join(b)} share no scored query on {protocol} {metric}")
        left = per_query_matrix(frames_a, protocol, columns, queries=shared)
        right = per_query_matrix(frames_b, protocol, columns, queries=shared)
        assert left is not None and right is not None
        options: dict[str, Any] = {"n_permutations": n_permutations, "n_resamples": n_resamples, "seed": seed,
                                   "confidence": confidence}
        if protocol == CLASSIFICATION:
            if metric not in CLASSIFICATION_METRICS:
                raise ShelfsightError(f"classification metric {metric!r}: use one of "
                                      f"{', '.join(CLASSIFICATION_METRICS)}")
            classes = self.n_classes(a) or self.n_classes(b) or int(max(left[0].max(), left[1].max())) + 1
            result = paired_classification(left[0][0].astype(np.int64), left[1].astype(np.int64),
                                           right[1].astype(np.int64), metric=metric,  # type: ignore[arg-type]
                                           n_classes=classes, **options)
        else:
            result = paired_comparison(left[0], right[0], **options)
        return CellComparison(a[1], protocol, metric, f"{a[0]} · {a[2]}", f"{b[0]} · {b[2]}",
                              self.mean(a, protocol, metric), self.mean(b, protocol, metric), result,
                              confidence=confidence)


def compare(run_dir: str | Path, a: str, b: str, *, metric: str | None = None, protocol: str | None = None,
            dataset: str | None = None, n_permutations: int | None = None, n_resamples: int | None = None,
            seed: int | None = None) -> CellComparison:
    """Compare two planned cells of a run (``MODEL:STRATEGY``) on one metric; defaults: the first retrieval
    protocol both scored and its main metric (mMP@5). A pair the run reports is answered from its family
    (the numbers and Holm-adjusted p-value every table of the run shows); any other pair is tested here with
    the run's ``stats`` (or the settings given), unadjusted (``p_adjusted`` None), at the run's confidence."""
    scores = RunScores(run_dir)
    group_a, group_b, protocol, metric = _resolve(scores, a, b, metric=metric, protocol=protocol, dataset=dataset)
    family = Family.read(run_dir)
    found = family.get(protocol, metric, group_a, group_b) if family is not None else None
    if found is not None:
        return found
    settings = FamilySettings.of_run(run_dir)
    return scores.compare(group_a, group_b, protocol, metric, n_permutations=n_permutations or settings.permutations,
                          n_resamples=n_resamples or settings.bootstrap, seed=settings.seed if seed is None else seed,
                          confidence=settings.confidence)


def _resolve(scores: RunScores, a: str, b: str, *, metric: str | None, protocol: str | None,
             dataset: str | None) -> tuple[Group, Group, str, str]:
    """The two cells, the protocol and the metric a ``compare`` call means."""
    group_a = scores.find(a, dataset)
    group_b = scores.find(b, dataset or group_a[1])
    if group_a[1] != group_b[1]:
        raise ShelfsightError(f"{a} ({group_a[1]}) and {b} ({group_b[1]}) were scored on different datasets")
    first_a, first_b = scores.groups[group_a][0], scores.groups[group_b][0]
    entry = declared_entry(group_a[1])
    declared = [p.name for p in entry.protocols] if entry is not None else []
    protocols = sorted((p for p in first_a.metrics if p in first_b.metrics),
                       key=lambda p: (declared.index(p) if p in declared else len(declared), p))
    if protocol is None:
        retrieval = [p for p in protocols if p != CLASSIFICATION]
        protocol = (retrieval or protocols or [""])[0]
    if protocol not in protocols:
        raise ShelfsightError(f"both cells must have protocol {protocol!r}; shared: {', '.join(protocols) or 'none'}")
    metric = metric or main_metric(protocol, set(first_a.metrics[protocol]))
    if metric is None or metric not in first_a.metrics[protocol] or metric not in first_b.metrics[protocol]:
        raise ShelfsightError(f"metric {metric!r} is not scored by both cells on {protocol}")
    return group_a, group_b, protocol, metric


# ---------------------------------------------------------------------------------------------- the family
SIGNIFICANCE, BUDGET, REPORT = "best of column", "label budget", "report"
PURPOSES = {SIGNIFICANCE: "cells against the best of their column (significance.csv, the leaderboard's ≈)",
            BUDGET: "label-budget comparisons (label-budgets-tests.csv, the break-even budgets)",
            REPORT: "comparisons of the report's recommendation and guidance"}
"""What asks for a comparison, in the order the family's description names them."""
Pair = tuple[str, str, str, frozenset[Group]]
FAMILY_COLUMNS = ["dataset", "protocol", "metric", "a_model", "a_strategy", "b_model", "b_strategy", "mean_a",
                  "mean_b", "difference", "ci_low", "ci_high", "confidence", "p_value", "p_holm", "significant",
                  "method", "queries", "seeds_a", "seeds_b", "purposes"]


@dataclass(frozen=True)
class FamilySettings:
    """The run's ``stats`` as its tests read them: Holm at ``alpha``, every interval at ``1 - alpha``."""

    alpha: float = 0.05
    permutations: int = 10000
    bootstrap: int = 1000
    seed: int = 0

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    @classmethod
    def of(cls, stats: Mapping[str, Any] | object | None) -> FamilySettings:
        """From a config's ``stats`` section (the pydantic model or its JSON dict); defaults when absent."""
        values = stats if isinstance(stats, Mapping) else vars(stats) if stats is not None else {}
        return cls(float(values.get("alpha", 0.05)), int(values.get("permutations", 10000)),
                   int(values.get("bootstrap", 1000)), int(values.get("seed", 0)))

    @classmethod
    def of_run(cls, run_dir: str | Path) -> FamilySettings:
        path = Path(run_dir) / "config.json"
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return cls.of(config.get("stats") if isinstance(config, dict) else None)


@dataclass(frozen=True)
class Request:
    """A comparison the run reports: A - B on ``metric`` of ``protocol`` (A's dataset), and what asks for it."""

    purpose: str
    protocol: str
    metric: str
    a: Group
    b: Group

    @property
    def pair(self) -> Pair:
        return _pair(self.protocol, self.metric, self.a, self.b)


def _pair(protocol: str, metric: str, a: Group, b: Group) -> Pair:
    """A - B and B - A are one comparison (one two-sided p-value, one verdict)."""
    return a[1], protocol, metric, frozenset((a, b))


class Family:
    """Every comparison a run reports, each pair tested once and Holm-adjusted together (one family)."""

    def __init__(self, rows: list[tuple[CellComparison, Group, Group, tuple[str, ...]]], alpha: float) -> None:
        self.rows, self.alpha = rows, alpha
        self._index = {_pair(c.protocol, c.metric, a, b): i for i, (c, a, b, _) in enumerate(rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, protocol: str, metric: str, a: Group, b: Group) -> CellComparison | None:
        """A - B as the family tested it (turned round when it tested B - A); None when not in the family."""
        at = self._index.get(_pair(protocol, metric, a, b))
        if at is None:
            return None
        found, first, _, _ = self.rows[at]
        return found if first == a else _turned(found)

    @classmethod
    def test(cls, scores: RunScores, requests: Iterable[Request], settings: FamilySettings) -> Family:
        """Test each distinct pair once (a pair that cannot be tested, e.g. without shared queries, is left
        out), then Holm over all of them."""
        purposes: dict[Pair, set[str]] = defaultdict(set)
        first: dict[Pair, Request] = {}
        for request in requests:
            purposes[request.pair].add(request.purpose)
            first.setdefault(request.pair, request)
        tested = []
        for pair, request in first.items():
            try:
                found = scores.compare(request.a, request.b, request.protocol, request.metric,
                                       n_permutations=settings.permutations, n_resamples=settings.bootstrap,
                                       seed=settings.seed, confidence=settings.confidence)
            except (ShelfsightError, ValueError):
                continue  # no shared scored query or no per-query scores: untested, and said so where it is read
            order = tuple(p for p in PURPOSES if p in purposes[pair])
            tested.append((found, request.a, request.b, order))
        adjusted = holm(np.array([c.result.p_value for c, _, _, _ in tested], dtype=float))
        return cls([(replace(c, p_adjusted=float(p)), a, b, why) for (c, a, b, why), p
                    in zip(tested, adjusted, strict=True)], settings.alpha)

    def table(self) -> pd.DataFrame:
        rows = [{"dataset": c.dataset, "protocol": c.protocol, "metric": c.metric, "a_model": a[0],
                 "a_strategy": a[2], "b_model": b[0], "b_strategy": b[2], "mean_a": c.mean_a, "mean_b": c.mean_b,
                 "difference": c.result.difference, "ci_low": c.result.low, "ci_high": c.result.high,
                 "confidence": c.confidence, "p_value": c.result.p_value, "p_holm": c.p_adjusted,
                 "significant": c.significant(self.alpha), "method": c.result.method, "queries": c.result.n_queries,
                 "seeds_a": c.result.seeds_a, "seeds_b": c.result.seeds_b, "purposes": "; ".join(why)}
                for c, a, b, why in self.rows]
        return pd.DataFrame(rows, columns=FAMILY_COLUMNS)

    def write(self, run_dir: str | Path) -> Path:
        return atomic_write(Path(run_dir) / COMPARISONS_FILE, lambda path: self.table().to_csv(path, index=False))

    @classmethod
    def read(cls, run_dir: str | Path) -> Family | None:
        """The family the run wrote; None when there is none, or when the run stopped before writing it for its
        current plan (the file then belongs to an earlier plan)."""
        path = Path(run_dir) / COMPARISONS_FILE
        plan = ResultStore(run_dir).read_plan()
        if not path.is_file() or (plan is not None and not plan.complete):
            return None
        table = pd.read_csv(path, dtype={"a_model": str, "a_strategy": str, "b_model": str, "b_strategy": str})
        return cls([_row(r) for r in table.to_dict("records")], FamilySettings.of_run(run_dir).alpha)


def _row(row: dict[str, Any]) -> tuple[CellComparison, Group, Group, tuple[str, ...]]:
    a = (str(row["a_model"]), str(row["dataset"]), str(row["a_strategy"]))
    b = (str(row["b_model"]), str(row["dataset"]), str(row["b_strategy"]))
    result = Comparison(difference=float(row["difference"]), low=float(row["ci_low"]), high=float(row["ci_high"]),
                        p_value=float(row["p_value"]), method=str(row["method"]), n_queries=int(row["queries"]),
                        seeds_a=int(row["seeds_a"]), seeds_b=int(row["seeds_b"]))
    found = CellComparison(a[1], str(row["protocol"]), str(row["metric"]), f"{a[0]} · {a[2]}", f"{b[0]} · {b[2]}",
                           float(row["mean_a"]), float(row["mean_b"]), result, float(row["p_holm"]),
                           float(row["confidence"]))
    return found, a, b, tuple(str(row["purposes"]).split("; "))


def _turned(found: CellComparison) -> CellComparison:
    """B - A from A - B: the difference and its interval negated, the sides swapped; the p-value is two-sided."""
    r = found.result
    result = replace(r, difference=-r.difference, low=-r.high, high=-r.low, seeds_a=r.seeds_b, seeds_b=r.seeds_a)
    return replace(found, a=found.b, b=found.a, mean_a=found.mean_b, mean_b=found.mean_a, result=result)


def significance_requests(scores: RunScores) -> list[Request]:
    """Each planned cell against the best of its (dataset, protocol) column on the main metric."""
    requests = []
    for (_, protocol, metric), groups in _columns(scores).items():
        best = max(groups, key=lambda g: scores.mean(g, protocol, metric))
        requests += [Request(SIGNIFICANCE, protocol, metric, best, group) for group in groups if group != best]
    return requests


SIGNIFICANCE_COLUMNS = ["dataset", "protocol", "metric", "model", "strategy", "best", "best_mean", "mean", "difference",
                        "ci_low", "ci_high", "p_value", "p_holm", "tied", "method", "queries"]


def significance_table(family: Family, requests: Iterable[Request]) -> pd.DataFrame:
    """Each cell against its column's best with the family's numbers and adjusted p-value; ``tied`` marks the
    cells not significantly below the best (the leaderboard's ≈)."""
    rows = []
    for request in requests:
        found = family.get(request.protocol, request.metric, request.a, request.b)
        if request.purpose != SIGNIFICANCE or found is None:
            continue
        r = found.result
        rows.append({"dataset": found.dataset, "protocol": found.protocol, "metric": found.metric,
                     "model": request.b[0], "strategy": request.b[2], "best": found.a, "best_mean": found.mean_a,
                     "mean": found.mean_b, "difference": r.difference, "ci_low": r.low, "ci_high": r.high,
                     "p_value": r.p_value, "p_holm": found.p_adjusted, "tied": not found.significant(family.alpha),
                     "method": r.method, "queries": r.n_queries})
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)


def write_significance(run_dir: str | Path, family: Family, requests: Iterable[Request]) -> pd.DataFrame:
    """``RUN/significance.csv`` (``significance_table``)."""
    table = significance_table(family, requests)
    atomic_write(Path(run_dir) / SIGNIFICANCE_FILE, lambda path: table.to_csv(path, index=False))
    return table


def _columns(scores: RunScores) -> dict[tuple[str, str, str], list[Group]]:
    """(dataset, protocol, main metric) -> the cells that scored it."""
    columns: dict[tuple[str, str, str], list[Group]] = defaultdict(list)
    for group, members in sorted(scores.groups.items()):
        if split_budget(group[2])[1] is not None:
            continue  # label-budget cells are compared along their curves (bench.label_budgets), not here
        for protocol, metrics in members[0].metrics.items():
            metric = main_metric(protocol, set(metrics))
            if metric is not None:
                columns[(group[1], protocol, metric)].append(group)
    return {key: groups for key, groups in columns.items() if len(groups) > 1}
