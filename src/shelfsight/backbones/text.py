"""Text towers of contrastive (text-image) backbones: words to vectors in the image embedding's space.

A CLIP or SigLIP model is two towers trained so that a photo and its caption land close together; the
text tower is what allows tagging with labels no photo was trained for (zero-shot) and searching photos by
words. The library does the work: open_clip's tokenizer and ``encode_text``, transformers' tokenizer and
``get_text_features``. Vectors are L2-normalised exactly as image embeddings are in extraction, so a text
vector and an image vector compare by their dot product (cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shelfsight.errors import ModelUnavailableError

Tokens = dict[str, torch.Tensor]


class NoTextTowerError(ModelUnavailableError):
    """A model without a text tower was asked for text vectors (zero-shot tagging, text search)."""


class TextTower(nn.Module):
    """Token ids to projected text features, through the library's own call."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = model
        self.mode = mode

    def forward(self, tokens: Tokens) -> torch.Tensor:
        if self.mode == "open_clip":
            features = self.model.encode_text(tokens["input_ids"])  # type: ignore[operator]
        else:
            features = pooled_features(self.model.get_text_features(**tokens))  # type: ignore[operator]
        return features.float()

    @property
    def device(self) -> torch.device:
        """Where the text tower's weights are (the image tower, shared with the image encoder, may have been
        moved elsewhere for extraction)."""
        for name in ("text", "text_model", "token_embedding"):
            part = getattr(self.model, name, None)
            first = next(part.parameters(), None) if isinstance(part, nn.Module) else None
            if first is not None:
                return first.device
        return next(self.model.parameters()).device


def pooled_features(output: Any) -> torch.Tensor:
    """transformers 5 returns the projected features as ``pooler_output``; earlier versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class TextEncoder:
    """A loaded text tower with its tokenizer: ``encode(texts)`` gives ``(n, dim)`` unit float32 vectors."""

    tower: TextTower
    tokenize: Callable[[list[str]], Tokens]
    dim: int
    max_tokens: int
    """The tower's context length: longer texts are truncated by the tokenizer."""
    logit_scale: float = 100.0
    """The temperature the model was trained with (cosine x scale = logit): turns similarities to labels into
    probabilities over them."""

    def encode(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Unit vectors, one per text, in the order given; normalised as image embeddings are."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        device = self.tower.device
        parts = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize(list(texts[start:start + batch_size]))
                features = self.tower({name: value.to(device) for name, value in tokens.items()})
                parts.append(F.normalize(features, dim=1, eps=1e-12).cpu().numpy().astype(np.float32))
        return np.concatenate(parts)

    @property
    def num_parameters(self) -> int:
        """Parameters of the whole model that holds the text tower (a cost of zero-shot tagging)."""
        return sum(p.numel() for p in self.tower.parameters())


def open_clip_text_encoder(model: nn.Module, arch: str) -> TextEncoder:
    """open_clip's tokenizer for ``arch`` (an architecture name or ``hf-hub:ORG/NAME``) and ``encode_text``."""
    import open_clip

    tokenizer = _read_tokenizer(lambda: open_clip.get_tokenizer(arch), arch)

    def tokenize(texts: list[str]) -> Tokens:
        return {"input_ids": tokenizer(texts)}

    tower = TextTower(model, "open_clip").eval()
    dim = int(_probe_dim(tower, tokenize))
    return TextEncoder(tower, tokenize, dim, int(getattr(tokenizer, "context_length", 77)), _logit_scale(model))


def transformers_text_encoder(model: nn.Module, location: str, revision: str | None) -> TextEncoder:
    """The checkpoint's own tokenizer and ``get_text_features``. SigLIP was trained on texts padded to the
    full context length, so its tokens are padded that way; CLIP's are padded to the longest of a batch."""
    import transformers

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    tokenizer = _read_tokenizer(lambda: transformers.AutoTokenizer.from_pretrained(location, **kwargs), location)
    _require_a_vocabulary(tokenizer, location)
    config: Any = model.config
    max_tokens = int(config.text_config.max_position_embeddings)
    padding: str | bool = "max_length" if "siglip" in str(config.model_type) else True

    def tokenize(texts: list[str]) -> Tokens:
        encoded = tokenizer(texts, padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt")
        return {name: encoded[name] for name in ("input_ids", "attention_mask") if name in encoded}

    tower = TextTower(model, "transformers").eval()
    return TextEncoder(tower, tokenize, int(_probe_dim(tower, tokenize)), max_tokens, _logit_scale(model))


def _logit_scale(model: nn.Module) -> float:
    """``exp(logit_scale)``, the learned temperature of CLIP-style models (both libraries store its log)."""
    scale = getattr(model, "logit_scale", None)
    return float(torch.as_tensor(scale).detach().exp()) if scale is not None else 100.0


def _read_tokenizer(read: Callable[[], Any], where: str) -> Any:
    """The library's tokenizer; one that cannot be read (offline, not in the cache) is a clear error."""
    try:
        return read()
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailableError(f"cannot read the tokenizer of {where!r} for its text tower: {first[:300]}. "
                                    "Fill the Hugging Face cache (HF_HOME) on a connected machine and copy it "
                                    "here, or name a saved model folder that holds its tokenizer files.") from exc


def _require_a_vocabulary(tokenizer: Any, where: str) -> None:
    """transformers builds a tokenizer with an empty vocabulary when a folder has no tokenizer files, and every
    word then reads as unknown: refuse it rather than compute vectors of nothing."""
    ids = tokenizer(["a photo of a product"], add_special_tokens=False)["input_ids"][0]
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        raise ModelUnavailableError(f"cannot read the tokenizer of {where!r} for its text tower: it reads every "
                                    "word as unknown (its vocabulary files are missing). Save the checkpoint's "
                                    "tokenizer with the model, or fill the Hugging Face cache on a connected machine.")


def has_text_features(model: nn.Module) -> bool:
    """Whether a transformers model is a dual encoder (CLIP, SigLIP, ...): both feature calls exist."""
    return callable(getattr(model, "get_text_features", None)) and callable(getattr(model, "get_image_features", None))


def _probe_dim(tower: TextTower, tokenize: Callable[[list[str]], Tokens]) -> int:
    """The width of the text vectors, read from one encoded text (configs name it differently)."""
    with torch.inference_mode():
        return int(tower(tokenize(["a"])).shape[1])


def require_text_encoder(encoder: TextEncoder | None, model: str, why: str) -> TextEncoder:
    """The text tower, or a clear error naming the model and models that have one."""
    if encoder is None:
        raise NoTextTowerError(
            f"{why} needs a text tower, and backbone '{model}' has none (it embeds images only). Use a "
            "text-image model: an open_clip one (clip_vit_b16_laion2b, siglip_vit_b16, marqo_ecommerce_b, "
            "open_clip:ARCH:TAG) or a transformers CLIP/SigLIP checkpoint (hf:openai/clip-vit-base-patch16).")
    return encoder
