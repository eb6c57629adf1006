"""Every recommended head servable (issue 27): the linear probe and the class means saved by their cells as heads
that `shelfsight index --head` takes and the service tags with, checked against scikit-learn's ``predict_proba``;
ties going to the cheaper model; and the commands the report prints for the choice, run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import typer
from rich.console import Console
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression

from conftest import FIXTURES
from shelfsight.adapt import (
    LinearHead,
    labelled_splits,
    load_linear_head,
    logistic_head,
    ncm_head,
    save_linear_head,
)
from shelfsight.backbones import load_backbone
from shelfsight.bench import load_config, run_bench
from shelfsight.bench.results import Cell, CellResult, ResultStore
from shelfsight.bench.strategies import ncm
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.cli import app as cli_app
from shelfsight.demo import print_serving_commands
from shelfsight.embeddings import embed_catalog
from shelfsight.report import RunData, load_run, recommend
from shelfsight.report.guidance import serving_commands
from shelfsight.report.recommend import AUTO_TAGGING, Choice, PairedTest, answer, describe
from shelfsight.serve import IndexLayout, ServeError, ServeSettings, build_index, create_app, serve_in_thread
from shelfsight.serve.manifest import read_manifest

MODEL = "efficientnet_lite0"
PREPROCESS = {"input_size": 64}
PER_CLASS = {"train": 4, "val": 2, "test": 2}
LOCAL = "http://localhost"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clusters(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around ``n_classes`` centres: train, their labels, and test vectors."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_classes, 24)))
    labels = np.repeat(np.arange(n_classes), 30)
    train = _unit(centres[labels] + 0.5 * rng.normal(size=(len(labels), 24)))
    test = _unit(centres[rng.integers(0, n_classes, 40)] + 0.5 * rng.normal(size=(40, 24)))
    return train, labels, test


@pytest.mark.parametrize("n_classes", [2, 5])
def test_a_saved_linear_probe_gives_predict_proba(n_classes: int, tmp_path: Path) -> None:
    """Multinomial and binary (one decision score): the head read back from disk answers scikit-learn's
    ``predict_proba`` and ``predict``, class names in the model's own order."""
    train, labels, test = _clusters(n_classes)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(train, labels)
    names = [f"class-{i}" for i in range(n_classes)]
    head = load_linear_head(save_linear_head(tmp_path / "head", logistic_head(model, names, {"C": 10.0})))
    assert head.kind == "linear" and head.classes == tuple(names) and head.in_dim == 24
    np.testing.assert_allclose(head.probabilities(test), model.predict_proba(test), rtol=0, atol=1e-12)
    assert (head.probabilities(test).argmax(axis=1) == model.predict(test)).all()


def test_a_probe_that_saw_some_classes_names_them() -> None:
    """Labels are indices into the dataset's classes; a probe that never saw class 1 has 2 outputs, named 0 and 2."""
    train, labels, test = _clusters(3)
    seen = labels != 1
    model = LogisticRegression(max_iter=1000).fit(train[seen], labels[seen])
    head = logistic_head(model, ["a", "b", "c"], {})
    assert head.classes == ("a", "c")
    np.testing.assert_allclose(head.probabilities(test), model.predict_proba(test), atol=1e-12)


def test_ncm_head_predicts_as_ncm_with_the_likeliest_scale(tmp_path: Path) -> None:
    """The class means as a cosine head: the same class as ``ncm.predict``; its scale minimises the training
    photos' negative log-likelihood (checked against a fine grid)."""
    train, labels, test = _clusters(4, seed=1)
    means = ncm.class_means(train.astype(np.float32), labels, 4)
    head = load_linear_head(save_linear_head(tmp_path / "head", ncm_head(means, list("wxyz"), train, labels)))
    assert head.kind == "ncm" and (head.probabilities(test).argmax(axis=1) == ncm.predict(means, test)).all()
    cosines = train @ means.T.astype(np.float64)
    grid = np.linspace(1.0, 200.0, 19901)
    nll = [-log_softmax(s * cosines, axis=1)[np.arange(len(labels)), labels].mean() for s in grid]
    assert head.scale == pytest.approx(grid[int(np.argmin(nll))], abs=0.02)
    assert 1.0 < head.scale < 200.0  # inside the bounds: a real optimum, not a clipped one


def test_a_linear_head_tags_but_stores_no_vectors() -> None:
    head = LinearHead("linear", np.eye(2), np.zeros(2), ("a", "b"))
    # the input is L2-normalised, so scaling a photo's vector changes nothing
    np.testing.assert_allclose(head.probabilities(np.array([[3.0, 4.0]])), head.probabilities(np.array([[.6, .8]])))
    with pytest.raises(ValueError, match="weight"):
        LinearHead("linear", np.eye(2), np.zeros(3), ("a", "b"))


# ---------------------------------------------------------------- a real run, indexed and served


def _bench_catalogue(root: Path) -> Catalog:
    """The run's catalogue: at most PER_CLASS items per class in each split (as the bench's ``per_class``)."""
    catalog = load_catalog("grocery-store", data_dir=root)
    keep: list[str] = []
    for split in catalog.splits:
        part = catalog.select_splits(split)
        keep.extend((part.per_class(PER_CLASS[split]) if split in PER_CLASS else part).ids)
    return catalog.subset(keep)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pretrained, linear and ncm cells on the committed six-class fixture (always it: the printed `index` command
    indexes the whole catalogue, which must stay small)."""
    run_dir = tmp_path_factory.mktemp("servable") / "run"
    config = load_config({
        "name": "servable", "data_dir": str(FIXTURES), "models": [{"name": MODEL, "preprocess": PREPROCESS}],
        "datasets": [{"name": "grocery-store", "per_class": PER_CLASS}],
        "strategies": ["pretrained", "linear", "ncm"], "index": {"backend": "exact"}, "embedding": {"num_workers": 0},
        "tracking": {"enabled": False}, "stats": {"bootstrap": 100, "permutations": 200},
    })
    summary = run_bench(config, run_dir, progress=False)
    assert summary.failed == []
    return run_dir


def _reference_probe(root: Path, c: float) -> tuple[LogisticRegression, list[str], Catalog, dict[str, np.ndarray]]:
    """scikit-learn's logistic regression refitted on the cell's training photos (the same split and C)."""
    catalog = _bench_catalogue(root)
    embedded = embed_catalog(catalog, load_backbone(MODEL, preprocess=PREPROCESS), num_workers=0, progress=False)
    vectors = dict(zip(embedded.ids, embedded.vectors, strict=True))
    labelled = labelled_splits("grocery-store", catalog, 0, ids=embedded.ids)
    x_train = np.stack([vectors[item.item_id] for item in labelled.train])
    model = LogisticRegression(C=c, max_iter=1000, random_state=0).fit(x_train, labelled.y_train)
    return model, list(labelled.classes), catalog, vectors


def test_the_linear_cell_head_is_served_with_predict_proba(tiny_run: Path, tmp_path: Path) -> None:
    cells = {r.cell.strategy: r for r in ResultStore(tiny_run).load_all()}
    head_dir = tiny_run / "work" / cells["linear"].cell.cell_id / "head"
    assert Path(cells["linear"].details["head"]) == head_dir
    assert (head_dir / "head.json").is_file() and (head_dir / "head.safetensors").is_file()
    assert (tiny_run / "work" / cells["ncm"].cell.cell_id / "head" / "head.json").is_file()

    model, classes, catalog, vectors = _reference_probe(FIXTURES, float(cells["linear"].details["C"]))
    with pytest.raises(ServeError, match="tags but has no embedding"):
        build_index(MODEL, catalog, tmp_path / "refused", head=head_dir, vectors="head", preprocess=PREPROCESS,
                    progress=False, export_onnx=False)
    report = build_index(MODEL, catalog, tmp_path / "index", head=head_dir, preprocess=PREPROCESS, progress=False,
                         export_onnx=False)
    assert report.vectors == "backbone" and report.added == len(catalog)
    photo = next(item for item in catalog if item.split == "test")
    expected = model.predict_proba(vectors[photo.item_id][None, :])[0]
    settings = ServeSettings(index_dir=tmp_path / "index", encoder="torch")
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as http:
        answer = http.post("/tag", files={"image": ("q.jpg", photo.image_path.read_bytes(), "image/jpeg")},
                           data={"top": str(len(classes))}, headers={"Host": "localhost"})
        health = http.get("/health", headers={"Host": "localhost"}).json()
    assert answer.status_code == 200, answer.text
    tags = {t["label"]: t["probability"] for t in answer.json()["tags"]}
    assert health["tagging"] is True and sorted(tags) == sorted(classes)
    best = classes[int(model.classes_[expected.argmax()])]
    assert max(tags, key=lambda label: tags[label]) == best
    for label_index, probability in zip(model.classes_, expected, strict=True):
        assert tags[classes[int(label_index)]] == pytest.approx(probability, abs=1e-4)  # measured: under 2e-7


# ---------------------------------------------------------------- a tie goes to the cheaper model


def _tagging_table(costs: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """Classification accuracy of three cells (the issue's numbers) and each model's (images/s, M parameters)."""
    accuracy = {("lite2", "linear"): 0.807, ("lite0", "linear"): 0.806, ("lite0", "knn"): 0.700}
    rows: list[dict[str, Any]] = []
    for (model, strategy), value in accuracy.items():
        base = {"model": model, "family": "supervised", "dataset": "shop", "strategy": strategy, "std": 0.0, "n": 1}
        rows.append({**base, "protocol": "classification", "metric": "accuracy", "mean": value})
        rate, params = costs[model]
        rows += [{**base, "protocol": "cost", "metric": "extract_images_per_s", "mean": rate},
                 {**base, "protocol": "cost", "metric": "params_m", "mean": params},
                 {**base, "protocol": "cost", "metric": "index_bytes", "mean": 4e6}]
    return pd.DataFrame(rows)


class _Tests:
    """Paired tests with a known answer (every pair significant but the tied ones), recording what is asked."""

    def __init__(self, *tied: tuple[str, str]) -> None:
        self.tied = [set(pair) for pair in tied]
        self.asked: list[tuple[str, str]] = []

    def __call__(self, dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest:
        self.asked.append((a.label, b.label))
        difference, same = a.mean - b.mean, {a.label, b.label} in self.tied
        return PairedTest(difference, difference - 0.01, difference + 0.01, 0.94 if same else 0.001,
                          0.94 if same else 0.003, not same, "stub")


def test_a_tie_goes_to_the_faster_model_and_says_why() -> None:
    tests = _Tests(("lite2 · linear", "lite0 · linear"))
    recs = recommend(_tagging_table({"lite2": (42.0, 6.1), "lite0": (98.0, 4.7)}), tests)
    rec = recs.get(AUTO_TAGGING, "shop", "head only")
    assert rec.best is not None and rec.best.label == "lite0 · linear"
    assert rec.passed_over is not None and rec.passed_over.label == "lite2 · linear"
    assert rec.test is not None and rec.test.p_value == 0.94 and rec.decisive is False
    assert ("lite2 · linear (supervised)" not in describe(rec) and
            "tied with lite2 · linear 0.807 (difference +0.001, 95% CI -0.009 to +0.011, p=0.94 (Holm 0.94)): the "
            "cheaper is recommended, 98 images/s against 42 images/s" in describe(rec))
    assert "on shop, lite0 · linear (classification accuracy 0.806, tied with lite2 · linear 0.807 (p=0.94, Holm " \
        "0.94): the cheaper is recommended, 98 images/s against 42 images/s" in answer(recs, AUTO_TAGGING)
    assert ("lite2 · linear", "lite0 · linear") in tests.asked  # the pair is in the run's family
    # no training: the kNN vote is the only candidate, nothing to tie with
    assert recs.get(AUTO_TAGGING, "shop", "no training").best.label == "lite0 · knn"  # type: ignore[union-attr]


def test_a_significant_lead_or_a_dearer_runner_up_keeps_the_best() -> None:
    costs = {"lite2": (42.0, 6.1), "lite0": (98.0, 4.7)}
    rec = recommend(_tagging_table(costs), _Tests()).get(AUTO_TAGGING, "shop", "head only")
    assert rec.best.label == "lite2 · linear" and rec.passed_over is None and rec.decisive is True  # type: ignore[union-attr]
    dearer = {"lite2": (98.0, 4.7), "lite0": (42.0, 6.1)}  # now the runner-up is the slower one
    tests = _Tests(("lite2 · linear", "lite0 · linear"))
    rec = recommend(_tagging_table(dearer), tests).get(AUTO_TAGGING, "shop", "head only")
    assert rec.best.label == "lite2 · linear" and rec.passed_over is None and rec.decisive is False  # type: ignore[union-attr]
    assert "tied within noise with lite0 · linear" in describe(rec)


def test_a_tie_between_tiers_goes_to_the_one_that_needs_no_training() -> None:
    """Same backbone, so same rate and parameters: a tuned head's smaller index must not make it the cheaper."""
    rows: list[dict[str, Any]] = []
    for strategy, value, index in (("linear", 0.807, 1e6), ("knn", 0.806, 4e6)):
        base = {"model": "lite0", "family": "supervised", "dataset": "shop", "strategy": strategy, "std": 0.0, "n": 1}
        rows += [{**base, "protocol": "classification", "metric": "accuracy", "mean": value},
                 {**base, "protocol": "cost", "metric": "extract_images_per_s", "mean": 98.0},
                 {**base, "protocol": "cost", "metric": "params_m", "mean": 4.7},
                 {**base, "protocol": "cost", "metric": "index_bytes", "mean": index}]
    rec = recommend(pd.DataFrame(rows), _Tests(("lite0 · linear", "lite0 · knn"))).get(AUTO_TAGGING, "shop",
                                                                                      "head only")
    assert rec.best is not None and rec.best.label == "lite0 · knn"
    assert "the cheaper is recommended, no training against head only" in describe(rec)
    flipped = pd.DataFrame([{**row, "mean": {0.807: 0.806, 0.806: 0.807}.get(row["mean"], row["mean"])}
                            for row in rows])  # now the untrained cell leads: the tuned one is never "cheaper"
    rec = recommend(flipped, _Tests(("lite0 · linear", "lite0 · knn"))).get(AUTO_TAGGING, "shop", "head only")
    assert rec.best is not None and rec.best.label == "lite0 · knn" and rec.passed_over is None


def test_within_a_tier_a_shorter_training_beats_a_smaller_index() -> None:
    """The run on a grocery catalogue with shoots: top-tuning (12 s, a 1,024-d index) tied with the linear probe
    (0.6 s, 1,280-d) on the same backbone; the probe is the cheaper, whichever leads."""
    def table(linear: float, toptune: float) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for strategy, value, tune, index in (("linear", linear, 0.64, 7.0e6), ("toptune", toptune, 12.3, 5.6e6)):
            base = {"model": "lite0", "family": "supervised", "dataset": "shop", "strategy": strategy, "std": 0.0,
                    "n": 1}
            rows += [{**base, "protocol": "classification", "metric": "accuracy", "mean": value},
                     *({**base, "protocol": "cost", "metric": name, "mean": cost} for name, cost in (
                         ("extract_images_per_s", 80.0), ("params_m", 3.4), ("tune_seconds", tune),
                         ("index_bytes", index)))]
        return pd.DataFrame(rows)

    tied = _Tests(("lite0 · linear", "lite0 · toptune"))
    rec = recommend(table(0.973, 0.956), tied).get(AUTO_TAGGING, "shop", "head only")
    assert rec.best is not None and rec.best.label == "lite0 · linear" and rec.passed_over is None
    rec = recommend(table(0.956, 0.973), tied).get(AUTO_TAGGING, "shop", "head only")
    assert rec.best is not None and rec.best.label == "lite0 · linear"
    assert "the cheaper is recommended, tuning 0.64 s against tuning 12 s" in describe(rec)


def test_rates_within_ten_percent_leave_it_to_the_parameters() -> None:
    """100 against 95 images/s is measurement noise: the smaller model is the cheaper."""
    tests = _Tests(("lite2 · linear", "lite0 · linear"))
    rec = recommend(_tagging_table({"lite2": (100.0, 6.1), "lite0": (95.0, 4.7)}), tests).get(
        AUTO_TAGGING, "shop", "head only")
    assert rec.best is not None and rec.best.label == "lite0 · linear"
    assert "the cheaper is recommended, 4.7 M parameters against 6.1 M parameters" in describe(rec)


# ---------------------------------------------------------------- the commands for the choice, run


def test_two_backbones_get_two_indexes_with_their_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Search by ``b · toptune`` (its head's vectors), tagging by ``a · linear``: one index each, each with its
    cell's head; a user catalogue's relative paths made absolute; a kNN tagger has no head to serve."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop.csv").write_text("image,label\n")
    (tmp_path / "photos").mkdir()
    rows = [{"model": m, "family": "supervised", "dataset": "shop", "protocol": p, "strategy": st, "metric": me,
             "mean": v, "std": 0.0, "n": 1} for m, st, p, me, v in (
        ("b", "toptune", "test-train", "mMP@5", 0.80), ("a", "pretrained", "test-train", "mMP@5", 0.70),
        ("a", "linear", "classification", "accuracy", 0.90), ("b", "knn", "classification", "accuracy", 0.60))]
    cells = []
    for model, strategy, seed in (("b", "toptune", 0), ("a", "linear", None)):
        cell = Cell(model, "shop", strategy, seed)
        head = save_linear_head(tmp_path / "run" / "work" / cell.cell_id / "head",
                                LinearHead("linear", np.eye(2), np.zeros(2), ("x", "y")))
        cells.append(CellResult(cell, "ok", details={"head": str(head)}))
    config = {"models": [{"name": "efficientnet_lite2", "alias": "b"}, {"name": "efficientnet_lite0", "alias": "a",
                                                                        "weights": "lite0.pth"}],
              "datasets": [{"name": "shop", "source": "shop.csv", "image_root": "photos"}]}
    run = RunData(Path("run"), pd.DataFrame(rows), tuple(cells), config, {})
    search, tagging = serving_commands(run, recommend(run.table))
    root = tmp_path.resolve()
    catalogue = f"--catalog {root / 'shop.csv'} --image-root {root / 'photos'}"
    assert (search.serves, tagging.serves) == ("visual search", "auto-tagging")
    assert search.index == (f"shelfsight index --model efficientnet_lite2 {catalogue} --index-dir "
                            f"{root / 'run/index/shop-search'} --head {root / 'run/work/b__shop__toptune__seed0/head'} "
                            "--vectors head")
    assert tagging.index == (f"shelfsight index --model efficientnet_lite0 --weights lite0.pth {catalogue} "
                             f"--index-dir {root / 'run/index/shop-tagging'} "
                             f"--head {root / 'run/work/a__shop__linear/head'}")
    assert search.serve.endswith("--port 8000") and tagging.serve.endswith("--port 8001")
    knn_only = run.table[run.table["strategy"] != "linear"]
    [both] = serving_commands(run, recommend(knn_only))  # kNN tags from the search index: one is enough
    assert both.serves == "visual search and auto-tagging"
    assert both.index.startswith(search.index.split(" --index-dir")[0])
    assert both.index.endswith("--vectors head") and both.notes == (
        "kNN tagging has no head: its vote is the labels of `POST /search`'s nearest items",)



@pytest.mark.slow  # indexes the whole fixture at the model's own input size in a subprocess, ONNX export included
def test_the_printed_commands_index_and_serve_the_choice(tiny_run: Path) -> None:
    """The report's commands (one index: the pre-trained search vectors with the tagging cell's head), run as
    printed; the `serve` line parses as `shelfsight serve`'s options; the console prints them whole."""
    run = load_run(tiny_run)
    recs = recommend(run.table)
    [commands] = serving_commands(run, recs)
    tagging = recs.get(AUTO_TAGGING, "grocery-store", "any budget").best
    assert tagging is not None and tagging.strategy in ("linear", "ncm")
    head = (tiny_run / "work" / Cell(MODEL, "grocery-store", tagging.strategy).cell_id / "head").resolve()
    index = shlex.split(commands.index)
    option = dict(zip(index[2::2], index[3::2], strict=True))
    assert index[:2] == ["shelfsight", "index"] and commands.serves == "visual search and auto-tagging"
    assert option == {"--model": MODEL, "--catalog": "grocery-store", "--data-dir": str(FIXTURES),
                      "--index-dir": str(tiny_run.resolve() / "index" / "grocery-store"), "--head": str(head)}
    assert commands.notes == ("the run embedded with preprocessing {'input_size': 64}, which `index` has no option "
                              "for: the index embeds at the model's own, so its vectors (and a head's inputs) differ "
                              "from those measured",)
    assert commands.serve == f"shelfsight serve --index-dir {option['--index-dir']} --port 8000"

    done = subprocess.run([sys.executable, "-m", "shelfsight.cli", *index[1:]], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_manifest(IndexLayout.at(option["--index-dir"]))
    assert manifest.head == str(head) and manifest.vectors == "backbone"
    assert f"{len(load_catalog('grocery-store', data_dir=FIXTURES))} items in" in done.stdout
    serve = typer.main.get_command(cli_app)
    context = serve.make_context("shelfsight", shlex.split(commands.serve)[1:2])
    parsed = serve.get_command(context, "serve").make_context("serve", shlex.split(commands.serve)[2:])  # type: ignore[attr-defined]
    assert parsed.params["index_dir"] == Path(option["--index-dir"]) and parsed.params["port"] == 8000

    console = Console(record=True, width=80)
    print_serving_commands(tiny_run, recs, console)
    printed = console.export_text().splitlines()
    assert commands.index in printed and commands.serve in printed  # whole lines, not wrapped at 80 columns
