"""Backbone registry and every loader path, on tiny random configs and the real EfficientNet-Lite weights."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfsight.backbones import (
    count_forward_parameters,
    count_parameters,
    get_spec,
    list_specs,
    load_backbone,
    register,
    register_file,
    weights_status,
)
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


# ── weights identified by content: a fake Hugging Face cache, loaded offline through the real loaders ──

TIMM_REPO = "timm/test_resnet.r160_in1k"
TINY_HF_REPO = "shelfsight-test/tiny-dinov2"


def _commit(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # the form of a git commit hash


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (HF_HUB_CACHE); HF_HUB_OFFLINE=1 (conftest) keeps the hub out of reach."""
    import huggingface_hub.constants

    root = tmp_path / "hf-hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))  # read at import time
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    return root


def _snapshot(cache: Path, repo: str, commit: str, *, main: bool = True) -> Path:
    """``models--ORG--NAME/snapshots/COMMIT/`` (and ``refs/main`` pointing at it), the hub cache's layout."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if main:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
    return snapshot


def _timm_weights(snapshot: Path, seed: int) -> dict[str, torch.Tensor]:
    """A published-style test_resnet checkpoint (1000-class head included) as ``model.safetensors``."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file(state, str(snapshot / "model.safetensors"))
    return state


def _replace_one_byte(path: Path) -> None:
    """Flip a bit of the file's last byte (tensor data), written as caches write: a new file renamed over."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    temporary = path.with_name(path.name + ".incoming")
    temporary.write_bytes(bytes(data))
    os.replace(temporary, path)


def test_timm_hub_weights_are_identified_by_the_file_that_was_loaded(hub_cache: Path) -> None:
    commit = _commit("first upload")
    snapshot = _snapshot(hub_cache, TIMM_REPO, commit)
    published = _timm_weights(snapshot, seed=3)
    weights = snapshot / "model.safetensors"
    backbone = load_backbone("timm:test_resnet")  # pretrained=True: timm resolves the hub file offline
    assert backbone.weights_id == f"hf:{TIMM_REPO}@{commit}:sha256:{_sha(weights)}"
    assert backbone.cache_identity()["weights"] == backbone.weights_id
    loaded = backbone.encoder.model.state_dict()
    assert {k for k in published if k not in loaded} == {"fc.weight", "fc.bias"}  # num_classes=0 drops the head
    assert all(torch.equal(loaded[k], published[k]) for k in loaded)  # the very weights of that file
    _replace_one_byte(weights)
    changed = load_backbone("timm:test_resnet")
    assert changed.weights_id == f"hf:{TIMM_REPO}@{commit}:sha256:{_sha(weights)}"
    assert changed.weights_id != backbone.weights_id  # same name, same commit: the content decides
    assert changed.cache_identity() != backbone.cache_identity()


def test_a_pinned_timm_revision_loads_that_snapshot_not_main(hub_cache: Path) -> None:
    old, new = _commit("old"), _commit("new")
    old_snapshot = _snapshot(hub_cache, TIMM_REPO, old, main=False)
    _timm_weights(old_snapshot, seed=1)
    _timm_weights(_snapshot(hub_cache, TIMM_REPO, new), seed=2)  # refs/main -> new
    spec = register(BackboneSpec(name="pinned_test_resnet", family="supervised", library="timm",
                                 checkpoint="test_resnet", preprocess=Preprocess(input_size=160), revision=old),
                    overwrite=True)
    pinned = load_backbone(spec.name)
    assert pinned.weights_id == f"hf:{TIMM_REPO}@{old}:sha256:{_sha(old_snapshot / 'model.safetensors')}"
    assert pinned.cache_identity()["revision"] == old
    assert load_backbone("timm:test_resnet").weights_id.startswith(f"hf:{TIMM_REPO}@{new}:sha256:")
    assert weights_status(spec) == "cached"


def test_weights_that_cannot_be_located_after_a_load_are_marked_unverified(
        hub_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from shelfsight.backbones import provenance

    _timm_weights(_snapshot(hub_cache, TIMM_REPO, _commit("x")), seed=0)
    monkeypatch.setattr(provenance, "hf_cached_file", lambda *args, **kwargs: None)  # the lookup comes back empty
    with caplog.at_level(logging.WARNING, logger="shelfsight.backbones"):
        backbone = load_backbone("timm:test_resnet")
    assert backbone.weights_id == "unverified:hub:timm:test_resnet"  # a name, clearly marked; no digest claimed
    assert "could not be located" in caplog.text and "timm:test_resnet" in caplog.text


def test_transformers_hub_weights_are_identified_by_commit_and_digest(hub_cache: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    first, second = _commit("tiny one"), _commit("tiny two")
    for commit, seed in ((first, 0), (second, 1)):
        torch.manual_seed(seed)
        Dinov2Model(config).save_pretrained(_snapshot(hub_cache, TINY_HF_REPO, commit))  # refs/main -> second
    folder = hub_cache / f"models--{TINY_HF_REPO.replace('/', '--')}" / "snapshots"
    latest = load_backbone(f"hf:{TINY_HF_REPO}", preprocess={"input_size": 28})
    assert latest.weights_id == f"hf:{TINY_HF_REPO}@{second}:sha256:{_sha(folder / second / 'model.safetensors')}"
    spec = register(BackboneSpec(name="pinned_tiny_dinov2", family="self-supervised", library="transformers",
                                 checkpoint=TINY_HF_REPO, preprocess=Preprocess(input_size=28), revision=first),
                    overwrite=True)
    pinned = load_backbone(spec.name)  # from_pretrained(revision=first)
    assert pinned.weights_id == f"hf:{TINY_HF_REPO}@{first}:sha256:{_sha(folder / first / 'model.safetensors')}"
    assert not torch.equal(_embed_random(pinned), _embed_random(latest))
    _replace_one_byte(folder / second / "model.safetensors")
    assert load_backbone(f"hf:{TINY_HF_REPO}", preprocess={"input_size": 28}).weights_id == \
        f"hf:{TINY_HF_REPO}@{second}:sha256:{_sha(folder / second / 'model.safetensors')}" != latest.weights_id


def test_torchhub_weights_are_identified_by_the_state_dict_file_they_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    repo = tmp_path / "hubrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        dependencies = ["torch"]

        def _tiny():
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def tiny(pretrained=False):
            model = _tiny()
            if pretrained:  # the usual hubconf way: a URL, cached under TORCH_HOME/hub/checkpoints
                model.load_state_dict(torch.hub.load_state_dict_from_url("https://weights.invalid/tiny-8.pth"))
            return model

        def tiny_from_elsewhere(pretrained=False):
            return _tiny()  # weights from nowhere torch.hub can see
    """))
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(5)
    expected = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    torch.save({f"0.{k}": v for k, v in expected[0].state_dict().items()}, checkpoints / "tiny-8.pth")
    backbone = load_backbone(f"torchhub:{repo}:tiny")
    assert backbone.weights_id == f"torchhub:{repo.resolve()}:sha256:{_sha(checkpoints / 'tiny-8.pth')}"
    assert torch.equal(backbone.encoder.model[0].weight, expected[0].weight)
    unknown = load_backbone(f"torchhub:{repo}:tiny_from_elsewhere")
    assert unknown.weights_id == f"unverified:hub:torchhub:{repo}:tiny_from_elsewhere"
    assert torch.hub.load_state_dict_from_url.__name__ == "load_state_dict_from_url"  # the recorder is removed


def test_revision_is_part_of_the_spec_identity_and_refused_where_it_cannot_apply() -> None:
    pinned = BackboneSpec(name="x", family="supervised", library="timm", checkpoint="y", revision="a" * 40)
    assert pinned.identity() == {"library": "timm", "checkpoint": "y", "revision": "a" * 40}
    assert "revision" not in BackboneSpec(name="x", family="supervised", library="timm", checkpoint="y").identity()
    with pytest.raises(ValueError, match="open_clip checkpoints take no revision"):
        BackboneSpec(name="x", family="contrastive", library="open_clip", checkpoint="ViT-B-16:openai", revision="v1")
    with pytest.raises(ValueError, match="non-empty"):
        BackboneSpec(name="x", family="supervised", library="timm", checkpoint="y", revision=" main")


# ── parameters of the network that produces the embedding ──────────────────────────────────────────


def test_efficientnet_lite_count_leaves_out_the_unused_imagenet_classifier() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    head = sum(p.numel() for p in reference._fc.parameters())
    expected = sum(p.numel() for p in reference.parameters()) - head
    backbone = load_backbone("efficientnet_lite0")
    backbone.encoder.model._fc.weight.requires_grad_(False)
    modes = [m.training for m in backbone.encoder.modules()]
    assert backbone.num_parameters == expected == 3_371_008
    assert count_parameters(backbone.encoder) == expected + head  # the 1000-class layer is there, unused
    assert backbone.spec.params_m == pytest.approx(expected / 1e6, abs=0.005)
    assert [m.training for m in backbone.encoder.modules()] == modes  # counting leaves the encoder as it was
    assert not backbone.encoder.model._fc.weight.requires_grad and backbone.encoder.model._fc.bias.requires_grad


def test_timm_counts_exclude_the_classifier_head() -> None:
    import timm

    full = timm.create_model("test_vit", pretrained=False, num_classes=1000)
    expected = count_parameters(full) - count_parameters(full.get_classifier())
    assert load_backbone("timm:test_vit", pretrained=False).num_parameters == expected

    class PreLogits(torch.nn.Module):  # a model that keeps its head but never calls it
        def __init__(self) -> None:
            super().__init__()
            self.model = full

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)

    assert count_forward_parameters(PreLogits(), 160) == expected < count_parameters(full)
