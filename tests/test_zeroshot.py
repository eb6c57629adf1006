"""The ``zeroshot`` strategy: prompt ensembling by hand, class texts (Grocery Store's descriptions, a user's CSV),
and real bench cells on a tiny random open_clip model (Milvus Lite, metrics, report), beside a model without
a text tower whose cell fails with a clear error while the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shelfsight.backbones import load_backbone
from shelfsight.backbones.prompts import class_prompts, class_vectors, ensemble_vectors, first_sentence, readable
from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.results import ResultStore
from shelfsight.bench.strategies.zeroshot import ZeroShotConfig, class_texts
from shelfsight.catalog import load_catalog
from shelfsight.catalog.grocery import class_descriptions
from shelfsight.embeddings import embed_catalog
from shelfsight.metrics import retrieval_report
from shelfsight.report import write_report
from zeroshot_tiny import register_open_clip


def test_prompt_ensembling_averages_normalised_vectors_by_hand() -> None:
    vectors = np.array([[3.0, 4.0], [10.0, 0.0], [0.0, -2.0]], dtype=np.float32)
    # class 0: unit (0.6, 0.8) and (1, 0) -> mean (0.8, 0.4) -> renormalised (2, 1)/sqrt(5); the raw mean
    # (6.5, 2) would point elsewhere: the long vector must not outvote the short one
    got = ensemble_vectors(vectors, [2, 1])
    assert np.allclose(got, [[2 / np.sqrt(5), 1 / np.sqrt(5)], [0.0, -1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="do not split"):
        ensemble_vectors(vectors, [2, 2])


def test_class_prompts_from_names_templates_and_descriptions() -> None:
    assert readable("Golden-Delicious") == "Golden Delicious" and readable("sweet_potato") == "sweet potato"
    assert first_sentence("Bananas are good. Store them cool.") == "Bananas are good."
    prompts = class_prompts("Pink-Lady", ("a photo of {}.", "{} on a shelf."), "A sweet apple. Crisp too.")
    assert prompts == ["a photo of Pink Lady.", "Pink Lady on a shelf.", "A sweet apple."]
    with pytest.raises(ValueError, match="exactly once"):
        ZeroShotConfig(templates=("a photo of an apple.",))


def test_class_texts_use_grocery_descriptions_and_a_users_csv(grocery_root: Path, tmp_path: Path) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    shipped = class_descriptions(catalog.root)
    assert set(shipped) == set(catalog.classes)  # every class ships a description
    texts = class_texts("grocery-store", catalog, ZeroShotConfig())
    assert texts["Banana"].description == shipped["Banana"] and texts["Banana"].name == "Banana"
    csv = tmp_path / "names.csv"
    csv.write_text("label,name,description\nBanana,ripe yellow banana,\nNot-A-Class,x,y\n")
    texts = class_texts("grocery-store", catalog, ZeroShotConfig(class_texts={"grocery-store": str(csv)}))
    assert texts["Banana"].name == "ripe yellow banana" and texts["Banana"].description == shipped["Banana"]
    assert "Not-A-Class" not in texts
    plain = class_texts("grocery-store", catalog, ZeroShotConfig(descriptions=False))
    assert all(t.description is None for t in plain.values())


def _cell(run: Path, strategy: str, model: str):  # type: ignore[no-untyped-def]
    [cell] = [r for r in ResultStore(run).load_all() if r.cell.strategy == strategy and r.cell.model == model]
    return cell


@pytest.mark.slow
def test_zeroshot_cells_run_through_the_bench_milvus_and_report(grocery_root: Path, tmp_path: Path) -> None:
    name = register_open_clip(tmp_path)
    config = load_config({
        "name": "zeroshot",
        "models": [{"name": name, "pretrained": False, "alias": "tiny"},
                   {"name": "timm:test_vit", "pretrained": False, "alias": "vit"}],
        "datasets": [{"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 3}}],
        "strategies": ["zeroshot"], "index": {"backend": "milvus-lite"},
        "embedding": {"num_workers": 0, "runtime": "torch"},
        "tracking": {"enabled": False}, "stats": {"bootstrap": 100, "permutations": 200},
    })
    run = tmp_path / "run"
    summary = run_bench(config, run, progress=False)
    assert len(summary.failed) == 1 and summary.failed[0].startswith("vit__")  # one failed; the run went on
    failed = _cell(run, "zeroshot", "vit")
    assert failed.status == "error" and "NoTextTowerError" in (failed.error or "")
    assert "has none" in (failed.error or "") and "clip_vit_b16_laion2b" in (failed.error or "")

    cell = _cell(run, "zeroshot", "tiny")
    assert cell.status == "ok" and cell.details["weights"] == "random-init:0"
    classes = cell.details["classes"]
    assert cell.costs["prompts"] == classes * 6  # five templates and the shipped description per class
    assert cell.costs["text_params_m"] > 0 and cell.costs["text_encode_seconds"] > 0
    assert cell.costs["embed_dim"] == 24 and cell.costs["params_m"] > 0
    _same_answers_as_an_independent_computation(run, cell, name, grocery_root)

    table = read_table(run).set_index(["model", "strategy", "protocol", "metric"])
    assert table.loc[("tiny", "zeroshot", "text-to-image", "mMP@5"), "n"] == 1
    assert "accuracy" in table.loc[("tiny", "zeroshot", "classification")].index
    files = write_report(run, log_mlflow=False)
    markdown = Path(files.markdown).read_text(encoding="utf-8")
    assert "Which embedding for visual search? Not measured" in markdown  # search by words is not visual search
    section = markdown[markdown.index("Zero-shot tagging and text search"):]
    assert "not measured: randomly initialised weights (random-init:0)" in section
    assert "not measured: NoTextTowerError" in section


def _same_answers_as_an_independent_computation(run: Path, cell, name: str, grocery_root: Path) -> None:  # type: ignore[no-untyped-def]
    """Predictions and text-to-image scores recomputed here: the same weights (seed 0), the stored prompts,
    exact search in numpy."""
    backbone = load_backbone(name, pretrained=False)
    prompts = json.loads((run / "work" / cell.cell.cell_id / "prompts.json").read_text(encoding="utf-8"))
    labels = sorted(prompts)
    assert backbone.text_encoder is not None and len(labels) == cell.details["classes"]
    means = class_vectors(backbone.text_encoder, [prompts[label] for label in labels])
    queries = pd.read_parquet(run / "cells" / f"{cell.cell.cell_id}.queries.parquet")
    tagged = queries[queries["protocol"] == "classification"]
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    test = catalog.subset(list(tagged["query"]))
    embedded = embed_catalog(test, backbone, num_workers=0, runtime="torch")
    rows = [embedded.ids.index(i) for i in tagged["query"]]
    expected = np.argmax(embedded.vectors[rows] @ means.T, axis=1)
    assert np.array_equal(tagged["y_pred"].to_numpy().astype(int), expected)
    accuracy = float(np.mean(expected == tagged["y_true"].to_numpy().astype(int)))
    assert cell.metrics["classification"]["accuracy"] == pytest.approx(accuracy)
    label_of = {item.item_id: item.label for item in catalog}
    gallery_keys = np.array([label_of[i] for i in tagged["query"]])
    present = sorted(set(gallery_keys))
    order = np.argsort(-(means[[labels.index(p) for p in present]] @ embedded.vectors[rows].T), axis=1, kind="stable")
    report = retrieval_report(np.array(present), gallery_keys, order, same_set=False)
    for metric in ("mMP@5", "R@1", "MAP@R"):
        assert cell.metrics["text-to-image"][metric] == pytest.approx(report.metrics[metric], abs=1e-6), metric
