"""Extraction runtimes: ONNX Runtime and OpenVINO agree with PyTorch on real photos or are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfsight.backbones import Backbone, build_pixel_transform, load_backbone
from shelfsight.catalog import load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.export import ensure_onnx, export_path, onnx_key
from shelfsight.embeddings.extract import probe_pixels
from shelfsight.embeddings.runtime_choice import select_runtime
from shelfsight.embeddings.runtimes import (
    MAX_ABS_DIFF,
    MIN_COSINE,
    OnnxRuntime,
    OpenVinoRuntime,
    RuntimeUnavailableError,
    TorchRuntime,
    check_agreement,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone("efficientnet_lite0", preprocess={"input_size": 96})


@pytest.fixture()
def photos(grocery_root: Path, backbone: Backbone) -> torch.Tensor:
    """Eight real shop photos as the runtimes see them (uint8)."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("test",)).head(8)
    transform = build_pixel_transform(backbone.preprocess)
    return probe_pixels(catalog, list(range(len(catalog))), transform, backbone.preprocess.resize_size)


def test_onnx_and_openvino_at_fp32_agree_with_pytorch_on_real_photos(backbone: Backbone,
                                                                    photos: torch.Tensor) -> None:
    reference = TorchRuntime(backbone, CPU, "fp32")
    path, exported = ensure_onnx(backbone)
    assert exported and path == export_path(backbone) and path.is_file()
    want = reference(photos)
    for runtime in (OnnxRuntime(path, threads=1), OpenVinoRuntime(path, threads=1)):
        got = runtime(photos)
        assert got.shape == want.shape == (8, 1280)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        agreement = check_agreement(runtime, reference, photos)
        assert agreement.ok and agreement.photos == 8
        assert agreement.max_abs_diff == pytest.approx(float(np.abs(got - want).max()))
        assert agreement.max_abs_diff < 1e-4 and agreement.min_cosine > 0.99999
    assert ensure_onnx(backbone) == (path, False)  # exported once, reused


def test_auto_refuses_a_runtime_that_disagrees_and_says_why(backbone: Backbone, photos: torch.Tensor,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A perturbed export (another network's weights under this backbone's key) is caught on real photos."""
    monkeypatch.setenv("SHELFSIGHT_EXPORT_DIR", str(tmp_path / "exports"))  # the other tests' exports stay sound
    other = load_backbone("efficientnet_lite0", pretrained=False, preprocess={"input_size": 96})
    wrong, _ = ensure_onnx(other, export_path(other))
    target = export_path(backbone)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wrong, target)
    target.with_name(target.name + ".json").write_text(json.dumps({"key": onnx_key(backbone)}))
    runtime, report = select_runtime("auto", backbone, device=CPU, precision="fp32", probe=lambda: photos, threads=1)
    assert runtime.name == "torch" and report.chosen == "torch" and report.requested == "auto"
    assert report.agreement is not None and not report.agreement.ok
    assert report.agreement.min_cosine < MIN_COSINE or report.agreement.max_abs_diff > MAX_ABS_DIFF
    assert "onnx disagrees with PyTorch on 8 catalogue photo(s)" in report.reason
    with pytest.raises(RuntimeUnavailableError, match=f"onnx disagrees with PyTorch .* delete {target}"):
        select_runtime("onnx", backbone, device=CPU, precision="fp32", probe=lambda: photos, threads=1)


def test_auto_keeps_pytorch_at_reduced_precision_and_explicit_export_refuses_it(backbone: Backbone,
                                                                               photos: torch.Tensor) -> None:
    runtime, report = select_runtime("auto", backbone, device=CPU, precision="bf16", probe=lambda: photos,
                                     threads=1)
    assert runtime.name == "torch" and "fp32" in report.reason
    with pytest.raises(RuntimeUnavailableError, match="runtime openvino: exported runtimes run at fp32"):
        select_runtime("openvino", backbone, device=CPU, precision="bf16", probe=lambda: photos, threads=1)


def test_the_runtime_is_part_of_the_cache_key(grocery_root: Path, backbone: Backbone) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).head(12)
    options = {"num_workers": 0, "batch_size": 4, "progress": False}
    by_torch = embed_catalog(catalog, backbone, runtime="torch", **options)  # type: ignore[arg-type]
    by_onnx = embed_catalog(catalog, backbone, runtime="onnx", **options)  # type: ignore[arg-type]
    auto = embed_catalog(catalog, backbone, **options)  # type: ignore[arg-type]
    assert (by_torch.runtime, by_onnx.runtime) == ("torch", "onnx")
    assert by_torch.key != by_onnx.key and by_torch.cache_folder != by_onnx.cache_folder
    assert by_torch.computed == by_onnx.computed == 12  # nothing shared between the two spaces
    assert auto.key == by_onnx.key and auto.computed == 0  # auto chose ONNX Runtime: its vectors, read back
    assert by_torch.ids == by_onnx.ids
    assert np.abs(by_torch.vectors - by_onnx.vectors).max() < MAX_ABS_DIFF
