"""Adapting frozen embeddings to a catalogue: top-tuning (an MLP head searched with Optuna) and baselines.

Works on plain numpy arrays: L2-normalised float32 embeddings (N, D) and integer labels in [0, C).
``toptune`` searches and trains the head; ``embed_with_head`` gives the top-tuned embeddings
(the head's penultimate layer) for retrieval; ``linear_probe`` and ``knn_classifier`` are the baselines.
"""

from shelfsight.adapt.baselines import knn_classifier, linear_probe
from shelfsight.adapt.heads import HeadConfig, MLPHead
from shelfsight.adapt.toptune import (
    EpochRecord,
    TopTuneConfig,
    TopTuneError,
    TopTuneResult,
    TrainedHead,
    build_optimizer,
    embed_with_head,
    head_config,
    load_head,
    predict,
    save_head,
    storage_url,
    suggest_params,
    toptune,
    train_head,
)

__all__ = [
    "EpochRecord", "HeadConfig", "MLPHead", "TopTuneConfig", "TopTuneError", "TopTuneResult", "TrainedHead",
    "build_optimizer", "embed_with_head", "head_config", "knn_classifier", "linear_probe", "load_head", "predict",
    "save_head", "storage_url", "suggest_params", "toptune", "train_head",
]
