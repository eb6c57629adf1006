"""Label-efficiency curves: nested class-stratified subsets that never touch validation or test, the break-even
budget on a table with a known answer, a real run's curves and tests, and the section in Chromium."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shelfsight.adapt.splits import at_most_per_class, labelled_splits
from shelfsight.adapt.toptune import TopTuneConfig, planned_trials
from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.budgets import BREAK_EVEN_FILE, CURVES_FILE
from shelfsight.bench.config import ConfigError
from shelfsight.bench.label_budgets import (
    break_even,
    break_evens,
    read_curves,
)
from shelfsight.bench.results import CellResult
from shelfsight.bench.strategies.knn import neighbours
from shelfsight.catalog import load_catalog

SMALL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}
GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
TOPTUNE = {"trials": 2, "trial_epochs": 3, "trial_repeats": 1, "final_max_epochs": 15, "patience": 5}


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "budgets", "models": [SMALL], "datasets": [GROCERY], "strategies": ["linear", "knn", "toptune"],
        "label_budgets": {"budgets": [1, 2, "all"], "subsets": 2}, "toptune": TOPTUNE,
        "index": {"backend": "exact"}, "retrieval": {"k": 20}, "embedding": {"num_workers": 0},
        "tracking": {"enabled": False}, "stats": {"bootstrap": 200, "permutations": 500},
    }
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------------------------- subsets
def test_subsets_are_stratified_nested_and_leave_validation_and_test_alone(grocery_root: Path) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    full = labelled_splits("grocery-store", catalog, seed=0)
    available = Counter(full.y_train.tolist())
    untouched = {item.item_id for item in (*full.val, *full.test)}
    previous: set[str] = set()
    for budget in (1, 2, 5, 10):
        subset = at_most_per_class(full, budget, seed=0)
        counts = Counter(subset.y_train.tolist())
        assert counts == {label: min(budget, n) for label, n in available.items()}  # every class, N or all it has
        train = {item.item_id for item in subset.train}
        assert previous <= train  # nested: the 5-per-class photos hold the 2-per-class ones
        assert not train & untouched
        assert subset.val == full.val and subset.test == full.test
        assert [full.train.index(item) for item in subset.train] == sorted(full.train.index(i) for i in subset.train)
        previous = train
    other_seed = {item.item_id for item in at_most_per_class(full, 2, seed=1).train}
    assert other_seed != {item.item_id for item in at_most_per_class(full, 2, seed=0).train}
    with pytest.raises(ValueError, match="at least 1"):
        at_most_per_class(full, 0, seed=0)


def test_the_search_shrinks_with_the_training_set() -> None:
    config = TopTuneConfig(trials=20)
    assert [planned_trials(config, n) for n in (81, 162, 405, 810, 3000)] == [3, 5, 11, 20, 20]
    assert planned_trials(TopTuneConfig(trials=2), 81) == 2  # never more than asked
    assert planned_trials(TopTuneConfig(trials=20, photos_per_trial=None), 81) == 20


def test_the_config_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="integers >= 1"):
        load_config(_config(label_budgets=[0, 2]))
    with pytest.raises(ConfigError, match="repeat a value"):
        load_config(_config(label_budgets=[2, 2]))
    with pytest.raises(ConfigError, match="'pretrained' does not learn from training labels"):
        load_config(_config(label_budgets={"budgets": [1], "strategies": ["pretrained"]}))
    with pytest.raises(ConfigError, match="label_budgets.models: 'b' is not among"):
        load_config(_config(label_budgets={"budgets": [1], "models": ["b"]}))
    with pytest.raises(ConfigError, match="label_budgets.datasets: 'shop' is not among"):
        load_config(_config(label_budgets={"budgets": [1], "datasets": ["shop"]}))
    # a public dataset the config leaves out (the demo drops absent ones) matches nothing, as for strategies
    assert load_config(_config(label_budgets={"budgets": [1], "datasets": ["fashion-mnist"]})).label_budgets
    shorthand = load_config(_config(label_budgets=["all", 5, 1]))
    assert shorthand.label_budgets is not None and shorthand.label_budgets.budgets == (1, 5, "all")


# ---------------------------------------------------------------------------------------------- break-even
def _tests(rows: list[tuple[str, str, bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "model": "m", "strategy": "toptune", "reference": reference,
                          "budget": budget, "metric": "mMP@5", "better": better} for budget, reference, better in rows])


def test_break_even_is_the_smallest_budget_significantly_better() -> None:
    curve = _tests([("1", "pretrained", False), ("2", "pretrained", False), ("5", "pretrained", True),
                    ("10", "pretrained", False), ("25", "pretrained", True), ("all", "pretrained", True)])
    assert break_even(curve) == "5"  # 5 < 25 < all, compared as numbers, not strings ("25" < "5")
    (found,) = break_evens(curve)
    assert (found.budget, found.largest, found.holds) == ("5", "all", False)  # lost at 10
    steady = _tests([("1", "linear/1", False), ("2", "linear/2", True), ("all", "linear", True)])
    (linear,) = break_evens(steady)  # the reference's own budgets make one curve
    assert (linear.reference, linear.budget, linear.holds) == ("linear", "2", True)
    assert break_even(_tests([("1", "pretrained", False), ("all", "pretrained", False)])) is None
    assert break_even(_tests([("10", "pretrained", True), ("all", "pretrained", True)])) == "10"


# ---------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory, grocery_root: Path) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("budgets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHELFSIGHT_CACHE_DIR", str(folder / "cache"))
        patch.setenv("SHELFSIGHT_DATA_DIR", str(grocery_root))
        summary = run_bench(load_config(_config()), folder / "run", progress=False)
    assert summary.failed == []
    yield folder / "run"


def test_budget_cells_train_on_n_per_class_and_share_the_embedding(budget_run: Path) -> None:
    cells = {p.name.removesuffix(".json"): CellResult.from_json(p.read_text(encoding="utf-8"))
             for p in (budget_run / "cells").glob("*.json")}
    assert sorted(cells) == sorted(
        [f"a__grocery-store__{kind}" for kind in ("pretrained", "linear", "knn")] + ["a__grocery-store__toptune__seed0"]
        + [f"a__grocery-store__{kind}-{budget}__seed{seed}" for kind in ("linear", "knn", "toptune")
           for budget in (1, 2) for seed in (0, 1)])
    full = cells["a__grocery-store__linear"].details
    for budget in (1, 2):
        for seed in (0, 1):
            details = cells[f"a__grocery-store__linear-{budget}__seed{seed}"].details
            assert details["train"] == budget * details["classes"] and details["classes"] == full["classes"]
            assert details["test"] == full["test"]  # the untouched test protocol
    assert cells["a__grocery-store__knn-1__seed0"].details["k"] == 1  # one photo per class: the nearest one's class
    assert cells["a__grocery-store__knn-2__seed0"].details["k"] == 1  # an odd vote: two photos would tie
    assert [neighbours(5, budget) for budget in (None, 1, 2, 3, 4, 5, 25)] == [5, 1, 1, 3, 3, 5, 5]
    keys = {c.details["embedding_key"] for c in cells.values()}
    assert len(keys) == 1  # one frozen embedding for every budget: nothing re-extracted
    toptune = cells["a__grocery-store__toptune-1__seed0"]
    assert toptune.inputs["strategy"]["label_budget"]["per_class"] == 1
    assert toptune.costs["trials_planned"] == 2
    assert set(toptune.metrics) == {"classification", "fine"}  # retrieval on the main protocol, the curves' one
    assert {"fine", "coarse", "iconic"} <= set(cells["a__grocery-store__toptune__seed0"].metrics)


def test_curves_and_tests_tables(budget_run: Path) -> None:
    found = read_curves(budget_run)
    assert found is not None and (budget_run / CURVES_FILE).is_file() and (budget_run / BREAK_EVEN_FILE).is_file()
    curves, tests = found
    accuracy = curves[(curves["protocol"] == "classification") & (curves["metric"] == "accuracy")]
    assert set(zip(accuracy["kind"], accuracy["budget"], strict=True)) == {
        (kind, budget) for kind in ("linear", "knn", "toptune") for budget in ("1", "2", "all")}
    seeds = accuracy.set_index(["kind", "budget"])
    assert seeds.loc[("linear", "2"), "n"] == 2 and seeds.loc[("linear", "all"), "n"] == 1
    assert (seeds["ci_low"] <= seeds["mean"]).all() and (seeds["mean"] <= seeds["ci_high"]).all()
    zero = curves[curves["budget"] == "0"]
    assert set(zero["kind"]) == {"pretrained"} and "fine" in set(zero["protocol"])  # the zero-label level
    assert set(zip(tests["reference"], tests["metric"], strict=True)) == {
        ("pretrained", "mMP@5"), ("linear/1", "accuracy"), ("linear/2", "accuracy"), ("linear", "accuracy")}
    assert tests["p_holm"].ge(tests["p_value"]).all()
    table = read_table(budget_run)
    assert not table["strategy"].str.contains("/").any()  # budget cells stay out of the leaderboard's table
    significance = pd.read_csv(budget_run / "significance.csv")
    assert not significance["strategy"].astype(str).str.contains("/").any()


def test_the_section_renders_in_chromium(budget_run: Path, browser: Any) -> None:
    from shelfsight.report import write_report

    files = write_report(budget_run, log_mlflow=False)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "## Label efficiency" in markdown and "How many labels before top-tuning pays?" in markdown
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(files.html.resolve().as_uri(), wait_until="load")
        section = page.locator("section#label-budgets")
        assert section.locator("h2").inner_text() == "Label efficiency"
        image = section.locator("img").first
        assert image.evaluate("i => i.complete && i.naturalWidth > 400")
        rows = section.locator("table.break-even tr")
        assert rows.count() == 1 + 2  # header, toptune vs pretrained, toptune vs linear
        assert page.locator("nav a[href='#label-budgets']").count() == 1
        first_screen = page.inner_text(".answers")
        assert "How many labels before top-tuning pays? On grocery-store" in first_screen
    finally:
        page.close()
    assert np.isfinite(pd.read_csv(budget_run / BREAK_EVEN_FILE)["p_value"]).all()


# last: it changes the run the tests above read
@pytest.mark.slow
def test_a_rerun_reuses_every_cell_and_a_new_budget_adds_only_its_own(budget_run: Path, grocery_root: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFSIGHT_DATA_DIR", str(grocery_root))
    again = run_bench(load_config(_config()), budget_run, progress=False)
    assert again.computed == []
    more = run_bench(load_config(_config(label_budgets={"budgets": [1, 2, 3, "all"], "subsets": 2,
                                                        "strategies": ["linear"]})), budget_run, progress=False)
    assert sorted(more.computed) == ["a__grocery-store__linear-3__seed0", "a__grocery-store__linear-3__seed1"]
    curves, _ = read_curves(budget_run) or (None, None)
    assert curves is not None and set(curves["kind"]) == {"linear", "pretrained"}
