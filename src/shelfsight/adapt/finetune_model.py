"""What fine-tuning trains and how: the cosine head (or a metric-learning loss's class vectors) on top of
the encoder, as one module, and timm's optimizer and scheduler over it, with layer-wise decay where the
backbone's layers can be grouped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shelfsight.adapt.finetune_config import FinetuneConfig, FinetuneError, Loss
from shelfsight.backbones.loaders import FeatureEncoder


class CosineSoftmax(nn.Module):
    """Cross-entropy over scaled cosine logits (NormSoftmax), with label smoothing."""

    def __init__(self, dim: int, n_classes: int, *, scale: float, label_smoothing: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * dim ** -0.5)
        self.scale = scale
        self.label_smoothing = label_smoothing

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.scale * F.normalize(features.float(), dim=1) @ F.normalize(self.weight, dim=1).T
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def class_weights(self) -> torch.Tensor:
        return self.weight

    def set_class_weights(self, weights: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weights)


class MetricLearningLoss(nn.Module):
    """A pytorch-metric-learning loss with learned class vectors: ArcFace (``W``) or ProxyAnchor (proxies)."""

    def __init__(self, kind: Loss, dim: int, n_classes: int, params: dict[str, float]) -> None:
        super().__init__()
        try:
            from pytorch_metric_learning import losses
        except ImportError:
            raise FinetuneError(f"loss {kind!r} needs pytorch-metric-learning: "
                                "pip install pytorch-metric-learning") from None
        make = losses.ArcFaceLoss if kind == "arcface" else losses.ProxyAnchorLoss
        try:
            self.loss = make(num_classes=n_classes, embedding_size=dim, **params)
        except TypeError as exc:
            raise FinetuneError(f"loss_params {params} do not fit {make.__name__}: {exc}") from None
        self.kind = kind

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.loss(features.float(), labels)
        return loss

    def class_weights(self) -> torch.Tensor:
        return self.loss.W.T if self.kind == "arcface" else self.loss.proxies

    def set_class_weights(self, weights: torch.Tensor) -> None:
        with torch.no_grad():
            (self.loss.W if self.kind == "arcface" else self.loss.proxies).copy_(
                weights.T if self.kind == "arcface" else weights)


def build_criterion(config: FinetuneConfig, dim: int, n_classes: int) -> CosineSoftmax | MetricLearningLoss:
    if config.loss == "ce":
        return CosineSoftmax(dim, n_classes, scale=config.cosine_scale, label_smoothing=config.label_smoothing)
    return MetricLearningLoss(config.loss, dim, n_classes, dict(config.loss_params))


def predict_classes(class_weights: torch.Tensor | np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Class indices of L2-normalised embeddings under a cosine classifier (``(C, D)`` class vectors)."""
    weights = F.normalize(torch.as_tensor(class_weights, dtype=torch.float32), dim=1)
    scores = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)) @ weights.T
    return scores.argmax(dim=1).numpy().astype(np.int64)


class FinetuneNet(nn.Module):
    """The encoder and the criterion as one module: DDP and the optimizer see every trained parameter."""

    def __init__(self, encoder: FeatureEncoder, criterion: CosineSoftmax | MetricLearningLoss) -> None:
        super().__init__()
        self.encoder = encoder
        self.criterion = criterion

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.criterion(self.encoder(pixels), labels)
        return loss

    def class_weights(self) -> torch.Tensor:
        return self.criterion.class_weights()

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Layer index of each parameter name, for timm's layer-wise decay: the backbone's own grouping,
        then the criterion on top. Raises ``LookupError`` when the backbone has no grouping."""
        inner = _inner_layer_ids(self.encoder)
        if inner is None:
            raise LookupError("no layer grouping")
        top = max(inner.values(), default=0) + 1
        prefix = "encoder.model."

        def ordinal(name: str) -> int:
            return inner.get(name[len(prefix):], top - 1) if name.startswith(prefix) else top

        return ordinal


def _inner_layer_ids(encoder: FeatureEncoder) -> dict[str, int] | None:
    """timm models group themselves; EfficientNet-Lite (lukemelas) is stem, 16 blocks, head."""
    from timm.models import group_parameters

    model: Any = encoder.model
    if hasattr(model, "group_matcher"):
        return dict(group_parameters(model, model.group_matcher(coarse=False), reverse=True))
    if encoder.mode == "efficientnet_lite":
        blocks = len(model._blocks)

        def lite(name: str) -> int:
            if name.startswith("_blocks."):
                return int(name.split(".")[1]) + 1
            return 0 if name.startswith(("_conv_stem", "_bn0")) else blocks + 1

        return {name: lite(name) for name, _ in model.named_parameters()}
    return None


def build_backbone_optimizer(net: FinetuneNet, config: FinetuneConfig) -> tuple[torch.optim.Optimizer, bool]:
    """timm's optimizer over timm's parameter groups (no decay on biases and norms; layer-wise decay when
    asked and possible); the criterion's groups get ``head_lr_scale``. Returns whether layer decay applied."""
    from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay

    head = {id(p) for p in net.criterion.parameters()}
    layered = False
    if config.layer_decay is not None:
        try:
            net.group_matcher()
            groups = param_groups_layer_decay(net, weight_decay=config.weight_decay, layer_decay=config.layer_decay)
            layered = True
        except LookupError:
            groups = param_groups_weight_decay(net, weight_decay=config.weight_decay)
    else:
        groups = param_groups_weight_decay(net, weight_decay=config.weight_decay)
    split: list[dict[str, Any]] = []
    for group in groups:  # a group may mix backbone and head parameters: split it
        for is_head in (False, True):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                scale = group.get("lr_scale", 1.0) * (config.head_lr_scale if is_head else 1.0)
                split.append({**group, "params": params, "lr_scale": scale})
    optimizer = create_optimizer_v2(split, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    return optimizer, layered


def build_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, updates_per_epoch: int) -> Any:
    """A timm scheduler stepped per update (smooth warmup even over a few epochs); it is a pure function
    of the update count, so a resumed run only needs to be told where it is."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=config.scheduler, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,  # type: ignore[arg-type]
        warmup_lr=config.warmup_lr, min_lr=config.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def freeze_unused(net: FinetuneNet, side: int) -> None:
    """Freeze parameters the forward never uses (EfficientNet-Lite's ImageNet ``_fc``): DDP requires a
    gradient for every trained parameter, and weight decay would shrink them for nothing."""
    training = net.training
    net.eval()
    net.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        net(torch.zeros(2, 3, side, side), torch.zeros(2, dtype=torch.int64)).backward()
    for parameter in net.parameters():
        if parameter.grad is None:
            parameter.requires_grad_(False)
    net.zero_grad(set_to_none=True)
    net.train(training)
