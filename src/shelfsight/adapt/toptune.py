"""Top-tuning: search the head's hyperparameters with Optuna, then train the final head with early stopping.

Everything works on plain numpy arrays: float32 L2-normalised embeddings ``x`` of shape (N, D) and integer
labels ``y`` in [0, C). The data is held as two tensors for the whole run and minibatches are index slices,
because on CPU a DataLoader costs more than the small MLP itself.

Search space (see ``TopTuneConfig``): optimizer in {SGD, Adam, AdamW}; lr log-uniform; momentum (SGD only);
weight decay log-uniform (L2 for SGD/Adam, decoupled for AdamW); hidden layers in {2, 3}; width in
{256, 512, 1024}; dropout; norm in {batch, layer}. The activation is searched only if ``activations`` holds
more than one choice; by default it is ReLU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.pruners import MedianPruner
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from safetensors.torch import load_file, save_file

from shelfsight.adapt.heads import HeadConfig, MLPHead
from shelfsight.errors import ShelfsightError

Params = dict[str, Any]
EpochCallback = Callable[[int, float], None]
"""Called after each epoch with (epoch index, validation accuracy); may raise ``optuna.TrialPruned``."""

OPTIMIZERS = ("SGD", "Adam", "AdamW")
HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
HEAD_FORMAT = "shelfsight-mlp-head"
INFERENCE_BATCH = 8192


class TopTuneError(ShelfsightError):
    """Top-tuning cannot proceed: no trial finished, or a saved head cannot be read."""


@dataclass(frozen=True)
class TopTuneConfig:
    """Budget of the search and of the final training, and the search space.

    ``patience`` is in epochs without a validation-accuracy improvement. Trial repeats use seeds
    ``seed + repeat`` in every trial, so trials are compared on the same initialisations and shuffles.
    """

    trials: int = 20
    trial_epochs: int = 30
    trial_repeats: int = 2
    final_max_epochs: int = 1000
    patience: int = 20
    batch_size: int = 256
    seed: int = 0
    timeout_s: float | None = None
    lr: tuple[float, float] = (1e-4, 1e-1)
    momentum: tuple[float, float] = (0.5, 0.99)
    optimizers: tuple[str, ...] = OPTIMIZERS
    layers: tuple[int, ...] = (2, 3)
    widths: tuple[int, ...] = (256, 512, 1024)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    dropout: tuple[float, float] = (0.0, 0.5)
    norms: tuple[str, ...] = ("batch", "layer")
    activations: tuple[str, ...] = ("relu",)
    pruner_startup_trials: int = 5
    """MedianPruner prunes nothing until this many trials have finished."""
    pruner_warmup_epochs: int = 5
    """Nor before this many epochs of a trial's first repeat."""

    def __post_init__(self) -> None:
        counts = {"trials": self.trials, "trial_epochs": self.trial_epochs, "trial_repeats": self.trial_repeats,
                  "final_max_epochs": self.final_max_epochs, "patience": self.patience}
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two rows), got {self.batch_size}")
        for name in ("lr", "momentum", "weight_decay", "dropout"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name} range must be (low, high) with low <= high, got {(low, high)}")
        unknown = set(self.optimizers) - set(OPTIMIZERS)
        if unknown or not self.optimizers:
            raise ValueError(f"optimizers must be a non-empty subset of {OPTIMIZERS}, got {self.optimizers}")


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


@dataclass
class TopTuneResult:
    """The final head (eval mode) and what the search and the final training cost."""

    head: MLPHead
    best_params: Params
    best_trial_value: float
    final_val_accuracy: float
    epochs_trained: int
    stopped_early: bool
    trials_completed: int
    """COMPLETE trials in the study, including those of earlier, interrupted runs."""
    trials_pruned: int
    trials_run: int
    """Trials started by this call (the rest were resumed from storage)."""
    tuning_seconds: float
    final_seconds: float
    history: list[EpochRecord] = field(default_factory=list)


@dataclass(frozen=True)
class _Split:
    x: torch.Tensor
    y: torch.Tensor


# --------------------------------------------------------------------------------------------- data


def _as_split(x: np.ndarray, y: np.ndarray, name: str) -> _Split:
    """Tensors sharing numpy's memory where possible; checked once so training loops need not."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{name}: expected x of shape (N, D) and y of shape (N,), got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{name}: no rows")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{name}: labels must be non-negative integers, got dtype {y.dtype}")
    return _Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                  torch.from_numpy(y.astype(np.int64, copy=False)))


def _class_count(*splits: _Split) -> int:
    return int(max(int(s.y.max()) for s in splits)) + 1


def _minibatches(order: torch.Tensor, batch_size: int) -> Sequence[torch.Tensor]:
    """Index slices of the shuffled order; a trailing batch of one row joins the previous one (batch norm)."""
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


# --------------------------------------------------------------------------------------------- training


def head_config(params: Mapping[str, Any]) -> HeadConfig:
    """The head shape named by a parameter set (trial params or ``best_params``)."""
    return HeadConfig(layers=int(params.get("layers", 2)), width=int(params.get("width", 512)),
                      norm=params.get("norm", "batch"), activation=params.get("activation", "relu"),
                      dropout=float(params.get("dropout", 0.0)))


def build_optimizer(params: Mapping[str, Any], module: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam (L2 weight decay) or AdamW (decoupled weight decay).

    Fused implementations: on CPU the per-tensor loop of the default ones costs as much as the head's matmuls.
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


def _train_epoch(head: MLPHead, optimizer: torch.optim.Optimizer, data: _Split, batch_size: int,
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


def _accuracy(head: MLPHead, data: _Split) -> float:
    head.eval()
    with torch.inference_mode():
        predicted = torch.cat([head(chunk).argmax(dim=1) for chunk in data.x.split(INFERENCE_BATCH)])
    return float((predicted == data.y).double().mean())


def _snapshot(head: MLPHead) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in head.state_dict().items()}


def _train(train: _Split, val: _Split, params: Mapping[str, Any], *, n_classes: int, epochs: int, patience: int,
           batch_size: int, seed: int, on_epoch: EpochCallback | None) -> TrainedHead:
    """The training loop on tensors; global RNG state is forked so callers' randomness is untouched."""
    started = time.perf_counter()
    history: list[EpochRecord] = []
    best_accuracy, best_epoch, stopped_early = -1.0, 0, False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation and dropout
        head = MLPHead(train.x.shape[1], n_classes, head_config(params))
        optimizer = build_optimizer(params, head)
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
               on_epoch: EpochCallback | None = None, n_classes: int | None = None) -> TrainedHead:
    """Train one head with cross-entropy, keeping the weights of the best validation accuracy.

    Stops after ``patience`` epochs without a strict improvement. The same inputs and seed give bitwise
    the same weights on the same machine and thread count. ``n_classes`` defaults to the largest label + 1.
    """
    if epochs < 1 or patience < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1, patience >= 1, batch_size >= 2; got {epochs}, {patience}, {batch_size}")
    train, val = _as_split(x_train, y_train, "train"), _as_split(x_val, y_val, "val")
    return _train(train, val, params, n_classes=n_classes or _class_count(train, val), epochs=epochs,
                  patience=patience, batch_size=batch_size, seed=seed, on_epoch=on_epoch)


# --------------------------------------------------------------------------------------------- search


def suggest_params(trial: optuna.Trial, config: TopTuneConfig) -> Params:
    """One point of the search space; momentum exists only for SGD."""
    params: Params = {"optimizer": trial.suggest_categorical("optimizer", config.optimizers),
                      "lr": trial.suggest_float("lr", *config.lr, log=True)}
    if params["optimizer"] == "SGD":
        params["momentum"] = trial.suggest_float("momentum", *config.momentum)
    params["weight_decay"] = trial.suggest_float("weight_decay", *config.weight_decay, log=True)
    params["layers"] = trial.suggest_categorical("layers", config.layers)
    params["width"] = trial.suggest_categorical("width", config.widths)
    params["dropout"] = trial.suggest_float("dropout", *config.dropout)
    params["norm"] = trial.suggest_categorical("norm", config.norms)
    params["activation"] = (trial.suggest_categorical("activation", config.activations)
                            if len(config.activations) > 1 else config.activations[0])
    return params


def _objective(train: _Split, val: _Split, n_classes: int, config: TopTuneConfig) -> Callable[[optuna.Trial], float]:
    """Mean best validation accuracy over ``trial_repeats`` seeds of ``trial_epochs`` epochs each.

    Every epoch is reported for pruning at step ``repeat * trial_epochs + epoch``, so the median pruner
    compares trials at the same repeat and epoch.
    """

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, config)
        scores = []
        for repeat in range(config.trial_repeats):
            offset = repeat * config.trial_epochs

            def report(epoch: int, accuracy: float, offset: int = offset) -> None:
                trial.report(accuracy, offset + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            trained = _train(train, val, params, n_classes=n_classes, epochs=config.trial_epochs,
                             patience=config.trial_epochs, batch_size=config.batch_size, seed=config.seed + repeat,
                             on_epoch=report)
            scores.append(trained.best_val_accuracy)
        trial.set_user_attr("repeat_accuracies", scores)
        return float(np.mean(scores))

    return objective


def storage_url(storage: str | Path | None) -> str | None:
    """A database URL as given, or a file path turned into ``sqlite:///<absolute path>``."""
    if storage is None:
        return None
    if isinstance(storage, str) and "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _open_study(storage: str | Path | None, study_name: str, config: TopTuneConfig) -> optuna.Study:
    """Create or resume a study.

    The TPE sampler is seeded with ``seed + trials already stored``: a fresh study uses ``seed`` itself, and
    a resumed one does not replay the random start-up draws its earlier trials already made.
    """
    pruner = MedianPruner(n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_epochs)
    study = optuna.create_study(storage=storage_url(storage), study_name=study_name, direction="maximize",
                                sampler=TPESampler(seed=config.seed), pruner=pruner, load_if_exists=True)
    study.sampler = TPESampler(seed=config.seed + len(study.trials))
    return study


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete or pruned (failed and interrupted ones do not)."""
    return _count(study, TrialState.COMPLETE, TrialState.PRUNED)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _trial_line(study: optuna.Study, trial: FrozenTrial, total: int) -> str:
    if trial.state == TrialState.PRUNED:
        outcome = f"pruned at step {trial.last_step}"
    elif trial.value is not None:
        outcome = f"val acc {trial.value:.4f}"
    else:
        outcome = trial.state.name.lower()
    best = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None), default=math.nan)
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return (f"trial {trial.number:>3} [{_finished(study)}/{total}] {outcome:<22} best {best:.4f} "
            f"{seconds:5.1f}s  [dim]{shown}[/dim]")


def _best_params(trial: FrozenTrial, config: TopTuneConfig) -> Params:
    params = dict(trial.params)
    params.setdefault("activation", config.activations[0])  # not searched: fixed by the config
    return params


def toptune(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
            config: TopTuneConfig | None = None, storage: str | Path | None = None, study_name: str = "toptune",
            progress: bool = False, n_classes: int | None = None) -> TopTuneResult:
    """Search head hyperparameters on validation accuracy, then train the final head with early stopping.

    With ``storage`` (a SQLite file path or a database URL) an interrupted search resumes: finished
    (complete or pruned) trials count towards ``config.trials`` and only the remaining ones run.
    """
    config = config or TopTuneConfig()
    train, val = _as_split(x_train, y_train, "train"), _as_split(x_val, y_val, "val")
    n_classes = n_classes or _class_count(train, val)
    console = Console(stderr=True)
    with _quiet_optuna():
        study = _open_study(storage, study_name, config)
        before = len(study.trials)
        remaining = max(0, config.trials - _finished(study))
        callbacks = [lambda s, t: console.print(_trial_line(s, t, config.trials), soft_wrap=True)] if progress else []
        started = time.perf_counter()
        if remaining:
            study.optimize(_objective(train, val, n_classes, config), n_trials=remaining, timeout=config.timeout_s,
                           callbacks=callbacks)
        tuning_seconds = time.perf_counter() - started
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise TopTuneError(f"study {study_name!r} has no completed trial to take parameters from; "
                           "raise config.trials or config.timeout_s")
    best = study.best_trial
    params = _best_params(best, config)
    final = _train(train, val, params, n_classes=n_classes, epochs=config.final_max_epochs, patience=config.patience,
                   batch_size=config.batch_size, seed=config.seed, on_epoch=None)
    if progress:
        console.print(f"final head: val acc {final.best_val_accuracy:.4f} after {final.epochs_run} epochs "
                      f"(best epoch {final.best_epoch}), {final.seconds:.1f}s")
    return TopTuneResult(head=final.module, best_params=params, best_trial_value=float(best.value or 0.0),
                         final_val_accuracy=final.best_val_accuracy, epochs_trained=final.epochs_run,
                         stopped_early=final.stopped_early, trials_completed=len(completed),
                         trials_pruned=_count(study, TrialState.PRUNED), trials_run=len(study.trials) - before,
                         tuning_seconds=tuning_seconds, final_seconds=final.seconds, history=final.history)


# --------------------------------------------------------------------------------------------- inference


def _run_batched(head: MLPHead, x: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int) -> torch.Tensor:
    """``fn`` over row batches in eval mode without autograd; the head's train/eval mode is restored."""
    array = np.asarray(x)
    if array.ndim != 2 or array.shape[1] != head.in_dim:
        raise ValueError(f"expected x of shape (N, {head.in_dim}), got {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            chunks = tensor.split(batch_size) if len(tensor) else (tensor,)
            return torch.cat([fn(chunk) for chunk in chunks])
    finally:
        head.train(was_training)


def embed_with_head(head: MLPHead, x: np.ndarray, *, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Top-tuned embeddings: penultimate outputs, L2-normalised float32 of shape (N, width).

    A row whose hidden activations are all zero (possible after ReLU) stays a zero vector.
    """
    out = _run_batched(head, x, lambda chunk: F.normalize(head.embed(chunk), dim=1), batch_size)
    return out.numpy().astype(np.float32, copy=False)


def predict(head: MLPHead, x: np.ndarray, *, batch_size: int = INFERENCE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(labels of shape (N,), class probabilities of shape (N, C) as float32)."""
    probabilities = _run_batched(head, x, lambda chunk: torch.softmax(head(chunk), dim=1), batch_size).numpy()
    return probabilities.argmax(axis=1).astype(np.int64), probabilities.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- persistence


def _jsonable(value: Any) -> Any:
    """Optuna and numpy scalars as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def save_head(path: str | Path, head: MLPHead, classes: Sequence[str], params: Mapping[str, Any],
              in_dim: int) -> Path:
    """A folder with ``head.safetensors`` (weights) and ``head.json`` (shape, class names, parameters)."""
    if in_dim != head.in_dim:
        raise ValueError(f"in_dim {in_dim} does not match the head's input dimension {head.in_dim}")
    if len(classes) != head.n_classes:
        raise ValueError(f"{len(classes)} class names for a head with {head.n_classes} outputs")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_WEIGHTS))
    meta = {"format": HEAD_FORMAT, "version": 1, "in_dim": in_dim, "n_classes": head.n_classes,
            "classes": list(classes), "config": asdict(head.config), "params": _jsonable(dict(params))}
    (folder / HEAD_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def load_head(path: str | Path) -> tuple[MLPHead, list[str], Params]:
    """Rebuild a saved head in eval mode; its outputs equal those of the head that was saved."""
    folder = Path(path)
    meta_path, weights_path = folder / HEAD_META, folder / HEAD_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise TopTuneError(f"{folder}: not a saved head (expected {HEAD_META} and {HEAD_WEIGHTS})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != HEAD_FORMAT:
        raise TopTuneError(f"{meta_path}: format {meta.get('format')!r} is not {HEAD_FORMAT!r}")
    head = MLPHead(int(meta["in_dim"]), int(meta["n_classes"]), HeadConfig(**meta["config"]))
    try:
        head.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as error:
        raise TopTuneError(f"{weights_path}: weights do not fit the head described in {HEAD_META}: {error}") from error
    head.eval()
    return head, list(meta["classes"]), dict(meta["params"])
