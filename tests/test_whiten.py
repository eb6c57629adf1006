"""The ``whiten`` strategy: PCA whitening fitted on training items (or cross-fitted), checked against an
independent whitening (scikit-learn's PCA and a numpy nearest neighbour) on real photos, query by query."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from shelfsight.backbones import load_backbone
from shelfsight.bench import ConfigError, load_config, run_bench
from shelfsight.bench.results import ResultStore
from shelfsight.bench.strategies import whiten
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.compress.fitting import CROSS_FIT, TRAIN_SPLIT, cross_fit_folds
from shelfsight.embeddings import embed_catalog

MODEL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "a"}
DIM = 8


def _config(dataset: dict[str, object]) -> dict[str, object]:
    return {"name": "whiten", "models": [MODEL], "datasets": [dataset], "strategies": ["pretrained", "whiten"],
            "whiten": {"dim": DIM}, "index": {"backend": "exact"}, "embedding": {"num_workers": 0},
            "tracking": {"enabled": False}, "stats": {"bootstrap": 100, "permutations": 200}}


def _vectors(catalog: Catalog) -> dict[str, np.ndarray]:
    """The frozen embedding, from the per-photo cache the bench filled."""
    embeddings = embed_catalog(catalog, load_backbone("efficientnet_lite0", preprocess={"input_size": 64}),
                               num_workers=0, progress=False)
    return dict(zip(embeddings.ids, embeddings.vectors, strict=True))


def _whitened(vectors: dict[str, np.ndarray], fit_ids: list[str], dim: int) -> dict[str, np.ndarray]:
    fit = np.stack([vectors[i] for i in fit_ids]).astype(np.float32)
    pca = PCA(n_components=dim, whiten=True, svd_solver="full").fit(fit)
    ids = list(vectors)
    out = pca.transform(np.stack([vectors[i] for i in ids]).astype(np.float32)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return dict(zip(ids, out, strict=True))


def _nearest_label_matches(space: dict[str, np.ndarray], query: str, gallery: list[str],
                           label: dict[str, str]) -> float:
    others = [g for g in gallery if g != query]
    scores = np.stack([space[g] for g in others]) @ space[query]
    return float(label[others[int(np.argmax(scores))]] == label[query])


def test_whiten_cell_equals_an_independent_whitening(grocery_root: Path, tmp_path: Path) -> None:
    """Fitted on the training photos only (the fine protocol's gallery is train + val, its queries test)."""
    per_class = {"train": 3, "val": 1, "test": 2}
    summary = run_bench(load_config(_config({"name": "grocery-store", "per_class": per_class})), tmp_path / "run",
                        progress=False)
    assert summary.failed == []
    store = ResultStore(tmp_path / "run")
    [cell] = [r for r in store.load_all() if r.cell.strategy == whiten.NAME]
    queries = store.per_query(cell.cell)
    assert queries is not None
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    subset = catalog.subset([i for part, n in per_class.items() for i in catalog.select_splits(part).per_class(n).ids])
    split = {item.item_id: item.split for item in subset}
    label = {item.item_id: item.label for item in subset}
    vectors = _vectors(subset)
    train = [i for i in vectors if split[i] == "train"]
    detail = cell.details["fine"]["whiten"]
    assert detail["fitted_on"] == TRAIN_SPLIT and detail["folds"][0]["fit_items"] == len(train)
    assert detail["folds"][0]["dim"] == DIM == cell.costs["embed_dim"]
    space = _whitened(vectors, train, DIM)
    gallery = [i for i in vectors if split[i] in ("train", "val")]
    fine = queries[queries["protocol"] == "fine"]
    expected = [_nearest_label_matches(space, query, gallery, label) for query in fine["query"]]
    assert fine["R@1"].tolist() == expected and len(expected) == sum(s == "test" for s in split.values())
    assert cell.metrics["fine"]["R@1"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_a_leave_one_out_catalogue_is_cross_fitted_query_by_query(grocery_root: Path, tmp_path: Path) -> None:
    """No split: every photo is a query, so each half is ranked in a whitening fitted on the other half."""
    source = load_catalog("grocery-store", data_dir=grocery_root).select_splits("train").per_class(4)
    folder = tmp_path / "shop"
    for item in source:
        (folder / item.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(item.image_path, folder / item.label / Path(item.image_path).name)
    summary = run_bench(load_config(_config({"name": "shop", "source": str(folder)})), tmp_path / "run",
                        progress=False)
    assert summary.failed == []
    store = ResultStore(tmp_path / "run")
    [cell] = [r for r in store.load_all() if r.cell.strategy == whiten.NAME]
    [protocol] = [name for name in cell.metrics]
    detail = cell.details[protocol]["whiten"]
    assert detail["fitted_on"] == CROSS_FIT and len(detail["folds"]) == 2
    queries = store.per_query(cell.cell)
    assert queries is not None
    catalog = load_catalog(str(folder))
    label = {item.item_id: item.label for item in catalog}
    vectors = _vectors(catalog)
    ids = list(vectors)
    ours = dict(zip(queries["query"], queries["R@1"], strict=True))
    checked = 0
    for fold in cross_fit_folds(ids, ids):
        own = [ids[int(row)] for row in fold.query_rows]
        assert not set(own) & set(fold.fit_ids)  # the whitening of a query never saw it
        space = _whitened(vectors, list(fold.fit_ids), min(DIM, len(fold.fit_ids) - 1))
        for query in own:
            assert ours[query] == _nearest_label_matches(space, query, ids, label), query
            checked += 1
    assert checked == len(ids) == len(ours)
    assert cell.metrics[protocol]["R@1"] == pytest.approx(np.mean(list(ours.values())), abs=1e-12)


def test_whiten_section_is_checked() -> None:
    with pytest.raises(ConfigError, match="whiten.dim must be at least 1"):
        load_config({**_config({"name": "grocery-store"}), "whiten": {"dim": 0}})
