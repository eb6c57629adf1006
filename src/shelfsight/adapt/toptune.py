"""Top-tuning: search the head's hyperparameters with Optuna, then train the final head with early stopping.

Everything works on plain numpy arrays: float32 L2-normalised embeddings ``x`` of shape (N, D) and integer
labels ``y`` in [0, C). Training one head is ``toptune_training``; using and saving it, ``toptune_inference``;
this module is the search (its study can live in SQLite and resume) and the final training.

Search space (see ``TopTuneConfig``): optimizer in {SGD, Adam, AdamW}; lr log-uniform; momentum (SGD only);
weight decay log-uniform (L2 for SGD/Adam, decoupled for AdamW); hidden layers in {2, 3}; width in
{256, 512, 1024}; dropout; norm in {batch, layer}. The activation is searched only if ``activations`` holds
more than one choice; by default it is ReLU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.pruners import MedianPruner
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from shelfsight.adapt.heads import MLPHead
from shelfsight.adapt.toptune_inference import (
    HEAD_FORMAT,
    HEAD_META,
    HEAD_WEIGHTS,
    embed_with_head,
    load_head,
    predict,
    save_head,
)
from shelfsight.adapt.toptune_training import (
    INFERENCE_BATCH,
    OPTIMIZERS,
    EpochRecord,
    HeadEpochCallback,
    LabelledTensors,
    Params,
    TopTuneError,
    TrainedHead,
    as_tensors,
    build_head_optimizer,
    class_count,
    head_config,
    train_head,
    train_on_tensors,
)
from shelfsight.progress import Advance, live_console, progress_bar

__all__ = [
    "HEAD_FORMAT", "HEAD_META", "HEAD_WEIGHTS", "INFERENCE_BATCH", "OPTIMIZERS", "EpochRecord", "HeadEpochCallback",
    "Params", "TopTuneConfig", "TopTuneError", "TopTuneResult", "TrainedHead", "build_head_optimizer",
    "embed_with_head", "head_config", "load_head", "planned_trials", "predict", "save_head", "storage_url",
    "suggest_params", "toptune", "train_head",
]

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
    photos_per_trial: int | None = 40
    """The search runs one trial per this many training photos, at least ``min_trials`` and at most ``trials``
    (``None``: always ``trials``). A small training set gets a small search: on 81 photos (one per class of
    the Grocery Store Dataset) 20 trials would pick among heads whose validation accuracies differ by less
    than their noise, and mostly tune to the validation photos."""
    min_trials: int = 3
    pruner_startup_trials: int = 5
    """MedianPruner prunes nothing until this many trials have finished."""
    pruner_warmup_epochs: int = 5
    """Nor before this many epochs of a trial's first repeat."""

    def __post_init__(self) -> None:
        counts = {"trials": self.trials, "trial_epochs": self.trial_epochs, "trial_repeats": self.trial_repeats,
                  "final_max_epochs": self.final_max_epochs, "patience": self.patience, "min_trials": self.min_trials,
                  "photos_per_trial": 1 if self.photos_per_trial is None else self.photos_per_trial}
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


def planned_trials(config: TopTuneConfig, train_photos: int) -> int:
    """Trials of the search for a training set of ``train_photos`` (``TopTuneConfig.photos_per_trial``)."""
    if config.photos_per_trial is None:
        return config.trials
    return min(config.trials, max(config.min_trials, math.ceil(train_photos / config.photos_per_trial)))


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
    trials_planned: int
    """The search's size for this training set (``planned_trials``)."""
    tuning_seconds: float
    final_seconds: float
    history: list[EpochRecord] = field(default_factory=list)


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


def _objective(train: LabelledTensors, val: LabelledTensors, n_classes: int,
               config: TopTuneConfig) -> Callable[[optuna.Trial], float]:
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

            trained = train_on_tensors(train, val, params, n_classes=n_classes, epochs=config.trial_epochs,
                                       patience=config.trial_epochs, batch_size=config.batch_size,
                                       seed=config.seed + repeat, on_epoch=report)
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


def _announce(console: Console, total: int, advance: Advance) -> Callable[[optuna.Study, FrozenTrial], None]:
    """After each trial: its line, printed through ``console`` (the live display's, so never glued onto a bar),
    and one step of the trials bar (which the run's time left reads)."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        console.print(_trial_line(study, trial, total), soft_wrap=True)
        advance(1)

    return callback


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
    train, val = as_tensors(x_train, y_train, "train"), as_tensors(x_val, y_val, "val")
    n_classes = n_classes or class_count(train, val)
    console = live_console() or Console(stderr=True)  # inside a run: above its bars, each line on its own
    trials = planned_trials(config, len(y_train))
    if progress and trials < config.trials:
        console.print(f"search scaled to {trials} trials for {len(y_train)} training photos "
                      f"(one per {config.photos_per_trial}, at least {config.min_trials})")
    with _quiet_optuna():
        study = _open_study(storage, study_name, config)
        before = len(study.trials)
        remaining = max(0, trials - _finished(study))
        started = time.perf_counter()
        with progress_bar(progress and remaining > 0, trials, "top-tuning", completed=trials - remaining,
                          unit="trials", console=console) as advance:
            if remaining:
                study.optimize(_objective(train, val, n_classes, config), n_trials=remaining, timeout=config.timeout_s,
                               callbacks=[_announce(console, trials, advance)] if progress else [])
        tuning_seconds = time.perf_counter() - started
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise TopTuneError(f"study {study_name!r} has no completed trial to take parameters from; "
                           "raise config.trials or config.timeout_s")
    best = study.best_trial
    params = _best_params(best, config)
    final = train_on_tensors(train, val, params, n_classes=n_classes, epochs=config.final_max_epochs,
                             patience=config.patience, batch_size=config.batch_size, seed=config.seed, on_epoch=None)
    if progress:
        console.print(f"final head: val acc {final.best_val_accuracy:.4f} after {final.epochs_run} epochs "
                      f"(best epoch {final.best_epoch}), {final.seconds:.1f}s")
    return TopTuneResult(head=final.module, best_params=params, best_trial_value=float(best.value or 0.0),
                         final_val_accuracy=final.best_val_accuracy, epochs_trained=final.epochs_run,
                         stopped_early=final.stopped_early, trials_completed=len(completed),
                         trials_pruned=_count(study, TrialState.PRUNED), trials_run=len(study.trials) - before,
                         trials_planned=trials,
                         tuning_seconds=tuning_seconds, final_seconds=final.seconds, history=final.history)

