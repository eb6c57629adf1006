"""ONNX files as backbones (issue 30): ``onnx:FILE`` with declared preprocessing, run through extraction's runtimes,
reproducing the built-in backbone it was exported from, benchmarked and served."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from shelfsight.backbones import load_backbone
from shelfsight.backbones.onnx_model import sidecar_path
from shelfsight.bench import ResultStore, load_config, run_bench
from shelfsight.catalog import load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.export import export_onnx
from shelfsight.embeddings.runtimes import OnnxRuntime, TorchRuntime
from shelfsight.errors import ModelUnavailableError
from test_serve import upload
from test_serve_browser import serve_process

SIZE = 8


def _channel_means(path: Path) -> Path:
    """A graph that answers each channel's mean over an NHWC float image: (B, H, W, 3) -> (B, 3)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])
    out = helper.make_tensor_value_info("means", TensorProto.FLOAT, ["n", 3])
    node = helper.make_node("ReduceMean", ["image"], ["means"], axes=[1, 2], keepdims=0)
    model = helper.make_model(helper.make_graph([node], "means", [image], [out]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _declare(path: Path, **fields: object) -> None:
    sidecar_path(path).write_text(yaml.safe_dump(fields), encoding="utf-8")


def test_declared_preprocessing_by_hand(tmp_path: Path) -> None:
    """BGR, NHWC and range [-1, 1], computed by hand in numpy: the PyTorch path (the encoder) and the wrapped
    graph (ONNX Runtime) both give the L2-normalised channel means of the flipped, rescaled pixels."""
    path = _channel_means(tmp_path / "means.onnx")
    _declare(path, input_size=SIZE, crop_pct=1.0, range=[-1, 1], channel_order="bgr", layout="nhwc")
    backbone = load_backbone(f"onnx:{path}")
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.preprocess.std == (0.5, 0.5, 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8)
    means = (pixels[:, ::-1].astype(np.float64) / 255 - 0.5).mean(axis=(2, 3)) / 0.5
    want = means / np.linalg.norm(means, axis=1, keepdims=True)
    via_torch = TorchRuntime(backbone, torch.device("cpu"), "fp32")(torch.from_numpy(pixels))
    export_onnx(backbone, tmp_path / "wrapped.onnx")
    via_graph = OnnxRuntime(tmp_path / "wrapped.onnx")(pixels)
    np.testing.assert_allclose(via_torch, want, atol=1e-6)
    np.testing.assert_allclose(via_graph, want, atol=1e-6)
    assert backbone.num_parameters == 0  # no initializers in this graph


def test_a_graph_that_ends_normalised_is_not_normalised_again(tmp_path: Path) -> None:
    """Channel means then LpNormalization: the wrapper adds no second L2 (which would move values by ~1e-8 and can
    swap near-tied neighbours), and the result is still unit length, computed by hand."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])
    out = helper.make_tensor_value_info("unit", TensorProto.FLOAT, ["n", 3])
    nodes = [helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),
             helper.make_node("LpNormalization", ["means"], ["unit"], axis=1, p=2)]
    model = helper.make_model(helper.make_graph(nodes, "unit", [image], [out]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "unit.onnx"
    onnx.save(model, str(path))
    _declare(path, input_size=SIZE, crop_pct=1.0, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    export_onnx(load_backbone(f"onnx:{path}"), tmp_path / "wrapped.onnx")
    wrapped = onnx.load(str(tmp_path / "wrapped.onnx"))
    assert [n.op_type for n in wrapped.graph.node].count("LpNormalization") == 1
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    means = (pixels.astype(np.float64) / 255).mean(axis=(2, 3))
    want = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(OnnxRuntime(tmp_path / "wrapped.onnx")(pixels), want, atol=1e-6)


def test_declaration_required_and_identity_by_content(tmp_path: Path) -> None:
    path = _channel_means(tmp_path / "m.onnx")
    with pytest.raises(ModelUnavailableError, match="its preprocessing is not declared. Write .*m.onnx.yaml"):
        load_backbone(f"onnx:{path}")
    declared = load_backbone(f"onnx:{path}", preprocess={"input_size": SIZE, "resize_size": 10})
    assert declared.preprocess.resize_size == 10 and declared.preprocess.input_size == SIZE
    _declare(path, input_size=SIZE, resize_size=10)
    moved = tmp_path / "elsewhere" / "copy.onnx"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    _declare(moved, input_size=SIZE, resize_size=10)
    assert load_backbone(f"onnx:{path}").cache_identity() == load_backbone(f"onnx:{moved}").cache_identity()
    _declare(moved, input_size=SIZE, resize_size=10, channel_order="bgr")
    assert load_backbone(f"onnx:{moved}").cache_identity()["preprocess"]["channel_order"] == "bgr"
    with pytest.raises(ModelUnavailableError, match="unknown preprocessing field 'colour'"):
        load_backbone(f"onnx:{path}", preprocess={"colour": "rgb"})


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """efficientnet_lite0 at 64 px exported by shelfsight itself (uint8 in, normalisation inside), declared."""
    folder = tmp_path_factory.mktemp("onnx")
    backbone = load_backbone("efficientnet_lite0", preprocess={"input_size": 64})
    path = export_onnx(backbone, folder / "lite0.onnx")
    declared = backbone.preprocess.as_dict()
    _declare(path, **{k: list(v) if isinstance(v, tuple) else v for k, v in declared.items()})
    return path


@pytest.mark.slow
def test_exported_lite0_reproduces_the_builtin(lite0_onnx: Path, grocery_root: Path, tmp_path: Path) -> None:
    """Its embeddings (cosine >= 0.9999 with the built-in's on real photos) and its pretrained cell's numbers."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root).head(24)
    builtin = embed_catalog(catalog, load_backbone("efficientnet_lite0", preprocess={"input_size": 64}),
                            num_workers=0, progress=False, runtime="torch")
    mine = embed_catalog(catalog, load_backbone(f"onnx:{lite0_onnx}"), num_workers=0, progress=False)
    assert mine.runtime == "onnx" and mine.ids == builtin.ids
    assert float((mine.vectors * builtin.vectors).sum(axis=1).min()) >= 0.9999
    config = load_config({
        "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0"},
                   {"name": f"onnx:{lite0_onnx}", "alias": "lite0-onnx"}],
        "datasets": [{"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}],
        "index": {"backend": "exact"}, "embedding": {"num_workers": 0}, "tracking": {"enabled": False},
        "stats": {"bootstrap": 100, "permutations": 200}})
    summary = run_bench(config, tmp_path / "run", progress=False)
    assert summary.failed == []
    cells = {r.cell.model: r for r in ResultStore(tmp_path / "run").load_all()}
    for protocol, metrics in cells["lite0"].metrics.items():
        for metric, value in metrics.items():
            assert cells["lite0-onnx"].metrics[protocol][metric] == pytest.approx(value, abs=1e-6), metric
    assert cells["lite0-onnx"].inputs["model"]["library"] == "onnx"
    assert cells["lite0-onnx"].costs["params_m"] > 3 and "gflops_per_image" not in cells["lite0-onnx"].costs


@pytest.mark.slow
def test_served_by_shelfsight_serve(lite0_onnx: Path, grocery_root: Path, tmp_path: Path) -> None:
    """`shelfsight index` then `shelfsight serve` (a real uvicorn process) with the ONNX model: a photo of the index
    finds itself first."""
    from shelfsight.serve import build_index

    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",)).head(12)
    build_index(f"onnx:{lite0_onnx}", catalog, tmp_path / "index", num_workers=0, progress=False)
    query = catalog.items[5]
    with serve_process(tmp_path / "index", "--encoder", "auto") as (url, _):
        health = httpx.get(f"{url}/health", timeout=30).json()
        found = httpx.post(f"{url}/search", files=upload(query.image_path), data={"k": "3"}, timeout=60).json()
    assert health["model"] == f"onnx:{lite0_onnx}" and health["items"] == 12
    assert found["results"][0]["id"] == query.item_id and found["results"][0]["score"] > 0.999
