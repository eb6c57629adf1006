"""Precomputed vectors as a bench model (issue 30): the file formats, each problem of a file refused with its
own message before any cell, fine-tuning refused in the plan, and a file made from a built-in backbone's own
embeddings reproducing that backbone's cells (same queries, same numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from shelfsight.backbones import load_backbone, load_vectors_backbone
from shelfsight.bench import ConfigError, ResultStore, load_config, plan_cells, run_bench
from shelfsight.bench.choices import Choice
from shelfsight.bench.provision import Provision, VectorsModelError
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.cli import app
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.vectors_file import VectorsFileError, write_vectors
from shelfsight.errors import ModelUnavailableError
from shelfsight.report.data import load_run
from shelfsight.report.guidance import _served
from shelfsight.report.sections import own_vectors

DATASET = {"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}
LITE = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0"}
QUICK = {"index": {"backend": "exact"}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
         "stats": {"bootstrap": 100, "permutations": 200}}


def _catalog(tmp_path: Path, n: int = 4) -> Catalog:
    items = [CatalogItem(item_id=f"i{k}", image_path=tmp_path / f"p{k}.jpg", label=f"c{k % 2}", split="test")
             for k in range(n)]
    return Catalog(name="tiny", root=tmp_path, items=tuple(items))


def _embed(catalog: Catalog, path: Path, **options: object) -> tuple[list[str], np.ndarray, list[str]]:
    found = embed_catalog(catalog, load_vectors_backbone(path, **options))  # type: ignore[arg-type]
    return found.ids, found.vectors, [s.item_id for s in found.skipped]


def test_formats_read_back_normalised(tmp_path: Path) -> None:
    """Parquet, .npz and .npy+ids give the same unit vectors, in catalogue order whatever the file's order."""
    catalog = _catalog(tmp_path)
    raw = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [-6.0, 8.0]], np.float32)
    order = [2, 0, 3, 1]
    want = raw / np.linalg.norm(raw, axis=1, keepdims=True)  # (0.6, 0.8), (0, 1), (1, 0), (-0.6, 0.8)
    for suffix in (".parquet", ".npz", ".npy"):
        path = write_vectors(tmp_path / f"v{suffix}", [f"i{k}" for k in order], raw[order])
        ids, vectors, skipped = _embed(catalog, path)
        assert ids == ["i0", "i1", "i2", "i3"] and skipped == []
        np.testing.assert_allclose(vectors, want, atol=1e-7)


def test_int8_rows_and_paths_as_keys(tmp_path: Path) -> None:
    """int8 rows matched by image path (relative to the file's folder) are scaled to unit length."""
    catalog = _catalog(tmp_path, 2)
    table = pa.table({"path": ["p1.jpg", str(tmp_path / "p0.jpg")],
                      "vector": pa.array([[0, 127, 0], [-3, 0, 4]], pa.list_(pa.int8()))})
    pq.write_table(table, tmp_path / "v.parquet")
    found = embed_catalog(catalog, load_vectors_backbone(tmp_path / "v.parquet"))
    assert found.ids == ["i0", "i1"] and found.notes["matched_by"] == "path" and found.notes["dtype"] == "int8"
    np.testing.assert_allclose(found.vectors, [[-0.6, 0.0, 0.8], [0.0, 1.0, 0.0]], atol=1e-7)
    assert found.notes["l2_normalised_on_load"] and found.notes["rows_rescaled"] == 2


BAD_FILES = {
    "missing": (["i0", "i1", "i2"], [[1.0, 0.0]] * 3, "1 of the 4 items of tiny are not in the file"),
    "duplicate": (["i0", "i1", "i2", "i3", "i1"], [[1.0, 0.0]] * 5, "1 id(s) appear more than once: 'i1'"),
    "non-finite": (["i0", "i1", "i2", "i3"], [[1, 0], [np.nan, 1], [1, 0], [np.inf, 0]],
                   "2 vector(s) hold NaN or infinite values: 'i1', 'i3'"),
    "zero": (["i0", "i1", "i2", "i3"], [[1, 0], [1, 0], [0, 0], [1, 0]], "1 vector(s) are all zeros"),
    "mixed dimensions": (["i0", "i1", "i2", "i3"], [[1, 0], [1, 0, 0], [1, 0], [1, 0]],
                         "vectors of mixed dimensions (3 row(s) of 2, 1 row(s) of 3); 1 row(s) differ from the "
                         "usual 2: 'i1'"),
}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_each_problem_is_one_clear_error(tmp_path: Path, problem: str) -> None:
    ids, rows, message = BAD_FILES[problem]
    pq.write_table(pa.table({"id": ids, "vector": pa.array(rows, pa.list_(pa.float32()))}), tmp_path / "v.parquet")
    with pytest.raises(VectorsFileError) as error:
        _embed(_catalog(tmp_path), tmp_path / "v.parquet")
    assert message in str(error.value) and str(tmp_path / "v.parquet") in str(error.value)


def test_missing_skip_and_extra_ids_are_counted(tmp_path: Path) -> None:
    write_vectors(tmp_path / "v.parquet", ["i0", "i2", "x1", "x2", "x3"], np.eye(5, dtype=np.float32)[:, :5])
    found = embed_catalog(_catalog(tmp_path), load_vectors_backbone(tmp_path / "v.parquet", missing="skip"))
    assert found.ids == ["i0", "i2"] and [s.item_id for s in found.skipped] == ["i1", "i3"]
    assert found.skipped[0].reason == "not in the vectors file v.parquet"
    assert found.notes["extra_ids_ignored"] == 3 and found.notes["missing_skipped"] == 2


def test_a_vectors_model_has_no_network() -> None:
    with pytest.raises(ModelUnavailableError, match="precomputed vectors"):
        load_backbone("vectors")


def test_finetune_refused_in_the_plan(tmp_path: Path) -> None:
    write_vectors(tmp_path / "v.parquet", ["a"], np.ones((1, 2), np.float32))
    vectors = {"name": "vectors", "source": str(tmp_path / "v.parquet"), "alias": "production"}
    base = {"models": [LITE, vectors], "datasets": [DATASET, "fashion-mnist"], **QUICK}
    config = load_config({**base, "strategies": ["pretrained", "toptune", "finetune", "crosstune"]})
    with pytest.raises(ConfigError) as error:
        plan_cells(config, seeded=lambda name: True)
    assert ("model 'production' is precomputed vectors: it has no network to train, so these cells cannot run: "
            "finetune on grocery-store, finetune on fashion-mnist, finetune@fashion-mnist on grocery-store, "
            "finetune@grocery-store on fashion-mnist.") in str(error.value)
    kept = load_config({**base, "strategies": [
        "pretrained", "toptune", {"name": "finetune", "models": ["lite0"]}, "crosstune"]})
    planned = {(c.model, c.strategy) for c, _, _ in plan_cells(kept, seeded=lambda name: True)}
    assert ("production", "toptune@fashion-mnist") in planned and ("lite0", "finetune@fashion-mnist") in planned
    assert not any(model == "production" and "finetune" in strategy for model, strategy in planned)


def test_entry_fields_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs `source`"):
        load_config({"models": ["vectors"], "datasets": ["grocery-store"]})
    with pytest.raises(ConfigError, match="'missing' applies to precomputed vectors only"):
        load_config({"models": [{"name": "efficientnet_lite0", "missing": "skip"}], "datasets": ["grocery-store"]})


def test_a_bad_file_stops_the_run_before_any_cell(grocery_root: Path, tmp_path: Path) -> None:
    write_vectors(tmp_path / "v.parquet", ["not-an-item"], np.ones((1, 2), np.float32))
    config = load_config({"models": [LITE, {"name": "vectors", "source": str(tmp_path / "v.parquet")}],
                          "datasets": [DATASET], **QUICK})
    with pytest.raises(VectorsModelError, match="model 'vectors' on dataset 'grocery-store': .* are not in the file"):
        run_bench(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "cells").exists() or not any((tmp_path / "run" / "cells").iterdir())


@pytest.mark.slow
def test_own_embeddings_reproduce_the_backbone_cells(grocery_root: Path, tmp_path: Path) -> None:
    """lite0's own embeddings written by the export and read back as `production`: its pretrained, linear and
    top-tuned cells score the same queries with the same numbers (to 1e-6)."""
    toptune = {"trials": 2, "trial_epochs": 3, "trial_repeats": 1, "final_max_epochs": 20, "patience": 5}
    base = {"datasets": [DATASET], "strategies": ["pretrained", "linear", "toptune"], "toptune": toptune, **QUICK}
    lite_only = load_config({"models": [LITE], **base})
    provision = Provision(lite_only)
    catalog = provision.catalog(lite_only.datasets[0])
    own = embed_catalog(catalog, provision.backbone(lite_only.models[0], 0), num_workers=0, progress=False)
    own.save(tmp_path / "lite0.parquet", paths=[str(i.image_path) for i in catalog.items])
    vectors = {"name": "vectors", "source": str(tmp_path / "lite0.parquet"), "alias": "production"}
    summary = run_bench(load_config({"models": [LITE, vectors], **base}), tmp_path / "run", progress=False)
    assert summary.failed == [] and len(summary.computed) == 6
    store = ResultStore(tmp_path / "run")
    cells = {(r.cell.model, r.cell.strategy): r for r in store.load_all()}
    for strategy in ("pretrained", "linear", "toptune"):
        ours, theirs = cells[("production", strategy)], cells[("lite0", strategy)]
        assert ours.metrics.keys() == theirs.metrics.keys()
        for protocol, metrics in theirs.metrics.items():
            for metric, value in metrics.items():
                assert ours.metrics[protocol][metric] == pytest.approx(value, abs=1e-6), (strategy, metric)
        mine, reference = (pd.read_parquet(store.queries_path(c)) for c in (ours.cell, theirs.cell))
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), reference.reset_index(drop=True), atol=1e-6)
    details = cells[("production", "pretrained")].details["vectors"]
    assert details["l2_normalised_on_load"] and details["rows_rescaled"] == 0 and details["extra_ids_ignored"] == 0
    assert cells[("production", "pretrained")].inputs["model"]["weights"].startswith("file:")
    run = load_run(tmp_path / "run")
    section = own_vectors.build(run)
    assert section is not None and "L2-normalised on load" in section.markdown
    assert own_vectors.rows_of(run) == [("production", "grocery-store", str(tmp_path / "lite0.parquet"),
                                         details["sha256"][:16], str(len(catalog)), "1280", "float32", "id", "0", "0",
                                         "0")]
    served = _served(run, "grocery-store", Choice("production", "supervised", "pretrained", 0.5, 0.0, 1), True)
    assert served.model == ["--model", "vectors"] and "has no network to embed" in served.notes[0]


def test_embed_output_is_what_a_vectors_model_reads(messy_catalog: Path, tmp_path: Path) -> None:
    """`shelfsight embed --output x.parquet` on a catalogue with broken photos, read back as a vectors model: the
    same vectors bit for bit, the broken photos missing (an error, or skipped with `missing: skip`)."""
    output = tmp_path / "made-here.parquet"
    result = CliRunner().invoke(app, ["embed", "-m", "efficientnet_lite0", "-d", str(messy_catalog), "--workers", "0",
                                      "--quiet", "--output", str(output)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    catalog = load_catalog(str(messy_catalog))
    direct = embed_catalog(catalog, load_backbone("efficientnet_lite0"), num_workers=0, progress=False)
    assert pq.read_table(output).column_names == ["id", "path", "vector"]
    with pytest.raises(VectorsFileError, match=f"{len(direct.skipped)} of the {len(catalog)} items"):
        embed_catalog(catalog, load_vectors_backbone(output))
    found = embed_catalog(catalog, load_vectors_backbone(output, missing="skip"))
    assert found.ids == direct.ids and np.array_equal(found.vectors, direct.vectors)
    assert sorted(s.item_id for s in found.skipped) == sorted(s.item_id for s in direct.skipped)
    assert found.notes["made_by"]["model"] == "efficientnet_lite0" and found.notes["rows_rescaled"] == 0
    by_path = embed_catalog(catalog, load_vectors_backbone(output, key="path", missing="skip"))
    assert by_path.ids == direct.ids and by_path.notes["matched_by"] == "path"
