"""The benchmark matrix: config validation, tidy results, resume, a failing cell, MLflow, leaderboard."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from shelfsight.bench import ConfigError, load_config, print_leaderboard, read_table, run_bench
from shelfsight.bench.aggregate import aggregate
from shelfsight.bench.results import Cell, CellResult
from shelfsight.bench.tracking import metric_key

SMALL_MODEL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0-64"}
SMALL_GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
"""Also fits the six-class fixture: a gallery of 24 (> k = 20) and 12 queries (> the 8 example queries)."""


def _config(tmp_path: Path, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "name": "t", "models": [SMALL_MODEL], "datasets": [SMALL_GROCERY],
        "index": {"backend": "exact"}, "retrieval": {"k": 20},
        "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
    }
    config.update(overrides)
    return config


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.0\.pretrianed: Extra inputs are not permitted"):
        load_config({"models": [{"name": "x", "pretrianed": False}], "datasets": ["grocery-store"]})
    with pytest.raises(ConfigError, match="unknown strategy 'finetuning'"):
        load_config({"models": ["x"], "datasets": ["d"], "strategies": ["finetuning"]})
    path = tmp_path / "bad.yaml"
    path.write_text("models: [x]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: datasets: Field required"):
        load_config(path)
    config = load_config({"models": ["efficientnet_lite0", {"name": "efficientnet_lite0", "pretrained": False}],
                          "datasets": ["grocery-store"], "repeats": 3, "seed": 7})
    assert [m.label for m in config.models] == ["efficientnet_lite0", "efficientnet_lite0-random-init"]
    assert config.seeds == (7, 8, 9)


def test_aggregate_gives_mean_std_and_n_over_seeds() -> None:
    results = [
        CellResult(cell=Cell("m", "d", "pretrained", seed), status="ok", family="supervised",
                   metrics={"p": {"R@1": value}})
        for seed, value in enumerate((0.5, 0.7, 0.9))
    ]
    results.append(CellResult(cell=Cell("m", "d", "pretrained", 3), status="error", error="boom"))
    [row] = aggregate(results).to_dict("records")
    assert row["mean"] == pytest.approx(0.7)
    assert row["std"] == pytest.approx(0.2)  # sample standard deviation of 0.5, 0.7, 0.9
    assert row["n"] == 3
    assert metric_key("fine", "mMP@5") == "fine/mMP_at_5"


def test_bench_runs_resumes_and_keeps_the_table(grocery_root: Path, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, models=[SMALL_MODEL, {**SMALL_MODEL, "pretrained": False,
                                                                  "alias": "lite0-64-random"}]))
    run_dir = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop(cell: Cell) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_bench(config, run_dir, progress=False, on_cell=stop)
    assert len(list((run_dir / "cells").glob("*.json"))) == 1
    resumed = run_bench(config, run_dir, progress=False)
    assert len(resumed.reused) == 1 and len(resumed.computed) == 1
    first_table = read_table(run_dir)
    again = run_bench(config, run_dir, progress=False)
    assert again.computed == [] and len(again.reused) == 2
    pd.testing.assert_frame_equal(read_table(run_dir), first_table)

    table = first_table.set_index(["model", "protocol", "metric"])["mean"]
    assert set(first_table["protocol"]) == {"fine", "coarse", "iconic", "cost"}
    assert table[("lite0-64", "cost", "gflops_per_image")] > 0 and table[("lite0-64", "cost", "embed_dim")] == 1280
    assert set(first_table.columns) >= {"model", "dataset", "protocol", "strategy", "metric", "mean", "std", "n"}
    for protocol in ("fine", "coarse", "iconic"):
        assert protocol == "iconic" or table[("lite0-64", protocol, "index_recall@20")] == 1.0
        # real ImageNet features beat random weights on every protocol
        assert table[("lite0-64", protocol, "mMP@5")] > table[("lite0-64-random", protocol, "mMP@5")]
    assert (run_dir / "results.parquet").is_file() and (run_dir / "provenance.json").is_file()

    # every cell keeps the same seeded example queries with their top 5, for the report's retrieval grids
    cells = [CellResult.from_json(path.read_text()) for path in sorted((run_dir / "cells").glob("*.json"))]
    examples = [cell.details["fine"]["examples"] for cell in cells]
    assert [e["query"] for e in examples[0]] == [e["query"] for e in examples[1]]
    assert len(examples[0]) == 8 and all(len(e["neighbours"]) == 5 for e in examples[0])
    for example in examples[0]:
        assert Path(example["query_path"]).is_file()
        scores = [n["score"] for n in example["neighbours"]]
        assert scores == sorted(scores, reverse=True)
        assert all(n["relevant"] == (n["key"] == example["query_key"]) for n in example["neighbours"])


def test_a_failing_cell_records_its_error_and_the_run_goes_on(grocery_root: Path, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, models=[{"name": "vit_b16"}, SMALL_MODEL]))  # vit_b16: no weights offline
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == ["vit_b16__grocery-store__pretrained"]  # deterministic: one cell, no seed
    assert summary.computed == ["lite0-64__grocery-store__pretrained"]
    failed = CellResult.from_json((tmp_path / "run" / "cells" / f"{summary.failed[0]}.json").read_text())
    assert failed.status == "error" and "Cannot load weights" in (failed.error or "")
    assert set(read_table(tmp_path / "run")["model"]) == {"lite0-64"}


def test_milvus_lite_backend_and_mlflow_tracking(grocery_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    config = load_config(_config(tmp_path, index={"backend": "milvus-lite", "type": "FLAT"},
                                 tracking={"enabled": True, "experiment": "bench-test"}))
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == [] and summary.tracking_uri and summary.tracking_uri.startswith("sqlite:///")
    table = read_table(tmp_path / "run").set_index(["protocol", "metric"])["mean"]
    assert table[("fine", "index_recall@20")] == 1.0  # FLAT is exact
    client = MlflowClient(tracking_uri=summary.tracking_uri)
    experiment = client.get_experiment_by_name("bench-test")
    runs = client.search_runs([experiment.experiment_id])
    cell_run = next(r for r in runs if r.data.tags.get("shelfsight.cell"))
    assert cell_run.data.params["index_backend"] == "milvus-lite"
    assert cell_run.data.params["dataset"] == "grocery-store"
    assert math.isclose(cell_run.data.metrics["fine/mMP_at_5"], table[("fine", "mMP@5")], rel_tol=1e-9)
    summary_run = next(r for r in runs if r.data.tags.get("shelfsight.summary"))
    artifacts = [a.path for a in client.list_artifacts(summary_run.info.run_id)]
    assert "results.csv" in artifacts
    assert (tmp_path / "run" / "mlflow-artifacts").is_dir() and not (tmp_path / "mlruns").exists()
    assert _collections(tmp_path / "run" / "milvus.db") == []  # each cell's collections are dropped once scored

    kept = load_config(_config(tmp_path, index={"backend": "milvus-lite", "type": "FLAT", "keep_collections": True}))
    assert run_bench(kept, tmp_path / "kept", progress=False).failed == []
    assert _collections(tmp_path / "kept" / "milvus.db") == [
        f"c_lite0_64__grocery_store__pretrained_{p}" for p in ("coarse", "fine", "iconic")]


def _collections(path: Path) -> list[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(str(path))
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


def test_leaderboard_marks_the_best_value(tmp_path: Path) -> None:
    rows = [
        {"model": m, "family": "supervised", "dataset": "d", "protocol": "p", "strategy": "pretrained",
         "metric": metric, "mean": value, "std": 0.0, "n": 1}
        for m, values in {"a": (0.9, 0.2), "b": (0.5, 0.8)}.items()
        for metric, value in zip(("mMP@5", "R@1"), values, strict=True)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    markdown = print_leaderboard(tmp_path).read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert lines[0] == "| a | pretrained | **0.900** | 0.200 |"  # sorted by mMP@5, best bold
    assert lines[1] == "| b | pretrained | 0.500 | **0.800** |"


def test_strategies_side_by_side_with_costs(grocery_root: Path, tmp_path: Path) -> None:
    """pretrained, linear, knn and toptune cells on one small real subset, scored and costed."""
    from shelfsight.catalog import load_catalog

    toptune = {"trials": 2, "trial_epochs": 3, "trial_repeats": 1, "final_max_epochs": 30, "patience": 5}
    config = load_config(_config(tmp_path, strategies=["pretrained", "linear", "knn", "toptune"], toptune=toptune,
                                 datasets=[{"name": "grocery-store",
                                            "per_class": {"train": 6, "val": 2, "test": 3}}]))
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == []
    table = read_table(tmp_path / "run").set_index(["strategy", "protocol", "metric"])["mean"]
    n_classes = len(load_catalog("grocery-store", data_dir=grocery_root).classes)  # 81, or 6 on the fixture
    chance = 1 / n_classes
    for strategy in ("linear", "knn", "toptune"):
        assert table[(strategy, "classification", "accuracy")] > min(5 * chance, 0.5)  # 5/81; 1/2 for 6 classes
        assert 0 <= table[(strategy, "classification", "macro_f1")] <= 1
    assert ("pretrained", "classification", "accuracy") not in table.index
    assert table[("toptune", "cost", "trials_completed")] + table[("toptune", "cost", "trials_pruned")] == 2
    for path in (tmp_path / "run" / "cells").glob("*.json"):
        cell = CellResult.from_json(path.read_text())
        if cell.cell.strategy == "pretrained":
            continue
        confusion = cell.details["confusion"]
        matrix = confusion["matrix"]
        assert len(confusion["classes"]) == len(matrix) == n_classes
        accuracy = sum(matrix[i][i] for i in range(n_classes)) / sum(map(sum, matrix))
        assert accuracy == pytest.approx(table[(cell.cell.strategy, "classification", "accuracy")])
    assert table[("toptune", "cost", "tune_seconds")] > 0
    assert table[("toptune", "fine", "mMP@5")] > 0  # top-tuned embeddings are evaluated for retrieval
    head_dir = tmp_path / "run" / "work" / "lite0-64__grocery-store__toptune__seed0" / "head"
    assert head_dir.is_dir()
    markdown = print_leaderboard(tmp_path / "run").read_text()
    assert "## grocery-store · classification" in markdown and "## grocery-store · cost" in markdown
    assert "| lite0-64 | toptune |" in markdown


def test_classification_carves_a_seeded_stratified_validation_split(grocery_root: Path, tmp_path: Path) -> None:
    """A user catalogue with train and test only: 10% of each class of train becomes validation."""
    from shelfsight.bench.strategies import StrategyInputs, classification_data
    from shelfsight.catalog import load_catalog
    from shelfsight.embeddings import Embeddings

    grocery = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "test")).per_class(20)
    rows = [{"path": str(i.image_path), "label": i.label, "split": i.split} for i in grocery]
    manifest = tmp_path / "catalogue.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    catalog = load_catalog(str(manifest))
    vectors = __import__("numpy").random.default_rng(0).normal(size=(len(catalog), 4)).astype("float32")
    embeddings = Embeddings(ids=catalog.ids, vectors=vectors, skipped=[], key="k")

    def data(seed: int):  # type: ignore[no-untyped-def]
        return classification_data(StrategyInputs(
            dataset="catalogue", catalog=catalog, embeddings=embeddings, make_index=None,  # type: ignore[arg-type]
            collection_prefix="c", k=10, ks=(1,), seed=seed, workdir=tmp_path, sections={}))

    first, again, other = data(0), data(0), data(1)
    n_train = sum(1 for i in catalog if i.split == "train")
    assert len(first.y_train) + len(first.y_val) == n_train
    per_class = __import__("collections").Counter(i.label for i in catalog if i.split == "train")
    assert len(first.y_val) == sum(max(1, round(0.1 * n)) for n in per_class.values())  # 2 of 20, 1 of 12
    assert (first.x_val == again.x_val).all() and not (first.x_val == other.x_val).all()
    assert set(first.y_val.tolist()) == set(first.y_train.tolist())  # every class is represented
