"""Top-tuning on synthetic embeddings: accuracy, early stopping, resumable search, determinism, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pytest
import torch

from shelfsight.adapt import (
    HeadConfig,
    MLPHead,
    TopTuneConfig,
    build_head_optimizer,
    embed_with_head,
    knn_classifier,
    linear_probe,
    load_head,
    predict,
    save_head,
    toptune,
    train_head,
)

PARAMS = {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 1e-5, "layers": 2, "width": 128, "dropout": 0.1,
          "norm": "batch", "activation": "relu"}
TINY: dict[str, Any] = {"trial_epochs": 2, "trial_repeats": 1, "final_max_epochs": 3, "patience": 2,
                        "widths": (32,), "layers": (2,)}


class Problem(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def clusters(n: int, centers: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centers), n)
    points = centers[labels] + rng.normal(scale=0.8, size=(n, centers.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def problem() -> Problem:
    """10 well separated Gaussian clusters in 64-d, L2-normalised like real embeddings."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64))
    return Problem(*clusters(1000, centers, rng), *clusters(300, centers, rng), *clusters(1000, centers, rng))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and spinning threads stall when the CPU is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_head_config_is_validated() -> None:
    with pytest.raises(ValueError, match="layers"):
        HeadConfig(layers=1)
    with pytest.raises(ValueError, match="norm"):
        HeadConfig(norm="group")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        HeadConfig(dropout=1.0)


def test_build_head_optimizer_builds_the_named_one() -> None:
    head = MLPHead(8, 3, HeadConfig(width=4))
    for name, kind in (("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)):
        optimizer = build_head_optimizer({"optimizer": name, "lr": 0.5, "weight_decay": 0.25}, head)
        assert type(optimizer) is kind
        assert optimizer.defaults["lr"] == 0.5 and optimizer.defaults["weight_decay"] == 0.25
    with pytest.raises(ValueError, match="unknown optimizer 'Lion'"):
        build_head_optimizer({"optimizer": "Lion"}, head)


def test_embed_is_the_penultimate_layer() -> None:
    head = MLPHead(16, 4, HeadConfig(layers=3, width=8, norm="layer", activation="gelu", dropout=0.3)).eval()
    x = torch.randn(5, 16)
    assert head.embed(x).shape == (5, 8)
    assert torch.equal(head(x), head.classifier(head.embed(x)))
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 4


def test_head_separates_clusters(problem: Problem) -> None:
    trained = train_head(problem.x_train, problem.y_train, problem.x_val, problem.y_val, PARAMS, epochs=30,
                         patience=10, seed=0)
    labels, probabilities = predict(trained.module, problem.x_test)
    assert (labels == problem.y_test).mean() >= 0.95
    assert probabilities.shape == (1000, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not trained.module.training


def test_early_stopping_keeps_the_best_validation_weights(problem: Problem) -> None:
    """Validation labels are noise, so validation accuracy stops improving within a few epochs."""
    noise = np.random.default_rng(1).integers(0, 10, len(problem.y_val))
    trained = train_head(problem.x_train, problem.y_train, problem.x_val, noise, PARAMS, epochs=200, patience=3,
                         seed=0)
    accuracies = [record.val_accuracy for record in trained.history]
    assert trained.stopped_early and trained.epochs_run < 200
    assert trained.epochs_run == trained.best_epoch + 3 + 1
    assert trained.best_val_accuracy == max(accuracies) == accuracies[trained.best_epoch]
    assert (predict(trained.module, problem.x_val)[0] == noise).mean() == pytest.approx(trained.best_val_accuracy)


def test_same_seed_same_results(problem: Problem) -> None:
    def run(seed: int) -> tuple[np.ndarray, list[float]]:
        trained = train_head(problem.x_train, problem.y_train, problem.x_val, problem.y_val, PARAMS, epochs=5,
                             patience=5, seed=seed)
        return predict(trained.module, problem.x_test)[1], [r.train_loss for r in trained.history]

    first, again, other = run(0), run(0), run(1)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not np.array_equal(first[0], other[0])


def test_toptune_is_reproducible(problem: Problem) -> None:
    config = TopTuneConfig(trials=3, **TINY)
    runs = [toptune(problem.x_train, problem.y_train, problem.x_val, problem.y_val, config=config, storage=None,
                    study_name="same", progress=False) for _ in range(2)]
    assert runs[0].best_params == runs[1].best_params
    assert np.array_equal(predict(runs[0].head, problem.x_test)[1], predict(runs[1].head, problem.x_test)[1])


def test_interrupted_study_resumes(problem: Problem, tmp_path: Path) -> None:
    storage = tmp_path / "search" / "study.db"
    data = (problem.x_train, problem.y_train, problem.x_val, problem.y_val)
    first = toptune(*data, config=TopTuneConfig(trials=3, **TINY), storage=storage,
                    study_name="resume", progress=False)
    assert first.trials_run == 3 and first.trials_completed == 3
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{storage}")
    kept = [(t.number, t.params, t.value) for t in study.trials]
    study.ask()  # a trial left RUNNING, as a killed process leaves it: it must not count as finished

    resumed = toptune(*data, config=TopTuneConfig(trials=5, **TINY), storage=storage,
                      study_name="resume", progress=False)
    assert resumed.trials_run == 2 and resumed.trials_completed + resumed.trials_pruned == 5
    trials = optuna.load_study(study_name="resume", storage=f"sqlite:///{storage}").trials
    assert [(t.number, t.params, t.value) for t in trials[:3]] == kept
    assert [t.state for t in trials].count(optuna.trial.TrialState.RUNNING) == 1
    assert all(t.params not in [k[1] for k in kept] for t in trials[4:])  # fresh draws, not replays

    again = toptune(*data, config=TopTuneConfig(trials=5, **TINY), storage=storage,
                    study_name="resume", progress=False)
    assert again.trials_run == 0


def test_save_load_round_trip(problem: Problem, tmp_path: Path) -> None:
    params = {**PARAMS, "layers": 3, "width": 32, "dropout": 0.3}
    trained = train_head(problem.x_train, problem.y_train, problem.x_val, problem.y_val, params, epochs=3,
                         patience=3, seed=0)
    classes = [f"class {i}" for i in range(10)]
    folder = save_head(tmp_path / "head", trained.module, classes, params, in_dim=64)
    assert (folder / "head.safetensors").is_file() and (folder / "head.json").is_file()
    head, loaded_classes, loaded_params = load_head(folder)
    x = torch.from_numpy(problem.x_test)
    with torch.no_grad():
        assert torch.equal(head(x), trained.module(x))
    assert loaded_classes == classes and loaded_params == params and head.config == trained.module.config


def test_embed_with_head_gives_unit_vectors(problem: Problem) -> None:
    trained = train_head(problem.x_train, problem.y_train, problem.x_val, problem.y_val, PARAMS, epochs=3,
                         patience=3, seed=0)
    vectors = embed_with_head(trained.module, problem.x_test)
    assert vectors.shape == (1000, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_baselines_separate_clusters(problem: Problem) -> None:
    probe = linear_probe(problem.x_train, problem.y_train, seed=0)
    knn = knn_classifier(problem.x_train, problem.y_train, k=5)
    assert (probe.predict(problem.x_test) == problem.y_test).mean() >= 0.95
    assert (knn.predict(problem.x_test) == problem.y_test).mean() >= 0.95
