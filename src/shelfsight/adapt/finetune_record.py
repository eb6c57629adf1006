"""What a fine-tuning run reports and saves: the per-epoch stats, the result, and the saved backbone's
record (``finetuned.json``: base spec, preprocessing, classes, settings, costs, history), which a finished
output folder is read back from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shelfsight.adapt.finetune_checkpoint import TrainingProgress, remove_checkpoints, settings_as_json
from shelfsight.adapt.finetune_setup import FinetuneRun
from shelfsight.backbones.finetuned import read_record, spec_to_dict, write_finetuned


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


def result_from_record(folder: Path) -> FinetuneResult:
    """The result of the finished run saved in ``folder``."""
    record = read_record(folder)
    training = record["training"]
    history = [EpochStats(**row) for row in training["history"]]
    return FinetuneResult(folder=folder, name=record["name"], classes=list(record["classes"]),
                          best_val_accuracy=training["best_val_accuracy"], best_epoch=training["best_epoch"],
                          epochs=training["epochs"], stopped_early=training["stopped_early"], history=history,
                          costs=dict(record["costs"]), device=training["device"], world_size=training["world_size"])


def save_finetuned(run: FinetuneRun, progress: TrainingProgress, resumed_from: int | None) -> FinetuneResult:
    """Saves the trained backbone, its head and record (rank 0, which then removes the checkpoints unless
    asked to keep them) and returns the result; every process waits for the save."""
    result = _result(run, progress, resumed_from)
    checksums = _replica_checksums(run)
    if run.processes.main:
        class_weights = F.normalize(run.net.class_weights().detach().float(), dim=1)
        write_finetuned(run.folder, encoder=run.net.encoder, class_weights=class_weights,
                        record=_record(run, result, checksums, progress))
        if not run.config.keep_checkpoints:
            remove_checkpoints(run)
    run.processes.barrier()
    return result


def _result(run: FinetuneRun, progress: TrainingProgress, resumed_from: int | None) -> FinetuneResult:
    history = [EpochStats(**row) for row in progress.history]  # type: ignore[arg-type]
    epochs = progress.epoch + 1
    train_seconds = progress.train_seconds
    costs = {"tune_seconds": train_seconds + progress.val_seconds + progress.setup_seconds,
             "train_seconds": train_seconds,
             "train_images_per_s": progress.images / train_seconds if train_seconds else 0.0,
             "epochs": float(epochs), "train_images": float(len(run.splits.train))}
    return FinetuneResult(folder=run.folder, name=run.name, classes=run.splits.classes,
                          best_val_accuracy=progress.best_accuracy, best_epoch=progress.best_epoch, epochs=epochs,
                          stopped_early=progress.stopped_early, history=history, costs=costs,
                          device=str(run.device), world_size=run.processes.world, resumed_from_epoch=resumed_from)


def _replica_checksums(run: FinetuneRun) -> list[float]:
    """A weight checksum from every process: equal when DDP kept the replicas in step."""
    return run.processes.gather(float(sum(p.detach().double().sum() for p in run.net.parameters())))


def _record(run: FinetuneRun, result: FinetuneResult, checksums: list[float],
            progress: TrainingProgress) -> dict[str, Any]:
    import timm

    base = run.backbone.spec
    return {
        "name": run.name, "base": spec_to_dict(dataclasses.replace(base, finetuned=None)),
        "base_weights": run.backbone.weights_id, "dataset": run.dataset, "classes": run.splits.classes,
        "preprocess": run.eval_preprocess.as_dict(), "train_input_size": run.train_preprocess.input_size,
        "head": {"kind": "cosine", "loss": run.config.loss}, "config": settings_as_json(run.config),
        "costs": result.costs,
        "training": {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                     "epochs": result.epochs, "stopped_early": result.stopped_early,
                     "history": [dataclasses.asdict(h) for h in result.history], "device": result.device,
                     "world_size": result.world_size, "replica_checksums": checksums,
                     "layer_decay_applied": run.layer_decay_applied, "amp": str(run.amp) if run.amp else None,
                     "imprinted_val_accuracy": progress.imprinted_accuracy,
                     "train": len(run.splits.train), "val": len(run.splits.val)},
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }
