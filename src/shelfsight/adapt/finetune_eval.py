"""Evaluation during fine-tuning: the cosine classifier's validation accuracy, and the imprinted head that
training starts from (each class vector the mean embedding of the class's training images)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shelfsight.adapt.finetune_data import LabelledImages, collate, worker_options
from shelfsight.adapt.finetune_processes import autocast
from shelfsight.adapt.finetune_setup import FinetuneRun
from shelfsight.backbones import build_pixel_transform, normalize_pixels


def validate(run: FinetuneRun) -> float:
    """Accuracy of the cosine classifier on the validation images, summed over processes."""
    net, device = run.net, run.device
    net.eval()
    weights = F.normalize(net.class_weights().detach().float(), dim=1)
    correct, count = 0, 0
    with torch.inference_mode():
        for pixels, labels in run.val_loader:
            if not len(labels):
                continue
            batch = normalize_pixels(pixels.to(device), run.eval_preprocess)
            with autocast(run.amp, device):
                features = net.encoder(batch)
            predicted = (F.normalize(features.float(), dim=1) @ weights.T).argmax(dim=1).cpu()
            correct += int((predicted == labels).sum())
            count += len(labels)
    total_correct, total = run.processes.sum(correct, count)
    return total_correct / total if total else 0.0


def imprint(run: FinetuneRun) -> tuple[float, float]:
    """Class vectors = normalised mean embedding of each class's training images (centre crops), summed over
    processes so every replica starts from the same head. Returns (seconds, validation accuracy after)."""
    rank, world = run.processes.rank, run.processes.world
    preprocess, device = run.train_preprocess, run.device
    images = LabelledImages(run.splits.train[rank::world], run.splits.y_train[rank::world],
                            build_pixel_transform(preprocess), preprocess.resize_size)
    loader = DataLoader(images, batch_size=run.config.batch_size * 2, collate_fn=collate,
                        **worker_options(run.config, device))
    weights = run.net.class_weights()
    sums = torch.zeros(weights.shape, dtype=torch.float64, device=device)
    run.net.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for pixels, labels in loader:
            if len(labels):
                with autocast(run.amp, device):
                    features = run.net.encoder(normalize_pixels(pixels.to(device), preprocess))
                sums.index_add_(0, labels.to(device), F.normalize(features.double(), dim=1))
    if world > 1:
        dist.all_reduce(sums)
    empty = sums.norm(dim=1) == 0  # a class with no readable image keeps its random vector
    imprinted = torch.where(empty[:, None], weights.detach().double(), F.normalize(sums, dim=1))
    run.net.criterion.set_class_weights(imprinted.to(weights.dtype))
    accuracy = validate(run)  # the starting point: a nearest-class-mean classifier
    seconds = time.perf_counter() - started
    run.console.print(f"head imprinted from {len(run.splits.train)} training images: val acc {accuracy:.4f} "
                      f"before fine-tuning ({seconds:.0f} s)")
    return seconds, accuracy
