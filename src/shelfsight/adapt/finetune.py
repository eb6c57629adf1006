"""Full fine-tuning: the backbone and a classifier trained end to end on a catalogue's images.

The classifier is cosine (NormSoftmax, Zhai and Wu 2019; ArcFace and ProxyAnchor are the same head with
a margin or proxies): logits compare the L2-normalised embedding with one unit vector per class. So the
vector that goes into the index is exactly the one the classifier reads, and classification needs no
second pass over the images: ``argmax(embedding @ class_weights.T)`` on cached embeddings.

Reproducibility: every random stream is derived from ``(seed, epoch, ...)`` rather than carried along:
the data order (``DistributedSampler(seed).set_epoch``), each image's augmentation (seeded by
``(seed, epoch, item)`` inside the dataset, so it does not depend on worker processes or ranks) and the
model's own randomness (dropout, drop-connect: reseeded at each epoch start). A checkpoint at the end of
an epoch therefore needs no RNG state, and resuming from it repeats the run exactly.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the same function initialises the process group
(NCCL on GPUs, gloo on CPUs), shards the data, wraps the model in DistributedDataParallel, sums
validation counts over ranks and writes checkpoints from rank 0 only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from shelfsight.adapt.finetune_config import FinetuneConfig, FinetuneError, load_finetune_config
from shelfsight.adapt.finetune_data import (
    LabelledImages,
    Sample,
    collate,
    derived_seed,
    train_transform,
    worker_options,
)
from shelfsight.adapt.finetune_model import (
    CosineSoftmax,
    FinetuneNet,
    MetricLearningLoss,
    build_criterion,
    build_optimizer,
    build_scheduler,
    freeze_unused,
    predict_classes,
)
from shelfsight.adapt.splits import labelled_splits
from shelfsight.backbones import Backbone, build_pixel_transform, finetuned_name, normalize_pixels
from shelfsight.backbones.finetuned import read_record, spec_to_dict, write_finetuned
from shelfsight.catalog import Catalog
from shelfsight.protocols import ClassificationSplits

__all__ = [
    "CosineSoftmax", "EpochStats", "FinetuneConfig", "FinetuneError", "FinetuneNet", "FinetuneResult",
    "MetricLearningLoss", "build_criterion", "build_optimizer", "build_scheduler", "finetune", "load_finetune_config",
    "predict_classes",
]

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.safetensors"


@dataclass(frozen=True)
class EpochStats:
    """One epoch as the log and the saved record show it (``epoch`` counts from 0)."""

    epoch: int
    train_loss: float
    val_accuracy: float
    lr: float
    images: int
    """Training images processed in this epoch, over all processes."""
    seconds: float
    images_per_s: float


@dataclass
class FinetuneResult:
    """Where the fine-tuned backbone was saved and what it cost (``costs`` follows the bench's names)."""

    folder: Path
    name: str
    classes: list[str]
    best_val_accuracy: float
    best_epoch: int
    epochs: int
    stopped_early: bool
    history: list[EpochStats]
    costs: dict[str, float]
    device: str
    world_size: int
    resumed_from_epoch: int | None = None
    """The epoch a checkpoint was resumed after, or None for a fresh run (or a finished folder re-read)."""


EpochCallback = Callable[[EpochStats], None]


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Processes:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over processes (float64 on the training device)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]


def _start_processes(device: str) -> _Processes:
    """One process, or this rank of a ``torchrun`` launch (process group from the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world == 1 and not dist.is_initialized():
        return _Processes(0, 1, chosen, owns_group=False)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return _Processes(dist.get_rank(), dist.get_world_size(), chosen, owns_group=owns)


def _amp_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


# --------------------------------------------------------------------------------------------- checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def _atomic_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(temporary))
    os.replace(temporary, path)


@dataclass
class _Progress:
    """What a checkpoint carries besides the weights and the optimizer."""

    epoch: int = -1
    updates: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = -1
    stopped_early: bool = False
    train_seconds: float = 0.0
    val_seconds: float = 0.0
    setup_seconds: float = 0.0
    """Imprinting the head (and scoring the imprinted head)."""
    imprinted_accuracy: float | None = None
    images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- training


def finetune(catalog: Catalog, backbone: Backbone, *, dataset: str, output: str | os.PathLike[str],
             config: FinetuneConfig | None = None, name: str | None = None, resume: bool = True,
             progress: bool = True, on_epoch: EpochCallback | None = None,
             console: Console | None = None, splits: ClassificationSplits | None = None) -> FinetuneResult:
    """Fine-tune ``backbone`` on ``catalog`` (train split, or ``splits`` when given; early stopping on validation
    accuracy) and save it in ``output`` as a backbone named ``name`` (default ``BASE@finetune:DATASET``).

    A finished ``output`` is read back, not retrained. Otherwise, with ``resume``, training continues after
    the last checkpoint in ``output/checkpoints``. ``backbone`` itself is left untouched (a copy is trained).
    Works the same in one process and under ``torchrun``.
    """
    config = config or FinetuneConfig()
    folder = Path(output)
    name = name or finetuned_name(backbone.spec.name, dataset)
    if resume and (folder / "finetuned.json").is_file():
        return _result_from_record(folder)
    processes = _start_processes(config.device)
    devices = [processes.device.index or 0] if processes.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
            trainer = _Trainer(catalog, backbone, dataset, folder, config, name, processes, progress, console,
                               splits)
            return trainer.run(resume, on_epoch)
    finally:
        if processes.owns_group:
            dist.destroy_process_group()


def _result_from_record(folder: Path) -> FinetuneResult:
    record = read_record(folder)
    training = record["training"]
    history = [EpochStats(**row) for row in training["history"]]
    return FinetuneResult(folder=folder, name=record["name"], classes=list(record["classes"]),
                          best_val_accuracy=training["best_val_accuracy"], best_epoch=training["best_epoch"],
                          epochs=training["epochs"], stopped_early=training["stopped_early"], history=history,
                          costs=dict(record["costs"]), device=training["device"], world_size=training["world_size"])


class _Trainer:
    """One fine-tuning run; small methods over shared state rather than one long function."""

    def __init__(self, catalog: Catalog, backbone: Backbone, dataset: str, folder: Path, config: FinetuneConfig,
                 name: str, processes: _Processes, progress: bool, console: Console | None,
                 splits: ClassificationSplits | None = None) -> None:
        self.backbone, self.dataset, self.folder, self.config, self.name = backbone, dataset, folder, config, name
        self.processes = processes
        self.device = processes.device
        self.progress = progress and processes.main  # one process speaks for all
        self.console = (console or Console(stderr=True)) if self.progress else Console(quiet=True)
        self.splits = labelled_splits(dataset, catalog, config.seed, splits=splits)
        if len(self.splits.train) < 2 * processes.world or not self.splits.val:
            raise FinetuneError(f"{dataset}: fine-tuning needs at least two training images per process and a "
                                f"validation set; got {len(self.splits.train)} and {len(self.splits.val)}")
        size = config.input_size or backbone.preprocess.input_size
        self.train_preprocess = backbone.preprocess.replace(input_size=size)
        self.eval_preprocess = backbone.preprocess.replace(input_size=config.eval_input_size or size)
        self.amp = _amp_dtype(config, self.device)
        self.net = self._build_net()
        self.optimizer, self.layer_decay_applied = build_optimizer(self.net, config)
        if config.layer_decay is not None and not self.layer_decay_applied:
            self.console.print(f"[yellow]layer_decay ignored[/]: {backbone.spec.name} has no layer grouping "
                               "(timm models and EfficientNet-Lite have one); every layer uses lr.")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.model: nn.Module = self.net
        if processes.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.train_loader, self.sampler, self.train_set = self._train_loader()
        self.val_loader = self._val_loader()
        self.updates_per_epoch = math.ceil(len(self.train_loader) / config.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, config, self.updates_per_epoch)

    # ------------------------------------------------------------------ setup

    def _build_net(self) -> FinetuneNet:
        encoder = copy.deepcopy(self.backbone.encoder).float()
        side = self.train_preprocess.input_size
        with torch.no_grad():
            dim = int(encoder.eval()(torch.zeros(1, 3, side, side)).shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            criterion = build_criterion(self.config, dim, len(self.splits.classes))
        net = FinetuneNet(encoder, criterion)
        freeze_unused(net, side)
        return net.to(self.device)

    def _train_loader(self) -> tuple[DataLoader[Sample], DistributedSampler[Sample], LabelledImages]:
        config, processes = self.config, self.processes
        draft = int(self.train_preprocess.input_size / math.sqrt(config.scale[0]))
        images = LabelledImages(self.splits.train, self.splits.y_train,
                                train_transform(config, self.train_preprocess), draft, seed=config.seed)
        sampler: DistributedSampler[Sample] = DistributedSampler(
            images, num_replicas=processes.world, rank=processes.rank, shuffle=True, seed=config.seed)
        batch = min(config.batch_size, len(sampler))
        loader = DataLoader(images, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate,
                            **worker_options(config, self.device))
        return loader, sampler, images

    def _val_loader(self) -> DataLoader[Sample]:
        """This rank's share of the validation images, unpadded (counts are summed over ranks)."""
        rank, world = self.processes.rank, self.processes.world
        items = self.splits.val[rank::world]
        images = LabelledImages(items, self.splits.y_val[rank::world], build_pixel_transform(self.eval_preprocess),
                                self.eval_preprocess.resize_size)
        return DataLoader(images, batch_size=self.config.batch_size * 2, shuffle=False, collate_fn=collate,
                          **worker_options(self.config, self.device))

    # ------------------------------------------------------------------ run

    def run(self, resume: bool, on_epoch: EpochCallback | None) -> FinetuneResult:
        state, best = _Progress(), None
        resumed_from = None
        checkpoint = self.folder / CHECKPOINTS / LAST
        if resume and checkpoint.is_file():
            state, best = self._load_checkpoint(checkpoint)
            resumed_from = state.epoch
            self.console.print(f"resuming {self.name} after epoch {state.epoch + 1} ({checkpoint})")
        self.console.print(self._describe())
        if resumed_from is None and self.config.init_head == "imprint":
            state.setup_seconds, state.imprinted_accuracy = self._imprint()
        for epoch in range(state.epoch + 1, self.config.epochs):
            if state.stopped_early:
                break
            stats = self._epoch(epoch, state)
            if stats.val_accuracy > state.best_accuracy:
                state.best_accuracy, state.best_epoch = stats.val_accuracy, epoch
                best = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
                if self.processes.main:
                    self._checkpoint_dir().mkdir(parents=True, exist_ok=True)
                    _atomic_safetensors(best, self._checkpoint_dir() / BEST)
            state.epoch = epoch
            state.stopped_early = epoch - state.best_epoch >= self.config.patience and epoch + 1 < self.config.epochs
            self._save_checkpoint(state)
            self._print_epoch(stats, state)
            if on_epoch is not None:
                on_epoch(stats)
        if best is not None:
            self.net.load_state_dict(best)
        return self._save(state, resumed_from)

    def _epoch(self, epoch: int, state: _Progress) -> EpochStats:
        self.sampler.set_epoch(epoch)
        self.train_set.epoch = epoch
        torch.manual_seed(derived_seed(self.config.seed, epoch, self.processes.rank, 1))
        started = time.perf_counter()
        loss, images = self._train_epoch(epoch, state)
        train_seconds = time.perf_counter() - started
        total_loss, total_batches, total_images = self.processes.sum(*loss, images)
        started = time.perf_counter()
        accuracy = self._validate()
        val_seconds = time.perf_counter() - started
        state.train_seconds += train_seconds
        state.val_seconds += val_seconds
        state.images += int(total_images)
        stats = EpochStats(epoch=epoch, train_loss=total_loss / max(total_batches, 1), val_accuracy=accuracy,
                           lr=self._base_lr(), images=int(total_images),
                           seconds=train_seconds + val_seconds,
                           images_per_s=total_images / train_seconds if train_seconds > 0 else float("nan"))
        state.history.append(dataclasses.asdict(stats))
        return stats

    def _base_lr(self) -> float:
        """The scheduler's current value (group rates are it times their ``lr_scale``)."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"]) / float(group.get("lr_scale", 1.0))

    def _train_epoch(self, epoch: int, state: _Progress) -> tuple[tuple[float, float], int]:
        """One pass; returns ((sum of batch losses, batches), images) for this process."""
        self.model.train()
        accum = self.config.accum_steps
        self.scheduler.step_update(state.updates)
        self.optimizer.zero_grad(set_to_none=True)
        total, batches, images = 0.0, 0, 0
        with _bar(self.progress, self.console, len(self.train_loader),
                  f"epoch {epoch + 1}/{self.config.epochs}") as advance:
            for step, (pixels, labels) in enumerate(self.train_loader):
                boundary = (step + 1) % accum == 0 or step + 1 == len(self.train_loader)
                if len(labels) > 1:
                    with self._sync(boundary):
                        loss = self._forward(pixels, labels) / accum
                        self.scaler.scale(loss).backward()
                    total, batches, images = total + float(loss.detach()) * accum, batches + 1, images + len(labels)
                if boundary:
                    self._step()
                    state.updates += 1
                    self.scheduler.step_update(state.updates)
                advance(len(labels), total / max(batches, 1))
        return (total, batches), images

    def _forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = normalize_pixels(pixels.to(self.device, non_blocking=True), self.train_preprocess)
        labels = labels.to(self.device, non_blocking=True)
        with self._autocast():
            loss: torch.Tensor = self.model(batch, labels)
        return loss

    def _step(self) -> None:
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _sync(self, boundary: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients only on the micro-batch that ends an accumulation."""
        if boundary or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _imprint(self) -> tuple[float, float]:
        """Class vectors = normalised mean embedding of each class's training images (centre crops),
        summed over processes so every replica starts from the same head."""
        rank, world = self.processes.rank, self.processes.world
        images = LabelledImages(self.splits.train[rank::world], self.splits.y_train[rank::world],
                                build_pixel_transform(self.train_preprocess), self.train_preprocess.resize_size)
        loader = DataLoader(images, batch_size=self.config.batch_size * 2, collate_fn=collate,
                            **worker_options(self.config, self.device))
        weights = self.net.class_weights()
        sums = torch.zeros(weights.shape, dtype=torch.float64, device=self.device)
        self.net.eval()
        started = time.perf_counter()
        with torch.inference_mode():
            for pixels, labels in loader:
                if len(labels):
                    with self._autocast():
                        features = self.net.encoder(normalize_pixels(pixels.to(self.device), self.train_preprocess))
                    sums.index_add_(0, labels.to(self.device), F.normalize(features.double(), dim=1))
        if world > 1:
            dist.all_reduce(sums)
        empty = sums.norm(dim=1) == 0  # a class with no readable image keeps its random vector
        imprinted = torch.where(empty[:, None], weights.detach().double(), F.normalize(sums, dim=1))
        self.net.criterion.set_class_weights(imprinted.to(weights.dtype))
        accuracy = self._validate()  # the starting point: a nearest-class-mean classifier
        seconds = time.perf_counter() - started
        self.console.print(f"head imprinted from {len(self.splits.train)} training images: val acc {accuracy:.4f} "
                           f"before fine-tuning ({seconds:.0f} s)")
        return seconds, accuracy

    def _validate(self) -> float:
        """Accuracy of the cosine classifier on the validation images, summed over processes."""
        self.net.eval()
        weights = F.normalize(self.net.class_weights().detach().float(), dim=1)
        correct, count = 0, 0
        with torch.inference_mode():
            for pixels, labels in self.val_loader:
                if not len(labels):
                    continue
                batch = normalize_pixels(pixels.to(self.device), self.eval_preprocess)
                with self._autocast():
                    features = self.net.encoder(batch)
                predicted = (F.normalize(features.float(), dim=1) @ weights.T).argmax(dim=1).cpu()
                correct += int((predicted == labels).sum())
                count += len(labels)
        total_correct, total = self.processes.sum(correct, count)
        return total_correct / total if total else 0.0

    # ------------------------------------------------------------------ persistence

    def _checkpoint_dir(self) -> Path:
        return self.folder / CHECKPOINTS

    def _save_checkpoint(self, state: _Progress) -> None:
        if self.processes.main:
            self._checkpoint_dir().mkdir(parents=True, exist_ok=True)
            _atomic_save({"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                          "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                          "progress": dataclasses.asdict(state), "config": _jsonable(dataclasses.asdict(self.config)),
                          "classes": self.splits.classes, "name": self.name},
                         self._checkpoint_dir() / LAST)
        self.processes.barrier()

    def _load_checkpoint(self, path: Path) -> tuple[_Progress, dict[str, torch.Tensor] | None]:
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        if checkpoint["classes"] != self.splits.classes:
            raise FinetuneError(f"{path}: the checkpoint was trained on other classes; delete "
                                f"{self._checkpoint_dir()} or choose another output folder.")
        changed = {k for k, v in checkpoint["config"].items()
                   if k not in ("epochs", "patience", "num_workers", "keep_checkpoints", "device")
                   and _jsonable(v) != _jsonable(getattr(self.config, k, None))}
        if changed:
            raise FinetuneError(f"{path}: the checkpoint was trained with other settings "
                                f"({', '.join(sorted(changed))}); delete {self._checkpoint_dir()} to start again, "
                                "or restore them.")
        self.net.load_state_dict(checkpoint["net"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        best_path = self._checkpoint_dir() / BEST
        best = load_file(str(best_path)) if best_path.is_file() else None
        return _Progress(**checkpoint["progress"]), best

    def _save(self, state: _Progress, resumed_from: int | None) -> FinetuneResult:
        history = [EpochStats(**row) for row in state.history]  # type: ignore[arg-type]
        epochs = state.epoch + 1
        costs = {"tune_seconds": state.train_seconds + state.val_seconds + state.setup_seconds,
                 "train_seconds": state.train_seconds,
                 "train_images_per_s": state.images / state.train_seconds if state.train_seconds else 0.0,
                 "epochs": float(epochs), "train_images": float(len(self.splits.train))}
        result = FinetuneResult(folder=self.folder, name=self.name, classes=self.splits.classes,
                                best_val_accuracy=state.best_accuracy, best_epoch=state.best_epoch, epochs=epochs,
                                stopped_early=state.stopped_early, history=history, costs=costs,
                                device=str(self.device), world_size=self.processes.world,
                                resumed_from_epoch=resumed_from)
        checksums = self._replica_checksums()
        if self.processes.main:
            write_finetuned(self.folder, encoder=self.net.encoder, class_weights=F.normalize(
                self.net.class_weights().detach().float(), dim=1), record=self._record(result, checksums, state))
            if not self.config.keep_checkpoints:
                for leftover in (LAST, BEST):
                    (self._checkpoint_dir() / leftover).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self._checkpoint_dir().rmdir()
        self.processes.barrier()
        return result

    def _replica_checksums(self) -> list[float]:
        """A weight checksum from every process: equal when DDP kept the replicas in step."""
        local = float(sum(p.detach().double().sum() for p in self.net.parameters()))
        if self.processes.world == 1:
            return [local]
        gathered: list[Any] = [None] * self.processes.world
        dist.all_gather_object(gathered, local)
        return [float(v) for v in gathered]

    def _record(self, result: FinetuneResult, checksums: list[float], state: _Progress) -> dict[str, Any]:
        import timm

        base = self.backbone.spec
        return {
            "name": self.name, "base": spec_to_dict(dataclasses.replace(base, finetuned=None)),
            "base_weights": self.backbone.weights_id, "dataset": self.dataset, "classes": self.splits.classes,
            "preprocess": self.eval_preprocess.as_dict(), "train_input_size": self.train_preprocess.input_size,
            "head": {"kind": "cosine", "loss": self.config.loss}, "config": _jsonable(dataclasses.asdict(self.config)),
            "costs": result.costs,
            "training": {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                         "epochs": result.epochs, "stopped_early": result.stopped_early,
                         "history": [dataclasses.asdict(h) for h in result.history], "device": result.device,
                         "world_size": result.world_size, "replica_checksums": checksums,
                         "layer_decay_applied": self.layer_decay_applied, "amp": str(self.amp) if self.amp else None,
                         "imprinted_val_accuracy": state.imprinted_accuracy,
                         "train": len(self.splits.train), "val": len(self.splits.val)},
            "versions": {"torch": torch.__version__, "timm": timm.__version__},
        }

    # ------------------------------------------------------------------ reporting

    def _describe(self) -> str:
        config, world = self.config, self.processes.world
        effective = config.batch_size * config.accum_steps * world
        return (f"fine-tuning {self.backbone.spec.name} on {self.dataset}: {len(self.splits.train)} train / "
                f"{len(self.splits.val)} val images, {len(self.splits.classes)} classes, "
                f"{self.train_preprocess.input_size} px, loss {config.loss}, {config.optimizer} lr {config.lr:g}, "
                f"batch {effective} ({world} process{'es' if world > 1 else ''} on {self.device}"
                f"{', ' + str(self.amp).replace('torch.', '') if self.amp else ''})")

    def _print_epoch(self, stats: EpochStats, state: _Progress) -> None:
        mark = " [green]best[/]" if state.best_epoch == stats.epoch else ""
        stop = " · [yellow]early stop[/]" if state.stopped_early else ""
        self.console.print(f"epoch {stats.epoch + 1}/{self.config.epochs}: loss {stats.train_loss:.4f} · val acc "
                           f"{stats.val_accuracy:.4f}{mark} · {stats.images_per_s:.1f} img/s · "
                           f"{stats.seconds:.0f} s{stop}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def _bar(enabled: bool, console: Console, total: int,
         description: str) -> Iterator[Callable[[int, float], None]]:
    if not enabled or not console.is_terminal:  # logs get the epoch lines, not a bar's redraws
        yield lambda n, loss: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]} · {task.fields[rate]} img/s"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, loss="-", rate="-")
        started, seen = time.perf_counter(), 0

        def advance(images: int, loss: float) -> None:
            nonlocal seen
            seen += images
            elapsed = time.perf_counter() - started
            bar.update(task, advance=1, loss=f"{loss:.3f}", rate=f"{seen / elapsed:.1f}" if elapsed else "-")

        yield advance
