"""Checkpoints of a fine-tuning run, for exact resume: ``OUTPUT/checkpoints/last.pt`` (weights, optimizer,
scheduler, scaler, the run's progress, its settings and classes) after every epoch, and the best epoch's
weights beside it. Written atomically by rank 0; every random stream is derived from ``(seed, epoch, ...)``,
so no RNG state is needed to continue."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shelfsight.adapt.finetune_config import FinetuneConfig, FinetuneError
from shelfsight.adapt.finetune_setup import FinetuneRun
from shelfsight.files import atomic_write

LAST = "last.pt"
BEST = "best.safetensors"
UNCHECKED_SETTINGS = ("epochs", "patience", "num_workers", "keep_checkpoints", "device")
"""Settings a run may change when it resumes: they do not change what the finished epochs computed."""


@dataclass
class TrainingProgress:
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


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively: settings as JSON (and a reloaded checkpoint) spell them."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value


def settings_as_json(config: FinetuneConfig) -> Any:
    return jsonable(dataclasses.asdict(config))


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda temporary: torch.save(obj, temporary), mode=None)


def _atomic_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary)), mode=None)


def last_checkpoint(run: FinetuneRun) -> Path:
    return run.checkpoint_dir / LAST


def save_checkpoint(run: FinetuneRun, progress: TrainingProgress) -> None:
    """``last.pt`` from rank 0; every process waits for it."""
    if run.processes.main:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save({"net": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
                      "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                      "progress": dataclasses.asdict(progress), "config": settings_as_json(run.config),
                      "classes": run.splits.classes, "name": run.name},
                     last_checkpoint(run))
    run.processes.barrier()


def keep_best(run: FinetuneRun) -> dict[str, torch.Tensor]:
    """A CPU copy of the current weights, also written beside the checkpoint by rank 0."""
    best = {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}
    if run.processes.main:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _atomic_safetensors(best, run.checkpoint_dir / BEST)
    return best


def load_checkpoint(run: FinetuneRun, path: Path) -> tuple[TrainingProgress, dict[str, torch.Tensor] | None]:
    """Restores the run's state from ``path``; returns its progress and the best weights so far (if saved).
    A checkpoint of other classes or other settings is refused."""
    checkpoint = torch.load(path, map_location=run.device, weights_only=True)
    if checkpoint["classes"] != run.splits.classes:
        raise FinetuneError(f"{path}: the checkpoint was trained on other classes; delete "
                            f"{run.checkpoint_dir} or choose another output folder.")
    changed = {k for k, v in checkpoint["config"].items()
               if k not in UNCHECKED_SETTINGS and jsonable(v) != jsonable(getattr(run.config, k, None))}
    if changed:
        raise FinetuneError(f"{path}: the checkpoint was trained with other settings "
                            f"({', '.join(sorted(changed))}); delete {run.checkpoint_dir} to start again, "
                            "or restore them.")
    run.net.load_state_dict(checkpoint["net"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    best_path = run.checkpoint_dir / BEST
    best = load_file(str(best_path)) if best_path.is_file() else None
    return TrainingProgress(**checkpoint["progress"]), best


def remove_checkpoints(run: FinetuneRun) -> None:
    """Deletes the checkpoint files, and their folder when nothing else is in it."""
    for leftover in (LAST, BEST):
        (run.checkpoint_dir / leftover).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run.checkpoint_dir.rmdir()
