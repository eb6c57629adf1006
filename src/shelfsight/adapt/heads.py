"""The heads a service can tag with: the top-tuning MLP trained on frozen embeddings (Czerwinska et al., arXiv
2504.07567), and the linear heads of the ``linear`` and ``ncm`` cells (:class:`LinearHead`).

The paper's top-tuned embedding is the penultimate layer's output, so the head keeps dropout outside the
hidden blocks: ``embed`` returns the last block's activation output, which dropout never touches at
inference and which the class layer reads from.

A linear probe (scikit-learn's logistic regression) and the nearest class mean are both one linear layer over
the L2-normalised embedding, so they share one saved form (``head.json`` + ``head.safetensors``, as the MLP's
folder): class scores ``scale * x @ weight.T + bias``, probabilities their softmax.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from torch import nn

from shelfsight.errors import ShelfsightError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

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


# ---------------------------------------------------------------- linear heads (linear probe, NCM)

LINEAR_HEAD_FORMAT = "shelfsight-linear-head"
HEAD_FILES = ("head.json", "head.safetensors")
"""A saved head's folder, whatever its kind (the MLP's too: ``toptune_inference.HEAD_META``/``HEAD_WEIGHTS``)."""
LinearKind = Literal["linear", "ncm"]
NCM_SCALE_BOUNDS = (1.0, 200.0)


class HeadFormatError(ShelfsightError):
    """A head folder cannot be read as a saved head."""


@dataclass(frozen=True)
class LinearHead:
    """Class scores ``scale * normalize(x) @ weight.T + bias`` over an embedding; probabilities their softmax.

    The input is L2-normalised (a no-op on extraction's unit vectors) so that a cosine head (NCM) stays one.
    It changes tagging only: retrieval keeps the backbone's vectors (a linear probe does not change them)."""

    kind: LinearKind
    weight: np.ndarray
    """(C, D) float64."""
    bias: np.ndarray
    """(C,) float64."""
    classes: tuple[str, ...]
    scale: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],) or len(self.classes) != len(self.bias):
            raise ValueError(f"a linear head needs weight (C, D), bias (C,) and C classes; got {self.weight.shape}, "
                             f"{self.bias.shape} and {len(self.classes)} classes")

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return self.scale * (rows / np.where(norms > 0, norms, 1.0)) @ self.weight.T + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, C) float64: the softmax of the class scores (a logistic regression's ``predict_proba``)."""
        return np.asarray(softmax(self.logits(x), axis=1))


def logistic_head(model: LogisticRegression, classes: Sequence[str], params: Mapping[str, Any]) -> LinearHead:
    """The head of a fitted scikit-learn logistic regression: its ``decision_function`` as class scores, so the
    softmax equals ``predict_proba`` (multinomial; with two classes the one score ``z`` becomes ``[0, z]``,
    whose softmax is the sigmoid). ``classes[i]`` names label ``i``; ``model.classes_`` says which it saw."""
    coef, intercept = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
    if len(model.classes_) == 2:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    names = tuple(classes[int(label)] for label in model.classes_)
    return LinearHead("linear", coef, intercept, names, 1.0, dict(params))


def ncm_head(means: np.ndarray, classes: Sequence[str], x_train: np.ndarray, y_train: np.ndarray) -> LinearHead:
    """Class means as a cosine head. Cosines lie in [-1, 1], so their plain softmax is near uniform: the scale
    (a temperature) is the one that minimises the training photos' negative log-likelihood, which leaves
    every prediction as it is and makes the probabilities mean something (optimistic: the same photos made
    the means)."""
    weight = np.asarray(means, np.float64)
    cosines = np.asarray(x_train, np.float64) @ weight.T
    labels = np.asarray(y_train)

    def nll(scale: float) -> float:
        return float(-log_softmax(scale * cosines, axis=1)[np.arange(len(labels)), labels].mean())

    scale = float(minimize_scalar(nll, bounds=NCM_SCALE_BOUNDS, method="bounded").x) if len(labels) else 1.0
    return LinearHead("ncm", weight, np.zeros(len(weight)), tuple(classes), scale, {"scale_fitted_on": "train"})


def save_linear_head(path: str | Path, head: LinearHead) -> Path:
    """A folder ``shelfsight index --head`` takes: ``head.safetensors`` (weight, bias) and ``head.json``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    meta_name, weights_name = HEAD_FILES
    save_arrays({"weight": np.ascontiguousarray(head.weight), "bias": np.ascontiguousarray(head.bias)},
                str(folder / weights_name))
    meta = {"format": LINEAR_HEAD_FORMAT, "version": 1, "kind": head.kind, "in_dim": head.in_dim,
            "n_classes": head.n_classes, "classes": list(head.classes), "scale": head.scale,
            "input": "L2-normalised embedding", "params": head.params}
    (folder / meta_name).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return folder


def head_format(path: str | Path) -> str:
    """The ``format`` a saved head's ``head.json`` declares (``shelfsight-mlp-head`` or ``shelfsight-linear-head``)."""
    meta_path = Path(path) / HEAD_FILES[0]
    if not meta_path.is_file():
        raise HeadFormatError(f"{path}: not a saved head (no {HEAD_FILES[0]}); a head folder is RUN/work/CELL/head "
                              "of a toptune, linear or ncm cell")
    try:
        return str(json.loads(meta_path.read_text(encoding="utf-8")).get("format"))
    except (json.JSONDecodeError, AttributeError) as error:
        raise HeadFormatError(f"{meta_path}: not readable as a head description ({error})") from error


def load_linear_head(path: str | Path) -> LinearHead:
    """A head saved by :func:`save_linear_head`; its probabilities equal those of the head that was saved."""
    folder = Path(path)
    meta_path, weights_path = (folder / name for name in HEAD_FILES)
    if head_format(folder) != LINEAR_HEAD_FORMAT or not weights_path.is_file():
        raise HeadFormatError(f"{folder}: not a saved linear head (expected {LINEAR_HEAD_FORMAT} in {HEAD_FILES})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    arrays = load_arrays(str(weights_path))
    try:
        return LinearHead(meta["kind"], arrays["weight"], arrays["bias"], tuple(meta["classes"]),
                          float(meta["scale"]), dict(meta.get("params", {})))
    except (KeyError, ValueError) as error:
        raise HeadFormatError(f"{folder}: weights and {HEAD_FILES[0]} do not describe one head ({error})") from error
