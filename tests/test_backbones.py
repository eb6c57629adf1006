"""Backbone registry and every loader path, on tiny random configs and the real EfficientNet-Lite weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfsight.backbones import get_spec, list_specs, load_backbone, register_file, weights_status
from shelfsight.backbones.spec import BackboneSpec, Preprocess
from shelfsight.errors import ModelUnavailableError, UnknownModelError


def _embed_random(backbone, size: int | None = None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    side = size or backbone.preprocess.input_size
    with torch.inference_mode():
        return backbone.encoder(torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)))


def test_registry_lists_the_paper_families_and_pip_weights() -> None:
    specs = list_specs()
    assert {s.family for s in specs if s.in_paper} == {"supervised", "self-supervised", "contrastive"}
    names = {s.name for s in specs}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= names
    assert weights_status(get_spec("efficientnet_lite0")) == "packaged"
    assert weights_status(get_spec("vit_b16")) == "download"  # no hub cache in tests


def test_typo_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="Did you mean .*'efficientnet_lite0'"):
        get_spec("efficientnet_lite")
    with pytest.raises(UnknownModelError, match="Did you mean"):
        get_spec("timm:resnet5O")  # letter O for zero


def test_prefixed_timm_name_takes_preprocessing_from_timm() -> None:
    spec = get_spec("timm:vit_base_patch16_224.dino")
    assert spec.library == "timm" and spec.family == "self-supervised"
    assert spec.preprocess.crop_pct == pytest.approx(0.9)
    assert spec.preprocess.interpolation == "bicubic"


def test_timm_loader_on_a_tiny_random_model() -> None:
    backbone = load_backbone("timm:test_vit", pretrained=False)
    features = _embed_random(backbone)
    assert features.shape == (2, backbone.encoder.model.num_features)
    assert backbone.weights_id == "random-init:0"
    again = load_backbone("timm:test_vit", pretrained=False)
    assert torch.equal(_embed_random(again), features)  # seeded random init is reproducible
    other = load_backbone("timm:test_vit", pretrained=False, seed=1)
    assert not torch.equal(_embed_random(other), features)


def test_timm_local_weights_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.5)  # weights no random init would give
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    backbone = load_backbone("timm:test_resnet", weights=tmp_path / "w.safetensors")
    loaded = dict(backbone.encoder.model.state_dict())
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert backbone.weights_id.startswith("file:")


def test_open_clip_loader_on_a_tiny_random_config(tmp_path: Path) -> None:
    import open_clip

    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    config = {"embed_dim": 24, "vision_cfg": vision,
              "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "shelfsight-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "shelfsight-tiny-clip.json")
    backbone = load_backbone("open_clip:shelfsight-tiny-clip", pretrained=False)
    assert backbone.preprocess.input_size == 32 and backbone.preprocess.crop_pct == 1.0
    assert _embed_random(backbone).shape == (2, 24)  # the projected image embedding


def test_transformers_loader_on_a_tiny_saved_model(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "tiny-dinov2")
    backbone = load_backbone(f"hf:{tmp_path / 'tiny-dinov2'}")
    features = _embed_random(backbone, 28)
    assert features.shape == (2, 32)
    reference = Dinov2Model.from_pretrained(tmp_path / "tiny-dinov2").eval()
    with torch.inference_mode():
        expected = reference(pixel_values=torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(features, expected.pooler_output, atol=1e-6)


def test_torchhub_loader_with_a_local_hubconf(tmp_path: Path) -> None:
    (tmp_path / "hubconf.py").write_text(textwrap.dedent("""
        import torch
        dependencies = ["torch"]

        def tiny_resnet(pretrained=False):
            from torchvision.models import resnet18
            model = resnet18(num_classes=10)
            return model
    """))
    backbone = load_backbone(f"torchhub:{tmp_path}:tiny_resnet", pretrained=False)
    assert _embed_random(backbone, 64).shape == (2, 512)  # fc replaced: pooled features, not logits


def test_unavailable_hub_weights_give_a_clear_error() -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        load_backbone("vit_b16")  # HF_HUB_OFFLINE=1: the hub cannot be reached
    message = str(caught.value)
    assert "vit_b16" in message and "vit_base_patch16_224.augreg_in21k_ft_in1k" in message
    assert "--weights" in message
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_backbone("efficientnet_lite0", weights="/nonexistent/weights.pth")


def test_models_file_registers_user_specs(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(textwrap.dedent("""
        - name: our_tiny_vit
          family: self-supervised
          library: timm
          checkpoint: test_vit
          embed_dim: 64
          licence: internal
          preprocess: {input_size: 160, crop_pct: 0.95, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}
    """))
    [spec] = register_file(models)
    assert get_spec("our_tiny_vit") == spec
    assert spec.preprocess == Preprocess(input_size=160, crop_pct=0.95, mean=(0.5,) * 3, std=(0.5,) * 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  family: unsupervised\n  library: timm\n  checkpoint: test_vit\n")
    with pytest.raises(UnknownModelError, match=r"bad\.yaml, entry 1: .*family"):
        register_file(bad)


def test_preprocess_override_changes_the_cache_identity() -> None:
    base = load_backbone("efficientnet_lite0")
    smaller = load_backbone("efficientnet_lite0", preprocess={"input_size": 160})
    assert smaller.preprocess.input_size == 160 and smaller.preprocess.mean == (0.5, 0.5, 0.5)
    assert base.cache_identity() != smaller.cache_identity()
    assert base.cache_identity()["weights"] == smaller.cache_identity()["weights"]


def test_spec_validates_family() -> None:
    with pytest.raises(ValueError, match="family"):
        BackboneSpec(name="x", family="weakly", library="timm", checkpoint="y")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_real_efficientnet_lite_weights_classify_like_imagenet_models(name: str) -> None:
    """The packaged weights load strictly and give 1280-d features at the spec's input size."""
    backbone = load_backbone(name)
    assert backbone.spec.embed_dim == 1280
    features = _embed_random(backbone)
    assert features.shape == (2, 1280)
    assert np.isfinite(features.numpy()).all()
    assert backbone.weights_id.startswith("file:")
