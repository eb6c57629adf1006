"""Everything one fine-tuning run works with, built once: the splits, the preprocessing, the trained network
(and its DDP wrapper), the optimizer, scheduler and gradient scaler, and the data loaders."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from shelfsight.adapt.finetune_config import FinetuneConfig, FinetuneError
from shelfsight.adapt.finetune_data import LabelledImages, Sample, collate, train_transform, worker_options
from shelfsight.adapt.finetune_model import (
    FinetuneNet,
    build_backbone_optimizer,
    build_criterion,
    build_scheduler,
    freeze_unused,
)
from shelfsight.adapt.finetune_processes import Processes, amp_dtype
from shelfsight.adapt.splits import LabelledSplits, at_most_per_class, labelled_splits
from shelfsight.backbones import Backbone, Preprocess, build_pixel_transform
from shelfsight.catalog import Catalog
from shelfsight.protocols import ClassificationSplits


@dataclass
class FinetuneRun:
    """One fine-tuning run's settings, data and trained objects (``model`` is ``net`` or its DDP wrapper)."""

    backbone: Backbone
    dataset: str
    folder: Path
    config: FinetuneConfig
    name: str
    processes: Processes
    progress: bool
    """Whether to draw progress bars (the main process only: one speaks for all)."""
    console: Console
    splits: LabelledSplits
    train_preprocess: Preprocess
    eval_preprocess: Preprocess
    amp: torch.dtype | None
    net: FinetuneNet
    optimizer: torch.optim.Optimizer
    layer_decay_applied: bool
    scaler: torch.amp.GradScaler
    model: nn.Module
    train_loader: DataLoader[Sample]
    sampler: DistributedSampler[Sample]
    train_set: LabelledImages
    val_loader: DataLoader[Sample]
    updates_per_epoch: int
    scheduler: Any

    @property
    def device(self) -> torch.device:
        return self.processes.device

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / "checkpoints"

    def describe(self) -> str:
        """The run in one line, for the log."""
        config, world = self.config, self.processes.world
        effective = config.batch_size * config.accum_steps * world
        return (f"fine-tuning {self.backbone.spec.name} on {self.dataset}: {len(self.splits.train)} train / "
                f"{len(self.splits.val)} val images, {len(self.splits.classes)} classes, "
                f"{self.train_preprocess.input_size} px, loss {config.loss}, {config.optimizer} lr {config.lr:g}, "
                f"batch {effective} ({world} process{'es' if world > 1 else ''} on {self.device}"
                f"{', ' + str(self.amp).replace('torch.', '') if self.amp else ''})")


def build_run(catalog: Catalog, backbone: Backbone, dataset: str, folder: Path, config: FinetuneConfig, name: str,
              processes: Processes, progress: bool, console: Console | None,
              splits: ClassificationSplits | None = None) -> FinetuneRun:
    """The run's objects, built in a fixed order (the network's random initialisation comes first)."""
    shown = progress and processes.main  # one process speaks for all
    console = (console or Console(stderr=True)) if shown else Console(quiet=True)
    labelled = labelled_splits(dataset, catalog, config.seed, splits=splits)
    if config.train_per_class is not None:
        labelled = at_most_per_class(labelled, config.train_per_class, config.seed)
    if len(labelled.train) < 2 * processes.world or not labelled.val:
        raise FinetuneError(f"{dataset}: fine-tuning needs at least two training images per process and a "
                            f"validation set; got {len(labelled.train)} and {len(labelled.val)}")
    size = config.input_size or backbone.preprocess.input_size
    train_preprocess = backbone.preprocess.replace(input_size=size)
    eval_preprocess = backbone.preprocess.replace(input_size=config.eval_input_size or size)
    amp = amp_dtype(config, processes.device)
    net = _build_net(backbone, config, len(labelled.classes), train_preprocess.input_size, processes.device)
    optimizer, layered = build_backbone_optimizer(net, config)
    if config.layer_decay is not None and not layered:
        console.print(f"[yellow]layer_decay ignored[/]: {backbone.spec.name} has no layer grouping "
                      "(timm models and EfficientNet-Lite have one); every layer uses lr.")
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    model = _distributed(net, processes)
    train_loader, sampler, train_set = _train_loader(labelled, config, train_preprocess, processes)
    val_loader = _val_loader(labelled, config, eval_preprocess, processes)
    updates_per_epoch = math.ceil(len(train_loader) / config.accum_steps)
    scheduler = build_scheduler(optimizer, config, updates_per_epoch)
    return FinetuneRun(backbone, dataset, folder, config, name, processes, shown, console, labelled,
                       train_preprocess, eval_preprocess, amp, net, optimizer, layered, scaler, model, train_loader,
                       sampler, train_set, val_loader, updates_per_epoch, scheduler)


def _build_net(backbone: Backbone, config: FinetuneConfig, n_classes: int, side: int,
               device: torch.device) -> FinetuneNet:
    """A float32 copy of the encoder (the backbone itself is left untouched) under a seeded criterion."""
    encoder = copy.deepcopy(backbone.encoder).float()
    with torch.no_grad():
        dim = int(encoder.eval()(torch.zeros(1, 3, side, side)).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        criterion = build_criterion(config, dim, n_classes)
    net = FinetuneNet(encoder, criterion)
    freeze_unused(net, side)
    return net.to(device)


def _distributed(net: FinetuneNet, processes: Processes) -> nn.Module:
    """``net`` itself in one process, else wrapped in DistributedDataParallel."""
    if processes.world == 1:
        return net
    device = processes.device
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _train_loader(splits: LabelledSplits, config: FinetuneConfig, preprocess: Preprocess, processes: Processes,
                  ) -> tuple[DataLoader[Sample], DistributedSampler[Sample], LabelledImages]:
    """This rank's shard of the augmented training images, reshuffled each epoch (``sampler.set_epoch``)."""
    draft = int(preprocess.input_size / math.sqrt(config.scale[0]))
    images = LabelledImages(splits.train, splits.y_train, train_transform(config, preprocess), draft, seed=config.seed)
    sampler: DistributedSampler[Sample] = DistributedSampler(
        images, num_replicas=processes.world, rank=processes.rank, shuffle=True, seed=config.seed)
    batch = min(config.batch_size, len(sampler))
    loader = DataLoader(images, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate,
                        **worker_options(config, processes.device))
    return loader, sampler, images


def _val_loader(splits: LabelledSplits, config: FinetuneConfig, preprocess: Preprocess,
                processes: Processes) -> DataLoader[Sample]:
    """This rank's share of the validation images, unpadded (counts are summed over ranks)."""
    rank, world = processes.rank, processes.world
    images = LabelledImages(splits.val[rank::world], splits.y_val[rank::world], build_pixel_transform(preprocess),
                            preprocess.resize_size)
    return DataLoader(images, batch_size=config.batch_size * 2, shuffle=False, collate_fn=collate,
                      **worker_options(config, processes.device))
