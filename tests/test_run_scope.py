"""One set of cells and one family of tests per run: a model dropped from the config and seeds dropped from
``repeats`` stay out of every table, test, report and ``compare``; every comparison the run reports is one
Holm family with one verdict per pair; a label-budget break-even is not called with fewer than 3 draws."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.budgets import BREAK_EVEN_FILE
from shelfsight.bench.compare import COMPARISONS_FILE, Family, FamilySettings, Request, RunScores, compare
from shelfsight.bench.label_budgets import MIN_DRAWS, break_evens
from shelfsight.bench.recommend import recommend
from shelfsight.bench.results import Cell, CellResult, ResultStore, RunPlan
from shelfsight.bench.runner import BenchSummary
from shelfsight.bench.significance import PairedTests, report_requests
from shelfsight.catalog import load_catalog
from shelfsight.report import load_run, write_report
from shelfsight.report.sections.label_budgets import advice
from zeroshot_tiny import register_open_clip

PER_CLASS = 8
"""Photos per class and split in the test's catalogue."""
STRONG = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "b"}
"""B: real ImageNet weights, the best of every column while it is in the config."""


def _config(clip: str, manifest: Path, *, models: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """A: a tiny random-init text-image model (every cell seeded, so ``repeats`` gives seeds; zero-shot makes
    the label budgets' reference). A user catalogue without ``val``: linear and kNN are seeded too."""
    return {
        "name": "scope", "models": models, "datasets": [{"name": "shop", "source": str(manifest)}],
        "strategies": ["pretrained", "linear", "knn", {"name": "zeroshot", "models": ["a"]}], "repeats": repeats,
        "label_budgets": {"budgets": [1, "all"], "subsets": 2, "strategies": ["linear"], "models": ["a"]},
        "index": {"backend": "exact"}, "retrieval": {"k": 20},
        "embedding": {"num_workers": 0, "runtime": "torch"}, "tracking": {"enabled": False},
        "stats": {"bootstrap": 200, "permutations": 500},
    }


@dataclass(frozen=True)
class Runs:
    run: Path
    first: BenchSummary
    second: BenchSummary


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, grocery_root: Path) -> Iterator[Runs]:
    """Models A and B with 3 repeats, then the same run with B removed and 2 repeats."""
    folder = tmp_path_factory.mktemp("scope")
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "test"))
    rows = [{"path": str(item.image_path), "label": item.label, "split": item.split} for item in catalog.items]
    manifest = folder / "shop.csv"
    # Scope is the subject, not the numbers: a few photos per class and split keep the full dataset's classes.
    pd.DataFrame(rows).groupby(["label", "split"], sort=False).head(PER_CLASS).to_csv(manifest, index=False)
    clip = register_open_clip(folder)
    a = {"name": clip, "pretrained": False, "alias": "a"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHELFSIGHT_CACHE_DIR", str(folder / "cache"))
        first = run_bench(load_config(_config(clip, manifest, models=[a, STRONG], repeats=3)), folder / "run",
                          progress=False)
        second = run_bench(load_config(_config(clip, manifest, models=[a], repeats=2)), folder / "run",
                           progress=False)
    assert first.failed == [] and second.failed == [] and second.computed == []
    yield Runs(folder / "run", first, second)


def _mentions_b(frame: pd.DataFrame) -> bool:
    text = frame.astype(str)
    return bool(text.isin(["b"]).any().any() or text.apply(lambda c: c.str.startswith("b ·")).any().any())


def test_a_removed_model_and_dropped_seeds_are_named_stale_and_enter_no_table(runs: Runs) -> None:
    b_cells = sorted(c for c in runs.first.computed if c.startswith("b__"))
    dropped_seeds = sorted(c for c in runs.first.computed if c.startswith("a__") and c.endswith("__seed2"))
    assert b_cells and len(dropped_seeds) == 4  # pretrained, linear, knn, zeroshot
    assert runs.second.stale == sorted(b_cells + dropped_seeds)

    table = read_table(runs.run)
    assert set(table["model"]) == {"a"}
    stochastic = table[table["protocol"] != "cost"]
    assert set(stochastic["n"]) == {2}  # every cell of A is seeded: n = the config's 2 repeats

    first_table = pd.read_csv(runs.run / COMPARISONS_FILE)
    assert not _mentions_b(first_table)
    # seeds dropped from repeats are not pooled back in: 2 seeds (or 2 subset draws) behind every side
    assert set(first_table["seeds_a"]) | set(first_table["seeds_b"]) == {2}
    significance = pd.read_csv(runs.run / "significance.csv")
    assert len(significance) and not _mentions_b(significance)
    assert set(significance["model"]) == {"a"}  # A is absent of nothing: its cells are still compared
    tests = pd.read_csv(runs.run / BREAK_EVEN_FILE, dtype={"budget": str})
    assert set(tests["model"]) == {"a"} and set(tests["draws"].dropna()) == {2}


def test_compare_reads_the_plan_and_the_family(runs: Runs) -> None:
    from shelfsight.cli import app

    stale = CliRunner().invoke(app, ["compare", str(runs.run), "b:pretrained", "a:pretrained"])
    assert stale.exit_code != 0
    message = str(stale.exception)
    assert "no cell 'b:pretrained'" in message and "stale, not in this run's plan: b:knn, b:linear, b:pretrained" \
        in message and "known: a:knn" in message

    found = compare(runs.run, "a:linear", "a:knn", protocol="classification")
    family = pd.read_csv(runs.run / COMPARISONS_FILE)
    row = family[(family["a_strategy"].isin(["linear", "knn"])) & (family["b_strategy"].isin(["linear", "knn"]))]
    assert len(row) == 1  # one comparison for the pair, whichever way round it is asked
    sign = 1.0 if row.iloc[0]["a_strategy"] == "linear" else -1.0
    assert found.result.difference == pytest.approx(sign * row.iloc[0]["difference"])
    assert found.p_adjusted == pytest.approx(row.iloc[0]["p_holm"])
    assert (found.result.seeds_a, found.result.seeds_b) == (2, 2)
    result = CliRunner().invoke(app, ["compare", str(runs.run), "a:linear", "a:knn", "--protocol", "classification"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "A 2, B 2" in result.output and f"one of the run's {len(family)} comparisons" in result.output
    assert "b ·" not in result.output and "b:" not in result.output

    unreported = compare(runs.run, "a:linear", "a:linear", protocol="classification")
    assert unreported.p_adjusted is None and unreported.result.difference == 0  # outside the family: unadjusted


@pytest.fixture(scope="module")
def report(runs: Runs) -> tuple[str, str]:
    """The rerun's report: (Markdown, HTML)."""
    files = write_report(runs.run, log_mlflow=False)
    return files.markdown.read_text(encoding="utf-8"), files.html.read_text(encoding="utf-8")


def test_the_report_shows_the_plan_only_names_the_stale_cells_and_states_the_family(runs: Runs,
                                                                                    report: tuple[str, str]) -> None:
    markdown, html = report
    tables = [line for line in markdown.splitlines() if line.startswith("|")]
    assert tables and not any(line.startswith("| b |") or "b · " in line for line in tables)
    assert any(line.startswith("| a |") for line in tables)
    assert "<td>b</td>" not in html and "<td>a</td>" in html
    stale = f"{len(runs.second.stale)} stored cells are not in this run"  # (the HTML escapes the apostrophe)
    assert stale in markdown and stale in html and "b__shop__knn__seed0" in markdown
    size = len(pd.read_csv(runs.run / COMPARISONS_FILE))
    assert f"One Holm family of {size} comparisons at alpha 0.05" in markdown
    run = load_run(runs.run)
    assert {c.cell.model for c in run.cells} == {"a"} and all(c.cell.seed != 2 for c in run.cells)


def _pair(dataset: str, protocol: str, metric: str, a: str, b: str) -> tuple[str, str, str, frozenset[str]]:
    return dataset, protocol, metric, frozenset((a, b))


def test_one_holm_family_one_verdict_per_pair(runs: Runs) -> None:
    family = pd.read_csv(runs.run / COMPARISONS_FILE)
    # adjusted once, over every comparison: the independent reference agrees on the whole family
    expected = multipletests(family["p_value"].to_numpy(), method="holm")[1]
    assert np.allclose(family["p_holm"].to_numpy(), expected)
    verdicts = {_pair(r.dataset, r.protocol, r.metric, f"{r.a_model} · {r.a_strategy}",
                      f"{r.b_model} · {r.b_strategy}"): (bool(r.significant), float(r.p_holm), float(r.difference))
                for r in family.itertuples()}
    assert len(verdicts) == len(family)  # each pair tested once

    reported: set[tuple[str, str, str, frozenset[str]]] = set()
    for r in pd.read_csv(runs.run / "significance.csv").itertuples():
        key = _pair(r.dataset, r.protocol, r.metric, str(r.best), f"{r.model} · {r.strategy}")
        reported.add(key)
        assert (not bool(r.tied), float(r.p_holm)) == verdicts[key][:2]
    for r in pd.read_csv(runs.run / BREAK_EVEN_FILE, dtype={"budget": str}).itertuples():
        side = r.strategy if r.budget == "all" else f"{r.strategy}/{r.budget}"
        key = _pair(r.dataset, r.protocol, r.metric, f"{r.model} · {side}", f"{r.model} · {r.reference}")
        reported.add(key)
        significant, p_holm, _ = verdicts[key]
        assert (bool(r.better) or bool(r.worse), float(r.p_holm)) == (significant, p_holm)
    requests = report_requests(runs.run)
    reported |= {_pair(q.a[1], q.protocol, q.metric, f"{q.a[0]} · {q.a[2]}", f"{q.b[0]} · {q.b[2]}")
                 for q in requests}
    assert reported == set(verdicts)  # the family holds every comparison reported, and nothing else

    settings = FamilySettings.of_run(runs.run)
    recs = recommend(load_run(runs.run).table, PairedTests(Family.read(runs.run) or Family([], 0.05), settings))
    tested = [r for r in recs.items if r.test is not None and r.best is not None and r.runner_up is not None]
    assert tested
    for rec in tested:
        assert rec.best is not None and rec.runner_up is not None and rec.test is not None
        significant, p_holm, _ = verdicts[_pair(rec.dataset, rec.protocol, rec.metric, rec.best.label,
                                                rec.runner_up.label)]
        assert (rec.test.significant, rec.test.p_adjusted) == (significant, pytest.approx(p_holm))
    purposes = {p for text in family["purposes"] for p in text.split("; ")}
    assert purposes == {"best of column", "label budget", "report"}


def test_intervals_are_at_one_minus_alpha(runs: Runs) -> None:
    scores = RunScores(runs.run)
    request = Request("report", "classification", "accuracy", ("a", "shop", "linear"), ("a", "shop", "knn"))
    wide = Family.test(scores, [request], FamilySettings(alpha=0.05, permutations=200, bootstrap=400))
    narrow = Family.test(scores, [request], FamilySettings(alpha=0.2, permutations=200, bootstrap=400))
    [(w, *_)], [(n, *_)] = wide.rows, narrow.rows
    assert (w.confidence, n.confidence) == (0.95, 0.8)
    assert w.result.difference == n.result.difference and w.result.p_value == n.result.p_value
    # same data, same seed: the interval at 80% lies inside the one at 95%, and is narrower
    assert w.result.low <= n.result.low <= n.result.high <= w.result.high
    assert n.result.high - n.result.low < w.result.high - w.result.low


def test_a_break_even_is_not_called_with_two_draws(runs: Runs, report: tuple[str, str]) -> None:
    tests = pd.read_csv(runs.run / BREAK_EVEN_FILE, dtype={"budget": str})
    [curve] = break_evens(tests)
    assert (curve.model, curve.strategy, curve.reference, curve.draws) == ("a", "linear", "zeroshot", 2)
    assert not curve.called and curve.budget is None  # whatever the tests at budget 1 said
    markdown = report[0]
    assert f"| a | linear | zeroshot | accuracy | too few draws to call (N = 2 < {MIN_DRAWS}) |" in markdown


def _toptune_tests(draws: int) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "model": "m", "strategy": "toptune", "reference": "pretrained",
                          "budget": budget, "metric": "mMP@5", "better": True, "draws": n, "mean": 0.6,
                          "reference_mean": 0.5, "p_holm": 0.001}
                         for budget, n in (("1", draws), ("2", draws), ("all", 1))])


def test_the_first_screen_sentence_calls_a_break_even_only_from_three_draws() -> None:
    curves = pd.DataFrame(columns=["dataset", "budget", "train_per_class"])
    [two] = advice(break_evens(_toptune_tests(2)), curves)
    assert "too few draws to call (N = 2 < 3)" in two and "beats its pre-trained one" not in two
    [three] = advice(break_evens(_toptune_tests(3)), curves)
    assert "from one labelled photo per class" in three and "too few" not in three


def test_a_stored_cell_under_another_key_is_stale(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    cells = [Cell("m", "d", "pretrained"), Cell("m", "d", "linear"), Cell("gone", "d", "pretrained")]
    for cell, key in zip(cells, ("k1", "old", "k3"), strict=True):
        store.save(CellResult(cell=cell, status="ok", key=key))
    plan = RunPlan(tuple(cells[:2]), {cells[0].cell_id: "k1", cells[1].cell_id: "new"})
    store.write_plan(plan)
    kept, stale = store.planned_results()
    assert [r.cell for r in kept] == [cells[0]]
    assert sorted(r.cell.cell_id for r in stale) == sorted([cells[1].cell_id, cells[2].cell_id])
    assert store.read_plan() == plan
