"""The top-tuning head: a small MLP trained on frozen embeddings (Czerwinska et al., arXiv 2504.07567).

The paper's top-tuned embedding is the penultimate layer's output, so the head keeps dropout outside the
hidden blocks: ``embed`` returns the last block's activation output, which dropout never touches at
inference and which the class layer reads from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

Norm = Literal["batch", "layer", "none"]
Activation = Literal["relu", "gelu"]
HIDDEN_LAYER_CHOICES = (2, 3)


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the head; ``layers`` counts the fully connected hidden layers (the paper uses 2 or 3)."""

    layers: int = 2
    width: int = 512
    norm: Norm = "batch"
    activation: Activation = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.layers not in HIDDEN_LAYER_CHOICES:
            raise ValueError(f"layers must be one of {HIDDEN_LAYER_CHOICES}, got {self.layers!r}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width!r}")
        if self.norm not in get_args(Norm):
            raise ValueError(f"norm must be one of {get_args(Norm)}, got {self.norm!r}")
        if self.activation not in get_args(Activation):
            raise ValueError(f"activation must be one of {get_args(Activation)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class Dropout(nn.Module):
    """Inverted dropout with a thresholded uniform mask: same semantics as ``nn.Dropout``, but cheaper on CPU
    than ``bernoulli_`` (measurements in docs/finetuning.md)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _norm_layer(kind: Norm, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def _activation(kind: Activation) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.GELU()


def _hidden_block(in_dim: int, config: HeadConfig) -> nn.Sequential:
    """Linear -> norm -> activation; dropout is applied by the head so that ``embed`` can stop before it."""
    return nn.Sequential(nn.Linear(in_dim, config.width), _norm_layer(config.norm, config.width),
                         _activation(config.activation))


class MLPHead(nn.Module):
    """Hidden blocks (Linear -> norm -> activation -> dropout) then a linear class layer."""

    def __init__(self, in_dim: int, n_classes: int, config: HeadConfig) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"in_dim and n_classes must be positive, got {in_dim} and {n_classes}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.config = config
        dims = [in_dim] + [config.width] * (config.layers - 1)
        self.hidden = nn.ModuleList(_hidden_block(d, config) for d in dims)
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(config.width, n_classes)

    @property
    def embed_dim(self) -> int:
        return self.config.width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate output: the last hidden block's activation, before dropout and the class layer."""
        last = len(self.hidden) - 1
        for index, block in enumerate(self.hidden):
            x = block(x)
            if index < last:
                x = self.dropout(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.dropout(self.embed(x)))
