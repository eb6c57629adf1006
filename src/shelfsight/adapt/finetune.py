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

This module holds the entry point and the run's outline; its parts live beside it: ``finetune_config``
(settings), ``finetune_data`` (images), ``finetune_model`` (network, optimizer, scheduler),
``finetune_processes`` (ranks and devices), ``finetune_setup`` (building a run), ``finetune_loop`` (an epoch),
``finetune_eval`` (validation, imprinting), ``finetune_checkpoint`` (resume) and ``finetune_record`` (results
and the saved record).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from shelfsight.adapt.finetune_checkpoint import (
    TrainingProgress,
    keep_best,
    last_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from shelfsight.adapt.finetune_config import FinetuneConfig, FinetuneError, load_finetune_config
from shelfsight.adapt.finetune_eval import imprint
from shelfsight.adapt.finetune_loop import print_epoch, run_epoch
from shelfsight.adapt.finetune_model import (
    CosineSoftmax,
    FinetuneNet,
    MetricLearningLoss,
    build_backbone_optimizer,
    build_criterion,
    build_scheduler,
    predict_classes,
)
from shelfsight.adapt.finetune_processes import start_processes, stop_processes
from shelfsight.adapt.finetune_record import EpochStats, FinetuneResult, result_from_record, save_finetuned
from shelfsight.adapt.finetune_setup import FinetuneRun, build_run
from shelfsight.backbones import Backbone, finetuned_name
from shelfsight.catalog import Catalog
from shelfsight.protocols import ClassificationSplits

__all__ = [
    "CosineSoftmax", "EpochStats", "FinetuneConfig", "FinetuneEpochCallback", "FinetuneError", "FinetuneNet",
    "FinetuneResult", "MetricLearningLoss", "build_backbone_optimizer", "build_criterion", "build_scheduler",
    "finetune", "load_finetune_config", "predict_classes",
]

FinetuneEpochCallback = Callable[[EpochStats], None]
"""Called by ``finetune`` after each epoch (once checkpointed) with that epoch's stats."""


def finetune(catalog: Catalog, backbone: Backbone, *, dataset: str, output: str | os.PathLike[str],
             config: FinetuneConfig | None = None, name: str | None = None, resume: bool = True,
             progress: bool = True, on_epoch: FinetuneEpochCallback | None = None,
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
        return result_from_record(folder)
    processes = start_processes(config.device)
    devices = [processes.device.index or 0] if processes.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
            run = build_run(catalog, backbone, dataset, folder, config, name, processes, progress, console, splits)
            return _train(run, resume, on_epoch)
    finally:
        stop_processes(processes)


def _train(run: FinetuneRun, resume: bool, on_epoch: FinetuneEpochCallback | None) -> FinetuneResult:
    """Resume or start (imprinting the head), train epoch by epoch until the last or an early stop, checkpointing
    each, then save the best epoch's weights."""
    progress, best, resumed_from = TrainingProgress(), None, None
    checkpoint = last_checkpoint(run)
    if resume and checkpoint.is_file():
        progress, best = load_checkpoint(run, checkpoint)
        resumed_from = progress.epoch
        run.console.print(f"resuming {run.name} after epoch {progress.epoch + 1} ({checkpoint})")
    run.console.print(run.describe())
    if resumed_from is None and run.config.init_head == "imprint":
        progress.setup_seconds, progress.imprinted_accuracy = imprint(run)
    for epoch in range(progress.epoch + 1, run.config.epochs):
        if progress.stopped_early:
            break
        stats = run_epoch(run, epoch, progress)
        if stats.val_accuracy > progress.best_accuracy:
            progress.best_accuracy, progress.best_epoch = stats.val_accuracy, epoch
            best = keep_best(run)
        progress.epoch = epoch
        progress.stopped_early = epoch - progress.best_epoch >= run.config.patience and epoch + 1 < run.config.epochs
        save_checkpoint(run, progress)
        print_epoch(run, stats, progress)
        if on_epoch is not None:
            on_epoch(stats)
    if best is not None:
        run.net.load_state_dict(best)
    return save_finetuned(run, progress, resumed_from)
