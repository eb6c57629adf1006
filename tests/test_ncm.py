"""The nearest-class-mean strategy: hand-worked means, scikit-learn's NearestCentroid as the reference,
and a real bench cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestCentroid

from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.results import ResultStore
from shelfsight.bench.strategies import ncm


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_class_means_by_hand() -> None:
    vectors = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    means = ncm.class_means(vectors, np.array([0, 0, 1]), 3)
    assert means[0] == pytest.approx([2**-0.5, 2**-0.5]) and means[1].tolist() == [-1.0, 0.0]
    assert means[2].tolist() == [0.0, 0.0]  # a class with no photo never wins a positive similarity
    assert ncm.predict(means, np.array([[0.9, 0.1], [-1.0, 0.2]], dtype=np.float32)).tolist() == [0, 1]


def test_matches_scikit_learn_nearest_centroid_on_unit_vectors() -> None:
    """On unit vectors whose class means have equal norms, cosine to the normalised mean and Euclidean
    distance to the mean rank classes alike; checked on seeded clusters (equal spread per class)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(5, 16)))
    labels = np.repeat(np.arange(5), 40)
    train = _unit(centres[labels] + 0.3 * rng.normal(size=(200, 16)))
    test = _unit(centres[np.repeat(np.arange(5), 10)] + 0.3 * rng.normal(size=(50, 16)))
    ours = ncm.predict(ncm.class_means(train, labels, 5), test)
    reference = NearestCentroid(metric="euclidean").fit(train, labels).predict(test)
    assert (ours == reference).mean() >= 0.98


def test_ncm_cell_in_a_bench(grocery_root: Path, tmp_path: Path) -> None:
    config = load_config({
        "name": "ncm", "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}],
        "datasets": [{"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}],
        "strategies": ["ncm", "knn"], "index": {"backend": "exact"}, "embedding": {"num_workers": 0},
        "tracking": {"enabled": False}, "stats": {"bootstrap": 100, "permutations": 200},
    })
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == [] and summary.computed == ["a__grocery-store__ncm", "a__grocery-store__knn"]
    table = read_table(tmp_path / "run").set_index(["strategy", "protocol", "metric"])
    row = table.loc[("ncm", "classification", "accuracy")]
    assert row["n"] == 1 and row["repeats"] == "deterministic"  # nothing random: one run
    [cell] = [r for r in ResultStore(tmp_path / "run").load_all() if r.cell.strategy == "ncm"]
    chance = 1 / cell.details["classes"]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["mean"] > 3 * chance
    assert cell.details["train"] == 3 * cell.details["classes"]  # the train split (3 per class), validation not in
