"""Label-efficiency curves: how many labelled photos per class before tuning pays.

    label_budgets: {budgets: [1, 2, 5, 10, 25, all], subsets: 3, strategies: [linear, knn, toptune]}

For each budget N, each listed strategy trains on N labelled photos per class (cell ``KIND/N``), a seeded
class-stratified draw per subset seed (``seed``, ``seed + 1``, ...), nested across budgets for one seed (the
5-per-class photos hold the 2-per-class ones). What stays fixed, so that only the training labels vary:

- **validation**: the run's own validation part (the declared ``val`` split, or the seeded 10% of train set
  aside before the budget is drawn). Model selection (the probe's C, the head's search and early stopping)
  therefore sees the same validation photos at every budget, which flatters the smallest budgets a little
  against a team that would have to carve validation out of its N photos; the curve measures what the
  training labels buy.
- **test**: the untouched test protocol, classification and every retrieval protocol.
- **embeddings**: the frozen catalogue embedding, from the per-photo cache: nothing is re-extracted.

``all`` is the strategy's plain cell (every training photo); the pre-trained embedding is the zero-label
level. Break-even: the smallest budget at which a tuned strategy is significantly better than a reference on
the same queries (paired test in the run's one Holm family, and an interval that excludes zero), called only
with ``MIN_DRAWS`` subset draws or more: retrieval (the main protocol's mMP@5) against the pre-trained
embedding for the strategies that make an embedding; accuracy of top-tuning against the linear probe at the
same budget; and accuracy against zero-shot tagging where the model has a text tower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.aggregate import aggregate
from shelfsight.bench.budgets import (
    ALL,
    BREAK_EVEN_FILE,
    CLASSIFICATION_METRIC,
    CURVES_FILE,
    RETRIEVAL_METRIC,
    ZERO_LABEL,
    is_budget_cell,
)
from shelfsight.bench.compare import BUDGET, Family, Request
from shelfsight.bench.results import TABLE_COLUMNS, Cell, ResultStore
from shelfsight.bench.strategies.base import CLASSIFICATION, budget_strategy, split_budget
from shelfsight.catalog import declared_entry

if TYPE_CHECKING:
    from shelfsight.bench.config import BenchConfig


def curves_table(store: ResultStore, cells: Iterable[Cell], *, n_resamples: int, seed: int) -> pd.DataFrame:
    """The curves: one row per (model, dataset, strategy, budget, protocol, metric) with the mean over subset
    seeds and a 95% interval (subset seeds resampled, then queries). Budget cells carry their N; the plain
    cells of the same strategies carry ``all`` and the pre-trained (and zero-shot) cells ``0``."""
    wanted = list(cells)
    budgeted = [c for c in wanted if is_budget_cell(c)]
    if not budgeted:
        return pd.DataFrame(columns=[*TABLE_COLUMNS, "kind", "budget", "train_per_class"])
    kinds = {(c.model, c.dataset, split_budget(c.strategy)[0]) for c in budgeted}
    pairs = {(c.model, c.dataset) for c in budgeted}
    references = {registry.baseline().name, registry.zeroshot.NAME}
    plain = [c for c in wanted if not is_budget_cell(c) and ((c.model, c.dataset, c.strategy) in kinds or (
        c.strategy in references and (c.model, c.dataset) in pairs))]
    results = store.load_all([*budgeted, *plain])
    table = aggregate(results, store, n_resamples=n_resamples, seed=seed)
    table = table[table["protocol"] != "cost"].copy()
    table["kind"] = [split_budget(s)[0] for s in table["strategy"]]
    table["budget"] = [_budget_label(s, k) for s, k in zip(table["strategy"], table["kind"], strict=True)]
    per_class = _train_per_class(results)
    table["train_per_class"] = [per_class.get((m, d, s), math.nan)
                                for m, d, s in zip(table["model"], table["dataset"], table["strategy"], strict=True)]
    return table.reset_index(drop=True)


def _budget_label(strategy: str, kind: str) -> str:
    budget = split_budget(strategy)[1]
    if budget is not None:
        return str(budget)
    return str(ZERO_LABEL) if kind in (registry.baseline().name, registry.zeroshot.NAME) else ALL


def _train_per_class(results: list[Any]) -> dict[tuple[str, str, str], float]:
    """Mean training photos per class each cell learned from (``train`` / ``classes`` in its details)."""
    found: dict[tuple[str, str, str], list[float]] = {}
    for result in results:
        train, classes = result.details.get("train"), result.details.get("classes")
        if result.status == "ok" and isinstance(train, int | float) and isinstance(classes, int | float) and classes:
            found.setdefault(result.cell.group, []).append(float(train) / float(classes))
    return {key: sum(values) / len(values) for key, values in found.items()}


@dataclass(frozen=True)
class BudgetTest:
    """One point of a curve against its reference: which comparison, at which budget."""

    dataset: str
    model: str
    kind: str
    reference: str
    """The reference strategy's cell name (``pretrained``, ``linear/5``, ``zeroshot``)."""
    budget: str
    protocol: str
    metric: str


def planned_tests(curves: pd.DataFrame, main_protocol: dict[str, str]) -> list[BudgetTest]:
    """The comparisons the break-even budgets come from (module docstring), over the points the table has."""
    tests: list[BudgetTest] = []
    present = set(zip(curves["model"], curves["dataset"], curves["strategy"], strict=True))
    for (dataset, model, kind), frame in curves[curves["budget"] != str(ZERO_LABEL)].groupby(
            ["dataset", "model", "kind"], sort=True):
        strategy = registry.get(kind)
        for budget in sorted(set(frame["budget"]), key=budget_order):
            cell = kind if budget == ALL else budget_strategy(kind, int(budget))
            if strategy.adaptation and dataset in main_protocol and \
                    (model, dataset, registry.baseline().name) in present:
                tests.append(BudgetTest(dataset, model, kind, registry.baseline().name, budget,
                                        main_protocol[dataset], RETRIEVAL_METRIC))
            linear = registry.linear.NAME if budget == ALL else budget_strategy(registry.linear.NAME, int(budget))
            if kind == registry.toptune.NAME and (model, dataset, linear) in present:
                tests.append(BudgetTest(dataset, model, kind, linear, budget, CLASSIFICATION, CLASSIFICATION_METRIC))
            if (model, dataset, registry.zeroshot.NAME) in present and (model, dataset, cell) in present:
                tests.append(BudgetTest(dataset, model, kind, registry.zeroshot.NAME, budget, CLASSIFICATION,
                                        CLASSIFICATION_METRIC))
    return tests


def budget_order(budget: str) -> float:
    """``"0"`` < ``"1"`` < ... < ``"all"``."""
    return math.inf if budget == ALL else float(budget)


def test_sides(test: BudgetTest) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """The (model, dataset, strategy) groups a test compares: the curve's point, then its reference."""
    cell = test.kind if test.budget == ALL else budget_strategy(test.kind, int(test.budget))
    return (test.model, test.dataset, cell), (test.model, test.dataset, test.reference)


def budget_requests(tests: list[BudgetTest]) -> list[Request]:
    """The curves' comparisons, for the run's one Holm family (``bench.compare.Family``)."""
    return [Request(BUDGET, t.protocol, t.metric, *test_sides(t)) for t in tests]


def write_tests(run_dir: Path, tests: list[BudgetTest], family: Family) -> pd.DataFrame:
    """``label-budgets-tests.csv``: each planned comparison with the family's numbers and Holm-adjusted p-value
    (a comparison without shared scored queries is not in the family, hence not here); ``draws``: the subset
    draws behind the curve's point."""
    rows = []
    for t in tests:
        found = family.get(t.protocol, t.metric, *test_sides(t))
        if found is None:
            continue
        r, significant = found.result, found.significant(family.alpha)
        rows.append({"dataset": t.dataset, "model": t.model, "strategy": t.kind, "reference": t.reference,
                     "budget": t.budget, "protocol": t.protocol, "metric": t.metric, "mean": found.mean_a,
                     "reference_mean": found.mean_b, "difference": r.difference, "ci_low": r.low, "ci_high": r.high,
                     "p_value": r.p_value, "p_holm": found.p_adjusted, "better": bool(significant and r.difference > 0),
                     "worse": bool(significant and r.difference < 0), "method": r.method, "queries": r.n_queries,
                     "draws": r.seeds_a})
    table = pd.DataFrame(rows, columns=TEST_COLUMNS)
    table.to_csv(run_dir / BREAK_EVEN_FILE, index=False)
    return table


TEST_COLUMNS = ["dataset", "model", "strategy", "reference", "budget", "protocol", "metric", "mean", "reference_mean",
                "difference", "ci_low", "ci_high", "p_value", "p_holm", "better", "worse", "method", "queries", "draws"]
MIN_DRAWS = 3
"""Fewest draws per budget for a break-even call: the interval over draws covers from 2 (95.7% simulated), but
one degree of freedom for the spread between draws is too little to stand behind a call."""


def break_even(tests: pd.DataFrame) -> str | None:
    """The smallest budget at which the strategy is significantly better than its reference (rows of one
    curve against one reference: ``budget`` and ``better``); ``None`` when it never is."""
    better = [str(b) for b, wins in zip(tests["budget"], tests["better"], strict=True) if bool(wins)]
    return min(better, key=budget_order) if better else None


@dataclass(frozen=True)
class BreakEven:
    """Where one curve first beats its reference, and whether it stays ahead at every larger budget."""

    dataset: str
    model: str
    strategy: str
    reference: str
    metric: str
    budget: str | None
    largest: str
    """The largest budget tested (the curve's end)."""
    holds: bool
    """Significantly better at every tested budget from ``budget`` on."""
    mean: float = math.nan
    reference_mean: float = math.nan
    p_holm: float = math.nan
    """At the break-even budget: the strategy's and the reference's means and the Holm-adjusted p-value."""
    draws: int | None = None
    """The fewest subset draws behind a budget point of the curve (None: no numbered budget)."""
    below: str | None = None
    """The largest budget measured under ``budget``: the break-even lies between the two, nothing between them
    was measured, so no sentence may name a number in that gap."""

    @property
    def called(self) -> bool:
        """Whether there are draws enough (``MIN_DRAWS``) to call a break-even at all."""
        return self.draws is None or self.draws >= MIN_DRAWS


def break_evens(tests: pd.DataFrame) -> list[BreakEven]:
    """One ``BreakEven`` per (dataset, model, strategy, reference) curve of the tests table."""
    found = []
    # ``linear/5`` -> ``linear``: one curve is compared with the reference's curve, budget by budget
    tests = tests.assign(reference=[split_budget(str(r))[0] for r in tests["reference"]])
    for (dataset, model, strategy, reference, metric), frame in tests.groupby(
            ["dataset", "model", "strategy", "reference", "metric"], sort=True):
        frame = frame.assign(budget=frame["budget"].astype(str))
        draws = _fewest_draws(frame)
        budget = break_even(frame) if draws is None or draws >= MIN_DRAWS else None
        budgets = sorted(frame["budget"], key=budget_order)
        holds = budget is not None and all(bool(w) for b, w in zip(frame["budget"], frame["better"], strict=True)
                                           if budget_order(b) >= budget_order(budget))
        at = frame[frame["budget"] == budget].iloc[0] if budget is not None else None
        numbers = {name: float(at[name]) if at is not None and name in at else math.nan
                   for name in ("mean", "reference_mean", "p_holm")}
        under = [b for b in budgets if budget is not None and budget_order(b) < budget_order(budget)]
        found.append(BreakEven(str(dataset), str(model), str(strategy), str(reference), str(metric), budget,
                               budgets[-1], holds, **numbers, draws=draws, below=under[-1] if under else None))
    return found


def _fewest_draws(frame: pd.DataFrame) -> int | None:
    """The fewest draws behind the curve's numbered budgets (``all`` is every photo, not a draw)."""
    if "draws" not in frame:
        return None  # a tests table written before draws were recorded
    drawn = frame.loc[frame["budget"] != ALL, "draws"].dropna()
    return int(drawn.min()) if not drawn.empty else None


def write_label_budgets(run_dir: Path, config: BenchConfig, cells: list[Cell]) -> pd.DataFrame | None:
    """``label-budgets.csv`` (the curves) for the cells of the plan; None, with the curves and tests files of
    an earlier plan removed, when the plan has no label-budget cell. The tests behind the break-even budgets
    are written with the run's family (``planned_budget_tests``, ``write_tests``)."""
    curves = curves_table(ResultStore(run_dir), cells, n_resamples=config.stats.bootstrap, seed=config.stats.seed)
    if curves.empty:
        for name in (CURVES_FILE, BREAK_EVEN_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return None
    curves.to_csv(run_dir / CURVES_FILE, index=False)
    return curves


def planned_budget_tests(run_dir: Path) -> list[BudgetTest]:
    """The comparisons behind the break-even budgets of the run's curves (none without curves)."""
    found = read_curves(run_dir)
    return planned_tests(found[0], curve_protocols(found[0])) if found is not None else []


def curve_protocols(curves: pd.DataFrame) -> dict[str, str]:
    """dataset -> the retrieval protocol the budget cells scored (the runner's main one, also for a user
    catalogue, unless ``protocols: all``), the declared order first."""
    main_protocol = {}
    budgeted = curves[~curves["budget"].isin([ALL, str(ZERO_LABEL)])]
    for dataset in set(curves["dataset"]):
        entry = declared_entry(str(dataset))
        scored = budgeted.loc[budgeted["dataset"] == dataset, "protocol"].unique()
        protocols = [p for p in scored if p != CLASSIFICATION]
        declared = [p.name for p in entry.protocols] if entry is not None else []
        ordered = sorted(protocols, key=lambda p: (declared.index(p) if p in declared else len(declared), p))
        if ordered:
            main_protocol[str(dataset)] = str(ordered[0])
    return main_protocol


def read_curves(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The curves and the tests tables of a run, or None when it has no label-budget cells."""
    curves, tests = run_dir / CURVES_FILE, run_dir / BREAK_EVEN_FILE
    if not curves.is_file():
        return None
    table = pd.read_csv(curves, dtype={"budget": str})
    found = pd.read_csv(tests, dtype={"budget": str}) if tests.is_file() else pd.DataFrame(columns=TEST_COLUMNS)
    return table, found
