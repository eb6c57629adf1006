"""Fine-tuning and cross-tuning in the bench: strategy filters, the cell plan, a Fashion-MNIST <-> Grocery Store
cross-tuning matrix of top-tuned heads, and fine-tuned backbones carried across datasets, on small real subsets."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import FASHION_DEBIAN
from shelfsight.bench import ConfigError, load_config, plan_cells, print_leaderboard, read_table, run_bench
from shelfsight.bench.results import Cell, CellResult
from shelfsight.catalog.fashion_mnist import read_idx

SMALL_MODEL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0-64"}
GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
FASHION = {"name": "fashion-mnist", "per_class": {"train": 20, "test": 5}}
TOPTUNE = {"trials": 2, "trial_epochs": 3, "trial_repeats": 1, "final_max_epochs": 20, "patience": 5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def data_root(grocery_root: Path, tmp_path: Path) -> Path:
    """The real Grocery Store Dataset beside the first 400 / 100 real Fashion-MNIST images (its Debian files)."""
    if not (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    root = tmp_path / "data"
    (root / "fashion-mnist").mkdir(parents=True)
    (root / "grocery-store").symlink_to(grocery_root / "grocery-store")
    for prefix, n in (("train", 400), ("t10k", 100)):
        for kind in ("images-idx3", "labels-idx1"):
            array = read_idx(FASHION_DEBIAN / f"{prefix}-{kind}-ubyte.gz")[:n]
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / "fashion-mnist" / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.astype(np.uint8).tobytes())
    return root


def _config(data_root: Path | None, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "cross", "models": [SMALL_MODEL], "datasets": [GROCERY, FASHION], "toptune": TOPTUNE,
        "index": {"backend": "exact"}, "retrieval": {"k": 20}, "embedding": {"num_workers": 0},
        "tracking": {"enabled": False}, "data_dir": str(data_root) if data_root else None,
        "finetune": {"epochs": 1, "batch_size": 8, "num_workers": 0},
    }
    config.update(overrides)
    return config


def _cells(run_dir: Path) -> dict[str, CellResult]:
    results = [CellResult.from_json(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    return {f"{r.cell.dataset}/{r.cell.strategy}": r for r in results}


def test_strategy_entries_filters_and_the_cell_plan() -> None:
    models = ["efficientnet_lite0", "efficientnet_lite2"]
    strategies = ["pretrained", "toptune", {"name": "finetune", "models": ["efficientnet_lite0"],
                                            "datasets": ["grocery-store"]}, "crosstune"]
    config = load_config(_config(None, models=models, datasets=["grocery-store", "fashion-mnist"],
                                 strategies=strategies, repeats=2))
    plan = [(c.model, c.dataset, c.strategy, c.seed) for c, _, _ in plan_cells(config)]
    # pretrained is deterministic: one cell; the tuned strategies run once per seed
    assert plan[:5] == [("efficientnet_lite0", "grocery-store", "pretrained", None)] + [
        ("efficientnet_lite0", "grocery-store", s, seed) for s in ("toptune", "finetune") for seed in (0, 1)]
    assert ("efficientnet_lite2", "grocery-store", "finetune", 0) not in plan
    crossed = [cell for cell in plan if "@" in cell[2]]
    assert plan[-len(crossed):] == crossed  # after every cell that produces what they carry across
    assert {(m, d, s) for m, d, s, _ in crossed} == {
        ("efficientnet_lite0", "grocery-store", "toptune@fashion-mnist"),
        ("efficientnet_lite2", "grocery-store", "toptune@fashion-mnist"),
        ("efficientnet_lite0", "fashion-mnist", "toptune@grocery-store"),
        ("efficientnet_lite0", "fashion-mnist", "finetune@grocery-store"),  # finetune ran on the source
        ("efficientnet_lite2", "fashion-mnist", "toptune@grocery-store"),
    }
    only = load_config(_config(None, datasets=["grocery-store", "fashion-mnist"],
                               strategies=[{"name": "crosstune", "tuned": ["finetune"], "sources": ["grocery-store"]}]))
    assert [c.strategy for c, _, _ in plan_cells(only)] == ["finetune@grocery-store"]

    with pytest.raises(ConfigError, match=r"strategies\.0\.models: 'resnet50' is not among the config's models"):
        load_config(_config(None, strategies=[{"name": "finetune", "models": ["resnet50"]}]))
    with pytest.raises(ConfigError, match="'tuned' and 'sources' apply to crosstune only"):
        load_config(_config(None, strategies=[{"name": "toptune", "tuned": ["toptune"]}]))
    with pytest.raises(ConfigError, match="unknown strategy 'finetuning'"):
        load_config(_config(None, strategies=["finetuning"]))
    with pytest.raises(ConfigError, match="finetune: Value error, set the seed with the top-level"):
        load_config(_config(None, finetune={"seed": 3}))
    with pytest.raises(ConfigError, match=r"finetune\.epocs: Unexpected keyword argument"):
        load_config(_config(None, finetune={"epocs": 3}))


def test_crosstune_matrix_of_top_tuned_heads(data_root: Path, tmp_path: Path) -> None:
    """Fashion-MNIST <-> Grocery Store: each dataset's head evaluated on the other, beside the diagonal."""
    run_dir = tmp_path / "run"
    seen: list[str] = []
    config = load_config(_config(data_root, strategies=["pretrained", "toptune", "crosstune"]))
    summary = run_bench(config, run_dir, progress=False, on_cell=lambda cell: seen.append(cell.strategy))
    assert summary.failed == []
    assert seen[-2:] == ["toptune@fashion-mnist", "toptune@grocery-store"]
    cells = _cells(run_dir)
    for evaluated, source in (("grocery-store", "fashion-mnist"), ("fashion-mnist", "grocery-store")):
        crossed, producer = cells[f"{evaluated}/toptune@{source}"], cells[f"{source}/toptune"]
        assert crossed.details["source_dataset"] == source and crossed.details["tuned"] == "toptune"
        assert crossed.details["source"] == producer.details["head"]  # the source cell's head, reused
        assert crossed.costs["tune_seconds"] == producer.costs["tune_seconds"]
        assert crossed.costs["embed_dim"] == producer.details["best_params"]["width"]
        assert "classification" not in crossed.metrics
    table = read_table(run_dir).set_index(["dataset", "protocol", "strategy", "metric"])["mean"]
    for protocol in ("fine", "coarse", "iconic"):
        assert 0 < table[("grocery-store", protocol, "toptune@fashion-mnist", "mMP@5")] <= 1
    assert 0 < table[("fashion-mnist", "category", "toptune@grocery-store", "mMP@5")] <= 1
    # a head tuned on clothing thumbnails helps grocery photos less than one tuned on grocery photos
    assert (table[("grocery-store", "fine", "toptune", "mMP@5")]
            > table[("grocery-store", "fine", "toptune@fashion-mnist", "mMP@5")])
    again = run_bench(config, run_dir, progress=False)
    assert again.computed == [] and len(again.reused) == 6

    # a changed top-tuning budget recomputes the toptune cells and the cross-tuning cells that carry their
    # heads across, and nothing else
    changed = load_config(_config(data_root, strategies=["pretrained", "toptune", "crosstune"],
                                  toptune={**TOPTUNE, "trials": 3}))
    rerun = run_bench(changed, run_dir, progress=False)
    assert sorted(rerun.computed) == sorted(f"lite0-64__{d}__{s}__seed0" for d, s in (
        ("grocery-store", "toptune"), ("fashion-mnist", "toptune"), ("grocery-store", "toptune-fashion-mnist"),
        ("fashion-mnist", "toptune-grocery-store")))
    assert rerun.reasons["lite0-64__grocery-store__toptune-fashion-mnist__seed0"].startswith(
        "inputs changed: strategy.source")

    # without the diagonal cells, cross-tuning trains the source heads itself, where those cells would
    alone = load_config(_config(data_root, strategies=["crosstune"]))
    summary = run_bench(alone, tmp_path / "alone", progress=False)
    assert sorted(summary.computed) == ["lite0-64__fashion-mnist__toptune-grocery-store__seed0",
                                        "lite0-64__grocery-store__toptune-fashion-mnist__seed0"]
    assert (tmp_path / "alone" / "work" / "lite0-64__fashion-mnist__toptune__seed0" / "head" / "head.json").is_file()


def test_finetune_cells_and_a_finetuned_backbone_carried_across(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    strategies = ["pretrained", {"name": "finetune", "datasets": ["grocery-store"]},
                  {"name": "crosstune", "tuned": ["finetune"], "sources": ["grocery-store"]}]
    config = load_config(_config(data_root, strategies=strategies))
    summary = run_bench(config, run_dir, progress=False)
    assert summary.failed == []
    assert sorted(summary.computed) == sorted(
        ["lite0-64__grocery-store__pretrained", "lite0-64__fashion-mnist__pretrained"]
        + [f"lite0-64__{d}__{s}__seed0" for d, s in (("grocery-store", "finetune"),
                                                    ("fashion-mnist", "finetune-grocery-store"))])
    cells = _cells(run_dir)
    tuned, pretrained = cells["grocery-store/finetune"], cells["grocery-store/pretrained"]
    assert tuned.details["embedding_key"] != pretrained.details["embedding_key"]
    assert tuned.costs["epochs"] == 1 and tuned.costs["train_images_per_s"] > 0 and tuned.costs["tune_seconds"] > 0
    assert tuned.details["device"] == "cpu" and tuned.costs["embed_dim"] == 1280
    assert tuned.details["backbone"].startswith("efficientnet_lite0@finetune:")
    matrix = tuned.details["confusion"]["matrix"]
    accuracy = sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix))
    from shelfsight.catalog import load_catalog

    n_classes = len(load_catalog("grocery-store", data_dir=data_root).classes)  # 81, or 6 on the fixture
    assert len(matrix) == n_classes
    assert accuracy == pytest.approx(tuned.metrics["classification"]["accuracy"])
    assert accuracy > min(5 / n_classes, 0.5), accuracy  # 5 x chance; half right for the fixture's 6 classes
    carried = cells["fashion-mnist/finetune@grocery-store"]
    folder = Path(tuned.details["finetuned"])
    assert carried.details["source"] == str(folder) and carried.details["tuned"] == "finetune"
    assert carried.costs["tune_seconds"] == tuned.costs["tune_seconds"] and "classification" not in carried.metrics
    assert 0 < carried.metrics["category"]["mMP@5"] <= 1

    markdown = print_leaderboard(run_dir).read_text()
    assert "## grocery-store · overview: quality beside training cost" in markdown
    lines = markdown.splitlines()
    header = lines[lines.index("## grocery-store · overview: quality beside training cost") + 2]
    assert header.split(" | ")[2:] == ["coarse mMP@5", "fine mMP@5", "iconic mMP@5", "accuracy", "tune_seconds",
                                       "epochs", "train_images_per_s", "extract_images_per_s |"]
    assert any(line.startswith("| lite0-64 | finetune | ") for line in markdown.splitlines())

    # a lost cell file is recomputed from the saved backbone, without training again
    stamp = (folder / "finetuned.json").stat().st_mtime_ns
    (run_dir / "cells" / f"{Cell('lite0-64', 'grocery-store', 'finetune', 0).cell_id}.json").unlink()
    again = run_bench(config, run_dir, progress=False)
    assert again.computed == ["lite0-64__grocery-store__finetune__seed0"]
    assert (folder / "finetuned.json").stat().st_mtime_ns == stamp
    assert _cells(run_dir)["grocery-store/finetune"].metrics == tuned.metrics
