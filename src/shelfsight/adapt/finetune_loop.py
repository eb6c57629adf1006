"""One fine-tuning epoch: a pass over this rank's shard of the training images (gradient accumulation,
clipping, the gradient scaler, the scheduler stepped per update), then validation, summed over processes.

The epoch's randomness is derived from ``(seed, epoch, ...)``: the sampler's order (``set_epoch``), each
image's augmentation (the dataset's ``epoch``) and the model's own (dropout, drop-connect: reseeded here)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from contextlib import AbstractContextManager
from typing import Any

import torch
from rich.console import Console
from torch import nn

from shelfsight.adapt.finetune_checkpoint import TrainingProgress
from shelfsight.adapt.finetune_data import derived_seed
from shelfsight.adapt.finetune_eval import validate
from shelfsight.adapt.finetune_processes import autocast
from shelfsight.adapt.finetune_record import EpochStats
from shelfsight.adapt.finetune_setup import FinetuneRun
from shelfsight.backbones import normalize_pixels
from shelfsight.progress import Advance, progress_bar


def run_epoch(run: FinetuneRun, epoch: int, progress: TrainingProgress) -> EpochStats:
    """Trains and validates epoch ``epoch``; adds its counts and times to ``progress`` and its stats to the
    history."""
    run.sampler.set_epoch(epoch)
    run.train_set.epoch = epoch
    torch.manual_seed(derived_seed(run.config.seed, epoch, run.processes.rank, 1))
    started = time.perf_counter()
    loss, images = _train_pass(run, epoch, progress)
    train_seconds = time.perf_counter() - started
    total_loss, total_batches, total_images = run.processes.sum(*loss, images)
    started = time.perf_counter()
    accuracy = validate(run)
    val_seconds = time.perf_counter() - started
    progress.train_seconds += train_seconds
    progress.val_seconds += val_seconds
    progress.images += int(total_images)
    stats = EpochStats(epoch=epoch, train_loss=total_loss / max(total_batches, 1), val_accuracy=accuracy,
                       lr=_base_lr(run.optimizer), images=int(total_images),
                       seconds=train_seconds + val_seconds,
                       images_per_s=total_images / train_seconds if train_seconds > 0 else float("nan"))
    progress.history.append(dataclasses.asdict(stats))
    return stats


def print_epoch(run: FinetuneRun, stats: EpochStats, progress: TrainingProgress) -> None:
    """The epoch's log line (best epoch and early stop marked)."""
    mark = " [green]best[/]" if progress.best_epoch == stats.epoch else ""
    stop = " · [yellow]early stop[/]" if progress.stopped_early else ""
    run.console.print(f"epoch {stats.epoch + 1}/{run.config.epochs}: loss {stats.train_loss:.4f} · val acc "
                      f"{stats.val_accuracy:.4f}{mark} · {stats.images_per_s:.1f} img/s · "
                      f"{stats.seconds:.0f} s{stop}")


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduler's current value (group rates are it times their ``lr_scale``)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))


def _train_pass(run: FinetuneRun, epoch: int, progress: TrainingProgress) -> tuple[tuple[float, float], int]:
    """One pass; returns ((sum of batch losses, batches), images) for this process."""
    run.model.train()
    accum, steps = run.config.accum_steps, len(run.train_loader)
    run.scheduler.step_update(progress.updates)
    run.optimizer.zero_grad(set_to_none=True)
    total, batches, images = 0.0, 0, 0
    total_images = steps * run.config.batch_size  # this process's share, under DDP too (the last batch may be short)
    with _bar(run.progress, run.console, total_images, f"epoch {epoch + 1}/{run.config.epochs}") as advance:
        for step, (pixels, labels) in enumerate(run.train_loader):
            boundary = (step + 1) % accum == 0 or step + 1 == steps
            if len(labels) > 1:
                with _sync(run.model, boundary):
                    loss = _forward(run, pixels, labels) / accum
                    run.scaler.scale(loss).backward()
                total, batches, images = total + float(loss.detach()) * accum, batches + 1, images + len(labels)
            if boundary:
                _step(run)
                progress.updates += 1
                run.scheduler.step_update(progress.updates)
            advance(len(labels), f"loss {total / max(batches, 1):.3f}")
    return (total, batches), images


def _forward(run: FinetuneRun, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    batch = normalize_pixels(pixels.to(run.device, non_blocking=True), run.train_preprocess)
    labels = labels.to(run.device, non_blocking=True)
    with autocast(run.amp, run.device):
        loss: torch.Tensor = run.model(batch, labels)
    return loss


def _step(run: FinetuneRun) -> None:
    if run.config.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.net.parameters(), run.config.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _sync(model: nn.Module, boundary: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP all-reduces gradients only on the micro-batch that ends an accumulation."""
    if boundary or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _bar(enabled: bool, console: Console, total: int, description: str) -> AbstractContextManager[Advance]:
    """The epoch's bar (a line of the bench's display when one is up); logs get the epoch lines, not redraws."""
    return progress_bar(enabled and console.is_terminal, total, description, unit="img", console=console,
                        transient=True)
