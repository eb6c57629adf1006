"""Fine-tuning settings: one frozen dataclass, validated on construction, readable from YAML."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from shelfsight.errors import ShelfsightError

Loss = Literal["ce", "arcface", "proxy_anchor"]
Augment = Literal["timm", "torchvision", "none"]
Amp = Literal["auto", "bf16", "fp16", "off"]
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant")


class FinetuneError(ShelfsightError):
    """Fine-tuning cannot proceed as configured (data, loss, checkpoint)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """What fine-tuning does; every field has a default that suits a small CNN on a few thousand photos.

    ``lr`` is the peak learning rate of the backbone; the classifier (and a metric loss's own parameters)
    get ``lr * head_lr_scale``: they start far from where they end. ``layer_decay`` (e.g. 0.75) scales each
    earlier layer's rate by that factor (BEiT), where the backbone's layers can be grouped. ``batch_size``
    is per process and per step: the effective batch is ``batch_size * accum_steps * processes``.
    ``input_size`` is the training crop (default: the backbone's); ``eval_input_size`` the one the saved
    backbone embeds at (default: ``input_size``). ``amp`` applies on CUDA only.
    """

    epochs: int = 10
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 3e-4
    head_lr_scale: float = 10.0
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    layer_decay: float | None = None
    scheduler: str = "cosine"
    warmup_epochs: float = 0.5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    clip_grad: float | None = None
    train_per_class: int | None = None
    """Train on at most this many photos of each class (a seeded draw; validation and test untouched): a
    budget for demos and quick looks, recorded with the result."""
    input_size: int | None = None
    eval_input_size: int | None = None
    augment: Augment = "timm"
    scale: tuple[float, float] = (0.25, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None
    loss: Loss = "ce"
    init_head: Literal["imprint", "random"] = "imprint"
    """``imprint``: class vectors start as the mean pre-trained embedding of each class (Qi et al. 2018),
    so training starts from a nearest-class-mean classifier instead of sending noise into the backbone."""
    label_smoothing: float = 0.1
    cosine_scale: float = 16.0
    loss_params: dict[str, float] = field(default_factory=dict)
    """Keyword arguments of the pytorch-metric-learning loss (ArcFace: margin, scale; ProxyAnchor: margin, alpha)."""
    amp: Amp = "auto"
    patience: int = 3
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "head_lr_scale", "cosine_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.warmup_lr < 0 or self.min_lr < 0:
            raise ValueError("weight_decay, warmup_epochs, warmup_lr and min_lr must not be negative")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        choices = (("loss", get_args(Loss)), ("augment", get_args(Augment)), ("amp", get_args(Amp)),
                   ("init_head", ("imprint", "random")))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {self.scale}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.hflip <= 1:
            raise ValueError("label_smoothing must be in [0, 1) and hflip in [0, 1]")
        for name in ("input_size", "eval_input_size", "num_workers", "train_per_class"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "num_workers" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive, got {self.clip_grad}")
        from timm.optim import list_optimizers

        if self.optimizer.lower() not in list_optimizers():
            raise ValueError(f"optimizer {self.optimizer!r} is not a timm optimizer; e.g. adamw, sgd, lamb, lion")


def load_finetune_config(source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                         **overrides: Any) -> FinetuneConfig:
    """Validated settings from a YAML file (its top level, or its ``finetune:`` section, so a bench config
    works) or a mapping, with the ``overrides`` that are not None on top. Errors name the file and field."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    class Settings(BaseModel):  # a strict parent makes pydantic refuse unknown keys of the dataclass
        model_config = ConfigDict(extra="forbid")
        finetune: FinetuneConfig

    where, raw = "finetune settings", {}
    if isinstance(source, Mapping):
        raw = dict(source)
    elif source is not None:
        path, where = Path(source), str(source)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise FinetuneError(f"{path}: cannot read the settings ({exc}).") from None
        if not isinstance(data, dict):
            raise FinetuneError(f"{path}: expected a mapping of fine-tuning settings.")
        raw = dict(data["finetune"] if isinstance(data.get("finetune"), dict) else data)
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings.model_validate({"finetune": raw}).finetune
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'][1:]) or '(settings)'}: {error['msg']}"
                             for error in exc.errors())
        raise FinetuneError(f"{where}: {problems}") from None
