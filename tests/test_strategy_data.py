"""Strategies learn only from the data they are entitled to: a label-budget cell from its N photos per class, a
``dedupe: exclude`` column from one set of queries for every cell, a compression from items other than the
queries it is scored on. Each checked in a real bench run against a computation in numpy / scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from shelfsight.bench import load_config, run_bench
from shelfsight.bench.config import BenchConfig
from shelfsight.bench.context import RunContext
from shelfsight.bench.evaluate import split_for
from shelfsight.bench.leakage import DEDUPE_FOLDER
from shelfsight.bench.results import CellResult, ResultStore
from shelfsight.bench.strategies.compress_scoring import protocol_fit_plan
from shelfsight.catalog import Catalog, load_catalog, protocols_for
from shelfsight.compress import CROSS_FIT, GALLERY, TRAIN_SPLIT, fit_plan
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol
from test_public_datasets import make_cars_car_ims

SMALL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}
GROCERY = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
QUIET = {"index": {"backend": "exact"}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
         "stats": {"bootstrap": 100, "permutations": 200}}


def _run(config: dict[str, Any], run_dir: Path) -> tuple[BenchConfig, dict[str, CellResult]]:
    loaded = load_config({**QUIET, **config})
    summary = run_bench(loaded, run_dir, progress=False)
    assert summary.failed == [], summary.failed
    return loaded, {r.cell.cell_id: r for r in ResultStore(run_dir).load_all()}


def _embedded(config: BenchConfig, run_dir: Path, label: str, dataset: str) -> tuple[Catalog, Embeddings]:
    """The catalogue and the vectors a cell of model ``label`` read (the run's own path: the cache answers)."""
    context = RunContext(config, run_dir)
    model = next(m for m in config.models if m.label == label)
    provision = context.provision
    catalog = provision.catalog(provision.dataset(dataset))
    return catalog, provision.embed(catalog, provision.backbone(model, config.seed), False)


def _rows(embeddings: Embeddings, ids: list[str]) -> np.ndarray:
    position = {item_id: row for row, item_id in enumerate(embeddings.ids)}
    return embeddings.vectors[[position[i] for i in ids]].astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- label budgets
def test_budget_cells_learn_from_n_training_photos_per_class_ncm_included(grocery_root: Path,
                                                                          tmp_path: Path) -> None:
    """``ncm/1`` averages exactly one training photo per class (never validation), and its predictions equal
    nearest-class-mean computed by hand from those photos; ``knn/1`` and ``linear/1`` fit on as many."""
    config, cells = _run({"name": "budget", "models": [SMALL], "datasets": [GROCERY],
                          "strategies": ["ncm", "knn", "linear"],
                          "label_budgets": {"budgets": [1], "subsets": 1}}, tmp_path / "run")
    catalog, embeddings = _embedded(config, tmp_path / "run", "a", "grocery-store")
    items = {item.item_id: item for item in catalog}
    classes = sorted({item.label for item in catalog if item.split == "train"})
    budget = cells["a__grocery-store__ncm-1__seed0"]
    drawn = budget.details["train_ids"]
    assert budget.details["train"] == len(drawn) == len(classes) == budget.details["classes"]
    assert sorted(items[i].label for i in drawn) == classes  # one photo of each class
    assert {items[i].split for i in drawn} == {"train"}  # validation photos never averaged in
    plain = cells["a__grocery-store__ncm"]
    assert plain.details["train"] == sum(item.split == "train" for item in catalog)  # the train split, no val
    for kind in ("knn", "linear"):
        assert cells[f"a__grocery-store__{kind}-1__seed0"].details["train"] == len(classes)

    means = _unit(_rows(embeddings, drawn))  # one photo per class: each class mean is that photo
    code = {label: index for index, label in enumerate(classes)}
    labels_of_means = [code[items[i].label] for i in drawn]
    per_item = ResultStore(tmp_path / "run").per_query(budget.cell)
    assert per_item is not None
    tests = per_item[per_item["protocol"] == "classification"]
    by_hand = np.array(labels_of_means)[np.argmax(_rows(embeddings, list(tests["query"])) @ means.T, axis=1)]
    truth = np.array([code[items[i].label] for i in tests["query"]])
    np.testing.assert_array_equal(tests["y_true"].to_numpy(), truth)
    np.testing.assert_array_equal(tests["y_pred"].to_numpy(), by_hand)
    assert budget.metrics["classification"]["accuracy"] == pytest.approx((by_hand == truth).mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------------- dedupe
def _near_leaks(embeddings: Embeddings, protocol: RetrievalProtocol, catalog: Catalog, threshold: float) -> set[str]:
    """Queries with a gallery item at cosine >= threshold, by brute force (no exact copies in the fixture)."""
    data = split_for(protocol, catalog, embeddings)
    similarity = _rows(embeddings, data.query_ids) @ _rows(embeddings, data.gallery_ids).T
    return {q for q, row in zip(data.query_ids, similarity, strict=True) if (row >= threshold).any()}


def test_dedupe_exclude_drops_the_same_queries_from_every_cell_of_a_dataset(grocery_root: Path,
                                                                            tmp_path: Path) -> None:
    """Pre-trained and random-init weights see different near-duplicates at one cosine; the run decides them once
    in the reference model's embedding, and both cells score exactly the queries it left."""
    floor = {**SMALL, "alias": "floor", "pretrained": False}
    base = {"name": "dedupe", "models": [SMALL, floor], "datasets": [GROCERY], "strategies": ["pretrained"]}
    warm = load_config({**QUIET, **base})
    catalog, reference = _embedded(warm, tmp_path / "run", "a", "grocery-store")
    _, other = _embedded(warm, tmp_path / "run", "floor", "grocery-store")
    [fine] = [p for p in protocols_for("grocery-store", catalog) if p.name == "fine"]
    data = split_for(fine, catalog, reference)
    nearest = (_rows(reference, data.query_ids) @ _rows(reference, data.gallery_ids).T).max(axis=1)
    threshold = float(np.round(np.median(nearest), 6))  # about half the queries leak in the reference
    expected = _near_leaks(reference, fine, catalog, threshold)
    assert 0 < len(expected) < len(data.query_ids)
    assert _near_leaks(other, fine, catalog, threshold) != expected  # a per-cell threshold would differ

    dedupe = {"action": "exclude", "threshold": threshold}
    _, cells = _run({**base, "dedupe": dedupe}, tmp_path / "run")
    by_model = {result.cell.model: result for result in cells.values()}  # random weights: a seeded cell
    decision = json.loads((tmp_path / "run" / DEDUPE_FOLDER / "grocery-store.json").read_text())
    assert decision["reference"] == "a" and set(decision["protocols"]["fine"]["leaking_ids"]) == expected
    store = ResultStore(tmp_path / "run")
    scored: dict[str, pd.DataFrame] = {}
    for model in ("a", "floor"):
        frame = store.per_query(by_model[model].cell)
        assert frame is not None
        scored[model] = frame
        details = by_model[model].details["fine"]["duplicates"]
        assert set(details["leaking_ids"]) == expected and "in a's embedding" in details["decided_by"]
    for protocol in ("fine", "coarse", "iconic"):
        queries = [set(scored[m][scored[m]["protocol"] == protocol]["query"]) for m in ("a", "floor")]
        assert queries[0] == queries[1], protocol
    assert set(scored["a"][scored["a"]["protocol"] == "fine"]["query"]) == set(data.query_ids) - expected

    again = run_bench(load_config({**QUIET, **base, "dedupe": {**dedupe, "reference": "floor"}}), tmp_path / "run",
                      progress=False)
    assert sorted(again.computed) == sorted(result.cell.cell_id for result in cells.values())
    assert "dedupe.reference" in again.reasons[by_model["a"].cell.cell_id]
    moved = json.loads((tmp_path / "run" / DEDUPE_FOLDER / "grocery-store.json").read_text())
    assert moved["reference"] == "floor"
    assert set(moved["protocols"]["fine"]["leaking_ids"]) == _near_leaks(other, fine, catalog, threshold)


# -------------------------------------------------------------------------------------------- compression
def test_fit_plan_never_fits_a_query() -> None:
    gallery = [f"g{i}" for i in range(5)]
    assert fit_plan(["q1", "q2"], gallery).on == GALLERY
    items = [f"i{i}" for i in range(7)]
    trained = fit_plan(items, items, ["t1", "t2", "i3"])
    assert trained.on == TRAIN_SPLIT and trained.folds[0].fit_ids == ("t1", "t2")  # a query is never fitted on
    crossed = fit_plan(items, items)
    assert crossed.on == CROSS_FIT and [len(f.query_rows) for f in crossed.folds] == [4, 3]
    assert sorted(np.concatenate([f.query_rows for f in crossed.folds]).tolist()) == list(range(7))
    for fold in crossed.folds:
        own = {items[row] for row in fold.query_rows}
        assert own.isdisjoint(fold.fit_ids) and own | set(fold.fit_ids) == set(items)
    assert fit_plan(list(reversed(items)), items).folds[0].fit_ids == crossed.folds[0].fit_ids  # order-free draw
    partial = fit_plan(["a", "b", "c"], ["b", "x", "y"])  # one query sits in the gallery too
    assert partial.on == CROSS_FIT and all({"a", "b", "c"}.isdisjoint(set(f.fit_ids) & {
        ["a", "b", "c"][r] for r in f.query_rows}) for f in partial.folds)


def _pca_scores(embeddings: Embeddings, gallery: list[str], queries: list[str], fit: list[str], keys: dict[str, str],
                dim: int) -> np.ndarray:
    """R@1 per query of PCA fitted on ``fit`` by scikit-learn, by brute force (the query itself excluded; NaN for a
    query with no relevant item)."""
    pca = PCA(dim, svd_solver="full").fit(_rows(embeddings, fit).astype(np.float32))

    def project(ids: list[str]) -> np.ndarray:
        return _unit(pca.transform(_rows(embeddings, ids).astype(np.float32)))

    similarity = project(queries) @ project(gallery).T
    itself = np.array(queries)[:, None] == np.array(gallery)[None, :]
    similarity[itself] = -np.inf
    relevant = (np.array([keys[q] for q in queries])[:, None] == np.array([keys[g] for g in gallery])[None, :])
    relevant &= ~itself
    hit = relevant[np.arange(len(queries)), np.argmax(similarity, axis=1)].astype(float)
    return np.where(relevant.any(axis=1), hit, np.nan)


def _compress_run(config: dict[str, Any], run_dir: Path, dataset: str, label: str
                  ) -> tuple[CellResult, pd.DataFrame, Catalog, Embeddings]:
    loaded, cells = _run(config, run_dir)
    [cell] = cells.values()
    frame = ResultStore(run_dir).per_query(cell.cell)
    assert frame is not None
    catalog, embeddings = _embedded(loaded, run_dir, label, dataset)
    return cell, frame, catalog, embeddings


def test_compression_on_a_leave_one_out_catalogue_is_cross_fitted(grocery_root: Path, tmp_path: Path) -> None:
    """A user catalogue without splits is one leave-one-out protocol: PCA and int8 are fitted on one half and
    score the other, Milvus (which trains on what it indexes) is skipped, and pca8's per-query R@1 equals
    scikit-learn's PCA fitted on each fold's fit set, never on the queries it scores."""
    photos = load_catalog("grocery-store", data_dir=grocery_root).select_splits("train").per_class(6)
    manifest = tmp_path / "shop.csv"
    pd.DataFrame([{"path": str(i.image_path), "label": i.label} for i in photos]).to_csv(manifest, index=False)
    config = {"name": "loo", "models": [SMALL], "datasets": [{"name": "shop", "source": str(manifest)}],
              "strategies": ["compress"],
              "compress": {"methods": ["pca8", "int8", "binary", "milvus:IVF_SQ8"], "depth": 5, "batch1_queries": 3}}
    cell, frame, catalog, embeddings = _compress_run(config, tmp_path / "run", "shop", "a")
    rows = {row["method"]: row for row in cell.details["compression"]["leave-one-out"]}
    assert (rows["pca8"]["fitted_on"], rows["int8"]["fitted_on"]) == (CROSS_FIT, CROSS_FIT)
    assert rows["binary"]["fitted_on"] == "nothing fitted" and rows["binary"]["status"] == "ok"
    assert rows["milvus:IVF_SQ8"]["status"] == "skipped" and "holds the evaluated queries" in rows[
        "milvus:IVF_SQ8"]["reason"]

    [protocol] = protocols_for("shop", catalog)
    data = split_for(protocol, catalog, embeddings)
    plan = protocol_fit_plan(protocol, catalog, data, embeddings)
    assert cell.details["compression_fit"]["leave-one-out"] == plan.describe()
    keys = {item.item_id: item.label for item in catalog}
    expected = np.zeros(len(data.query_ids))
    for fold in plan.folds:
        scored = [data.query_ids[r] for r in fold.query_rows]
        assert set(scored).isdisjoint(fold.fit_ids) and len(fold.fit_ids) == len(data.query_ids) - len(scored)
        expected[fold.query_rows] = _pca_scores(embeddings, data.gallery_ids, scored, list(fold.fit_ids), keys, 8)
    ours = frame.set_index("query").loc[data.query_ids, "pca8/R@1"].to_numpy()
    np.testing.assert_array_equal(ours, expected)
    leaky = _pca_scores(embeddings, data.gallery_ids, data.query_ids, data.query_ids, keys, 8)
    assert (leaky != ours).any()  # a fit on the queries themselves answers differently: the test can tell


def test_compression_on_cars196_is_fitted_on_the_training_classes(tmp_path: Path) -> None:
    """Cars196's metric-learning protocol is leave-one-out over classes 99..196; its declared training items
    (classes 1..98) are the fit set, disjoint from every query."""
    make_cars_car_ims(tmp_path / "data")
    model = {"name": "timm:test_resnet.r160_in1k", "pretrained": False, "preprocess": {"input_size": 32},
             "alias": "t"}
    config = {"name": "cars", "models": [model], "datasets": ["cars196"], "data_dir": str(tmp_path / "data"),
              "strategies": ["compress"], "compress": {"methods": ["pca2", "int8"], "depth": 3, "batch1_queries": 2}}
    cell, frame, catalog, embeddings = _compress_run(config, tmp_path / "run", "cars196", "t")
    rows = {row["method"]: row for row in cell.details["compression"]["metric-learning"]}
    assert rows["pca2"]["fitted_on"] == rows["int8"]["fitted_on"] == TRAIN_SPLIT
    [protocol] = protocols_for("cars196", catalog)
    data = split_for(protocol, catalog, embeddings)
    [fold] = protocol_fit_plan(protocol, catalog, data, embeddings).folds
    items = {item.item_id: item for item in catalog}
    assert sorted(int(items[i].product_id or 0) for i in fold.fit_ids) == [1, 1, 1, 2, 2]  # classes 1 and 2
    assert set(fold.fit_ids).isdisjoint(data.query_ids)
    keys = {item.item_id: str(item.product_id) for item in catalog}
    expected = _pca_scores(embeddings, data.gallery_ids, data.query_ids, list(fold.fit_ids), keys, 2)
    np.testing.assert_array_equal(frame.set_index("query").loc[data.query_ids, "pca2/R@1"].to_numpy(), expected)
