"""Training one top-tuning head on frozen embeddings: cross-entropy, a seeded shuffle, early stopping on
validation accuracy, the best epoch's weights kept.

The data is held as two tensors for the whole run and minibatches are index slices, because on CPU a
DataLoader costs more than the small MLP itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shelfsight.adapt.heads import HeadConfig, MLPHead
from shelfsight.errors import ShelfsightError

Params = dict[str, Any]
HeadEpochCallback = Callable[[int, float], None]
"""Called after each epoch of a head's training with (epoch index, validation accuracy); may raise
``optuna.TrialPruned``."""

OPTIMIZERS = ("SGD", "Adam", "AdamW")
INFERENCE_BATCH = 8192


class TopTuneError(ShelfsightError):
    """Top-tuning cannot proceed: no trial finished, or a saved head cannot be read."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float


@dataclass
class TrainedHead:
    """A head with the weights of its best validation epoch, in eval mode."""

    module: MLPHead
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[EpochRecord]
    seconds: float


@dataclass(frozen=True)
class LabelledTensors:
    """Embeddings ``x`` (N, D) float32 and labels ``y`` (N,) int64, checked once by ``as_tensors``."""

    x: torch.Tensor
    y: torch.Tensor


def as_tensors(x: np.ndarray, y: np.ndarray, name: str) -> LabelledTensors:
    """Tensors sharing numpy's memory where possible; checked once so training loops need not."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{name}: expected x of shape (N, D) and y of shape (N,), got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{name}: no rows")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{name}: labels must be non-negative integers, got dtype {y.dtype}")
    return LabelledTensors(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                           torch.from_numpy(y.astype(np.int64, copy=False)))


def class_count(*sides: LabelledTensors) -> int:
    """The largest label + 1."""
    return int(max(int(s.y.max()) for s in sides)) + 1


def head_config(params: Mapping[str, Any]) -> HeadConfig:
    """The head shape named by a parameter set (trial params or ``best_params``)."""
    return HeadConfig(layers=int(params.get("layers", 2)), width=int(params.get("width", 512)),
                      norm=params.get("norm", "batch"), activation=params.get("activation", "relu"),
                      dropout=float(params.get("dropout", 0.0)))


def build_head_optimizer(params: Mapping[str, Any], module: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam (L2 weight decay) or AdamW (decoupled weight decay) over a head's parameters.

    Fused implementations: on CPU the per-tensor loop of the default ones is a visible part of a small head's
    step (measurements in docs/finetuning.md).
    """
    name = params.get("optimizer", "Adam")
    lr = float(params.get("lr", 1e-3))
    decay = float(params.get("weight_decay", 0.0))
    if name == "SGD":
        return torch.optim.SGD(module.parameters(), lr=lr, momentum=float(params.get("momentum", 0.9)),
                               weight_decay=decay, fused=True)
    if name == "Adam":
        return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=decay, fused=True)
    if name == "AdamW":
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def _minibatches(order: torch.Tensor, batch_size: int) -> Sequence[torch.Tensor]:
    """Index slices of the shuffled order; a trailing batch of one row joins the previous one (batch norm)."""
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def _train_epoch(head: MLPHead, optimizer: torch.optim.Optimizer, data: LabelledTensors, batch_size: int,
                 generator: torch.Generator) -> float:
    """One pass over the shuffled training rows; returns the mean cross-entropy."""
    head.train()
    total = 0.0
    for index in _minibatches(torch.randperm(len(data.y), generator=generator), batch_size):
        loss = F.cross_entropy(head(data.x[index]), data.y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
    return total / len(data.y)


def _accuracy(head: MLPHead, data: LabelledTensors) -> float:
    head.eval()
    with torch.inference_mode():
        predicted = torch.cat([head(chunk).argmax(dim=1) for chunk in data.x.split(INFERENCE_BATCH)])
    return float((predicted == data.y).double().mean())


def _snapshot(head: MLPHead) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in head.state_dict().items()}


HEAD_THREADS = 1
"""Torch threads while a head trains. A small MLP's matrices are too small to split across cores, and two
threads that wait on each other collapse when another process holds a core: on a 2-core machine under load,
20 epochs on Grocery Store took 4.7 s with one thread and 80 s with two (``benchmarks/toptune.py``)."""


@contextlib.contextmanager
def head_threads(threads: int = HEAD_THREADS) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_on_tensors(train: LabelledTensors, val: LabelledTensors, params: Mapping[str, Any], *, n_classes: int,
                     epochs: int, patience: int, batch_size: int, seed: int,
                     on_epoch: HeadEpochCallback | None) -> TrainedHead:
    """The training loop on checked tensors; global RNG state is forked so callers' randomness is untouched."""
    started = time.perf_counter()
    history: list[EpochRecord] = []
    best_accuracy, best_epoch, stopped_early = -1.0, 0, False
    with torch.random.fork_rng(devices=[]), head_threads():
        torch.manual_seed(seed)  # initialisation and dropout
        head = MLPHead(train.x.shape[1], n_classes, head_config(params))
        optimizer = build_head_optimizer(params, head)
        shuffle = torch.Generator().manual_seed(seed)
        best_state = _snapshot(head)
        for epoch in range(epochs):
            loss = _train_epoch(head, optimizer, train, batch_size, shuffle)
            accuracy = _accuracy(head, val)
            history.append(EpochRecord(epoch, loss, accuracy))
            if accuracy > best_accuracy:
                best_accuracy, best_epoch, best_state = accuracy, epoch, _snapshot(head)
            if on_epoch is not None:
                on_epoch(epoch, accuracy)
            if epoch - best_epoch >= patience and epoch + 1 < epochs:
                stopped_early = True
                break
    head.load_state_dict(best_state)
    head.eval()
    return TrainedHead(head, best_accuracy, best_epoch, len(history), stopped_early, history,
                       time.perf_counter() - started)


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               params: Mapping[str, Any], *, epochs: int, patience: int, batch_size: int = 256, seed: int = 0,
               on_epoch: HeadEpochCallback | None = None, n_classes: int | None = None) -> TrainedHead:
    """Train one head with cross-entropy, keeping the weights of the best validation accuracy.

    Stops after ``patience`` epochs without a strict improvement. The same inputs and seed give bitwise
    the same weights on the same machine and thread count. ``n_classes`` defaults to the largest label + 1.
    """
    if epochs < 1 or patience < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1, patience >= 1, batch_size >= 2; got {epochs}, {patience}, {batch_size}")
    train, val = as_tensors(x_train, y_train, "train"), as_tensors(x_val, y_val, "val")
    return train_on_tensors(train, val, params, n_classes=n_classes or class_count(train, val), epochs=epochs,
                            patience=patience, batch_size=batch_size, seed=seed, on_epoch=on_epoch)
