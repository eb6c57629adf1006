"""Trustworthy results: cell identity and reuse, deterministic cells, per-query scores with intervals, paired
comparisons, and class-disjoint protocols that refuse leakage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.compare import compare
from shelfsight.bench.identity import describe_change, digest
from shelfsight.bench.leaderboard import read_significance
from shelfsight.bench.results import CellResult, ResultStore
from test_public_datasets import CAR_NAMES, make_cars_car_ims

SMALL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}
GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
TOPTUNE = {"trials": 2, "trial_epochs": 3, "trial_repeats": 1, "final_max_epochs": 15, "patience": 5}


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "trust", "models": [SMALL, {**SMALL, "alias": "b"}], "datasets": [GROCERY],
        "strategies": ["pretrained", "toptune"], "toptune": TOPTUNE, "index": {"backend": "exact"},
        "retrieval": {"k": 20}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
        "stats": {"bootstrap": 200, "permutations": 500},
    }
    config.update(overrides)
    return config


def test_identity_digest_and_the_change_it_names() -> None:
    old = {"strategy": {"name": "toptune", "settings": {"trials": 8}}, "seed": 0}
    new = {"strategy": {"name": "toptune", "settings": {"trials": 6}}, "seed": 0}
    assert digest(old) == digest(json.loads(json.dumps(old))) != digest(new)
    assert describe_change(old, new) == "strategy.settings.trials 8 -> 6"


def test_a_rerun_recomputes_exactly_the_cells_whose_inputs_changed(grocery_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_bench(load_config(_config()), run_dir, progress=False)
    assert first.failed == [] and sorted(first.computed) == [
        "a__grocery-store__pretrained", "a__grocery-store__toptune__seed0",
        "b__grocery-store__pretrained", "b__grocery-store__toptune__seed0"]
    table = read_table(run_dir)

    unchanged = run_bench(load_config(_config()), run_dir, progress=False)
    assert unchanged.computed == [] and len(unchanged.reused) == 4
    pd.testing.assert_frame_equal(read_table(run_dir), table)

    trials = run_bench(load_config(_config(toptune={**TOPTUNE, "trials": 3})), run_dir, progress=False)
    assert sorted(trials.computed) == ["a__grocery-store__toptune__seed0", "b__grocery-store__toptune__seed0"]
    assert trials.reasons["a__grocery-store__toptune__seed0"] == "inputs changed: strategy.settings.trials 2 -> 3"
    record = CellResult.from_json((run_dir / "cells" / "a__grocery-store__toptune__seed0.json").read_text())
    assert record.inputs["strategy"]["settings"]["trials"] == 3
    assert record.costs["trials_completed"] + record.costs["trials_pruned"] == 3  # the study was not resumed

    b_larger = {**SMALL, "alias": "b", "preprocess": {"input_size": 72}}
    crop = run_bench(load_config(_config(models=[SMALL, b_larger], toptune={**TOPTUNE, "trials": 3})), run_dir,
                     progress=False)
    assert sorted(crop.computed) == ["b__grocery-store__pretrained", "b__grocery-store__toptune__seed0"]
    assert "model.preprocess.input_size 64 -> 72" in crop.reasons["b__grocery-store__pretrained"]

    forced = run_bench(load_config(_config(models=[SMALL, b_larger], toptune={**TOPTUNE, "trials": 3})), run_dir,
                       progress=False, recompute=["a__*pretrained"])
    assert forced.computed == ["a__grocery-store__pretrained"]
    assert forced.reasons == {"a__grocery-store__pretrained": "recompute requested"}

    dropped = run_bench(load_config(_config(models=[SMALL], toptune={**TOPTUNE, "trials": 3})), run_dir,
                        progress=False)
    assert dropped.computed == [] and dropped.stale == ["b__grocery-store__pretrained",
                                                        "b__grocery-store__toptune__seed0"]
    assert set(read_table(run_dir)["model"]) == {"a"}  # the table never holds cells outside the config


def _scipy_percentile_interval(values: np.ndarray, resamples: int) -> tuple[float, float]:
    """The 95% percentile bootstrap of the mean over queries, by scipy: the reference for a one-level interval."""
    from scipy.stats import bootstrap

    found = bootstrap((values,), np.mean, method="percentile", n_resamples=resamples, random_state=0)
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def test_deterministic_cells_run_once_and_stochastic_ones_per_seed(grocery_root: Path, tmp_path: Path) -> None:
    resamples = 4000  # Monte Carlo error of a percentile endpoint about 0.005 (12 queries): 0.03 is 6 of them
    config = load_config(_config(models=[SMALL], strategies=["pretrained", "linear", "toptune"], repeats=2,
                                 stats={"bootstrap": resamples, "permutations": 500}))
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert sorted(summary.computed) == ["a__grocery-store__linear", "a__grocery-store__pretrained",
                                        "a__grocery-store__toptune__seed0", "a__grocery-store__toptune__seed1"]
    table = read_table(tmp_path / "run").set_index(["strategy", "protocol", "metric"])
    store = ResultStore(tmp_path / "run")
    pretrained = table.loc[("pretrained", "fine", "mMP@5")]
    assert pretrained["n"] == 1 and pretrained["repeats"] == "deterministic" and np.isnan(pretrained["std"])
    tuned = table.loc[("toptune", "fine", "mMP@5")]
    seed_means = [r.metrics["fine"]["mMP@5"] for r in store.load_all() if r.cell.strategy == "toptune"]
    assert tuned["n"] == 2 and tuned["repeats"] == "seeds" and len(seed_means) == 2
    assert tuned["mean"] == pytest.approx(np.mean(seed_means), abs=1e-12)
    assert tuned["std"] == pytest.approx(np.std(seed_means, ddof=1), abs=1e-12)  # the spread over seeds
    assert tuned["ci_low"] <= tuned["mean"] <= tuned["ci_high"]

    # one-level intervals (a deterministic cell: queries resampled) agree with scipy's percentile bootstrap
    cells = {r.cell.strategy: r for r in store.load_all()}
    for strategy, protocol, metric in (("pretrained", "fine", "mMP@5"), ("linear", "classification", "accuracy")):
        frame = store.per_query(cells[strategy].cell)
        assert frame is not None
        rows = frame[frame["protocol"] == protocol]
        values = ((rows["y_true"] == rows["y_pred"]).to_numpy(float) if metric == "accuracy"
                  else rows[metric].to_numpy(float))
        # accuracy moves in steps of one photo: two bootstraps may land an endpoint one step apart
        tolerance = 1 / len(values) + 1e-9 if metric == "accuracy" else 0.03
        low, high = _scipy_percentile_interval(values, resamples)
        row = table.loc[(strategy, protocol, metric)]
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["ci_low"] == pytest.approx(low, abs=tolerance) and row["ci_high"] == pytest.approx(high,
                                                                                                      abs=tolerance)
        assert high - low > 2 * tolerance  # a real spread, wider than the slack the comparison above allows

    # the per-query scores beside each cell reproduce its means
    result = next(r for r in store.load_all() if r.cell.strategy == "pretrained")
    scores = store.per_query(result.cell)
    assert scores is not None
    fine = scores[scores["protocol"] == "fine"]
    assert fine["query"].is_unique and len(fine) == result.details["fine"]["queries"]
    for metric in ("mMP@5", "R@1", "MAP@R", "MAP"):
        assert np.nanmean(fine[metric]) == pytest.approx(result.metrics["fine"][metric], abs=1e-12)
    labels = scores[scores["protocol"] == "classification"]
    assert labels.empty  # pretrained classifies nothing
    linear = next(r for r in store.load_all() if r.cell.strategy == "linear")
    rows = store.per_query(linear.cell)
    assert rows is not None
    correct = (rows["y_true"] == rows["y_pred"]).mean()
    assert correct == pytest.approx(linear.metrics["classification"]["accuracy"])
    assert "warning" not in result.details["fine"]  # MAP@R comes from exact search: no truncation caveat


def test_compare_and_significance_on_a_real_run(grocery_root: Path, tmp_path: Path) -> None:
    floor = {**SMALL, "alias": "floor", "pretrained": False}
    config = load_config(_config(models=[SMALL, floor], strategies=["pretrained"]))
    run_dir = tmp_path / "run"
    assert run_bench(config, run_dir, progress=False).failed == []
    found = compare(run_dir, "a:pretrained", "floor:pretrained", n_permutations=500, n_resamples=200)
    assert found.protocol == "fine" and found.metric == "mMP@5"
    assert found.result.difference == pytest.approx(found.mean_a - found.mean_b)
    assert found.result.low < found.result.difference < found.result.high
    assert found.result.p_value < 0.01 and found.significant()  # ImageNet features beat random weights
    same = compare(run_dir, "a:pretrained", "a:pretrained", n_permutations=500, n_resamples=200)
    assert same.result.difference == 0 and not same.significant()
    significance = read_significance(run_dir)
    assert significance is not None
    fine = significance[(significance["protocol"] == "fine") & (significance["metric"] == "mMP@5")].iloc[0]
    assert (fine["model"], bool(fine["tied"])) == ("floor", False)
    assert fine["p_holm"] >= fine["p_value"]
    store = ResultStore(run_dir)
    per_model = {}
    for result in store.load_all():
        frame = store.per_query(result.cell)
        assert frame is not None
        per_model[result.cell.model] = frame[frame["protocol"] == "fine"]["mMP@5"].mean()
    assert fine["best_mean"] == pytest.approx(per_model["a"], abs=1e-12)  # read from the cells' own queries
    assert fine["mean"] == pytest.approx(per_model["floor"], abs=1e-12)
    assert abs(fine["difference"]) == pytest.approx(per_model["a"] - per_model["floor"], abs=1e-12)

    from shelfsight.cli import app

    # coarse, not iconic: the fixture's iconic gallery holds 6 images, too few for a significant difference
    result = CliRunner().invoke(app, ["compare", str(run_dir), "a:pretrained", "floor:pretrained",
                                      "--protocol", "coarse", "--permutations", "500", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert "coarse" in result.output and "95% interval" in result.output and "significant at" in result.output
    bad = CliRunner().invoke(app, ["compare", str(run_dir), "a:pretrained", "nobody:pretrained"])
    assert bad.exit_code != 0 and "known: a:pretrained, floor:pretrained" in str(bad.exception)


def test_cars196_tuned_retrieval_learns_only_from_training_classes(tmp_path: Path) -> None:
    """The replica's official train split holds classes 1, 2, 99 and 100: a head trained on it has seen
    evaluated classes, so toptune trains a second head on classes 1..98 (all their images) for retrieval."""
    from shelfsight.bench.leakage import LeakageError, overlap, require_unseen
    from shelfsight.catalog import load_catalog, protocols_for

    make_cars_car_ims(tmp_path / "data")
    catalog = load_catalog("cars196", data_dir=tmp_path / "data")
    [protocol] = protocols_for("cars196", catalog)
    official_train = [i.item_id for i in catalog if i.split == "train"]
    assert overlap(protocol, catalog, official_train) == (2, 2)  # images of classes 99 and 100
    with pytest.raises(LeakageError, match=r"cars196 protocol 'metric-learning' .* learned from 2 of its evaluated "
                                           r"images and 2 of its evaluated classes .* product_id in 1\.\.98"):
        require_unseen(protocol, catalog, "cars196", official_train, "a head")
    require_unseen(protocol, catalog, "cars196", [i.item_id for i in catalog if int(i.product_id or 0) <= 98], "ok")

    model = {"name": "timm:test_resnet.r160_in1k", "pretrained": False, "preprocess": {"input_size": 32}}
    config = load_config({
        "name": "cars", "models": [model], "datasets": ["cars196"], "data_dir": str(tmp_path / "data"),
        "strategies": ["toptune"], "toptune": TOPTUNE, "index": {"backend": "exact"}, "retrieval": {"k": 10},
        "embedding": {"num_workers": 0}, "tracking": {"enabled": False}, "stats": {"bootstrap": 100},
    })
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == [], summary.failed
    store = ResultStore(tmp_path / "run")
    [result] = store.load_all()
    # classification keeps the official split: its test images of classes 1, 2 and 99 (class 196 has no
    # training image, so no head can name it), scored as their per-image labels say
    labels = store.per_query(result.cell)
    assert labels is not None
    labels = labels[labels["protocol"] == "classification"]
    expected = {i.item_id for i in catalog if i.split == "test" and i.label in {CAR_NAMES[0], CAR_NAMES[1],
                                                                              CAR_NAMES[98]}}
    assert set(labels["query"]) == expected and len(expected) == 4
    assert result.metrics["classification"]["accuracy"] == pytest.approx(
        (labels["y_true"] == labels["y_pred"]).mean(), abs=1e-12)
    assert result.details["metric-learning_head"]["classes"] == 2  # classes 1 and 2 only
    record = json.loads((tmp_path / "run" / "work" / result.cell.cell_id / "metric-learning" / "tuning.json")
                        .read_text())
    learned = {i.product_id for i in catalog if i.item_id in set(record["learned_from"])}
    assert learned == {"1", "2"} and len(record["learned_from"]) == 5  # every image of classes 1..98


def test_cars196_finetune_retrieval_uses_a_backbone_tuned_on_training_classes(tmp_path: Path) -> None:
    make_cars_car_ims(tmp_path / "data")
    model = {"name": "efficientnet_lite0", "preprocess": {"input_size": 32}, "alias": "lite0-32"}
    config = load_config({
        "name": "cars", "models": [model], "datasets": ["cars196"], "data_dir": str(tmp_path / "data"),
        "strategies": ["finetune"], "finetune": {"epochs": 1, "batch_size": 2, "num_workers": 0},
        "index": {"backend": "exact"}, "retrieval": {"k": 10}, "embedding": {"num_workers": 0},
        "tracking": {"enabled": False}, "stats": {"bootstrap": 100},
    })
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == [], summary.failed
    [result] = ResultStore(tmp_path / "run").load_all()
    folder = Path(result.details["metric-learning_backbone"])
    assert folder.name == "finetuned-metric-learning" and (folder / "finetuned.json").is_file()
    classes = json.loads((folder / "finetuned.json").read_text())["classes"]
    assert sorted(classes) == sorted(CAR_NAMES[:2])  # the protocol's training classes 1 and 2 (car models)
    official = json.loads((Path(result.details["finetuned"]) / "finetuned.json").read_text())["classes"]
    assert len(official) == 4  # the classification backbone keeps the official split's classes
