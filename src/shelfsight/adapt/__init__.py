"""Adapting embeddings to a catalogue: top-tuning (an MLP head searched with Optuna), baselines, and full
fine-tuning.

Top-tuning works on plain numpy arrays: L2-normalised float32 embeddings (N, D) and integer labels in
[0, C). ``toptune`` searches and trains the head; ``embed_with_head`` gives the top-tuned embeddings
(the head's penultimate layer) for retrieval; ``linear_probe`` and ``knn_classifier`` are the baselines, and
``LinearHead`` (``logistic_head``, ``ncm_head``, ``save_linear_head``) serves a linear probe or class means.
``finetune`` trains a backbone end to end on a catalogue's images (one process or ``torchrun``) and saves
it as a backbone named ``BASE@finetune:DATASET``; ``labelled_splits`` is the partition all of them share.
"""

from shelfsight.adapt.baselines import knn_classifier, linear_probe
from shelfsight.adapt.finetune import (
    EpochStats,
    FinetuneConfig,
    FinetuneEpochCallback,
    FinetuneError,
    FinetuneResult,
    finetune,
    load_finetune_config,
    predict_classes,
)
from shelfsight.adapt.heads import (
    LINEAR_HEAD_FORMAT,
    HeadConfig,
    HeadFormatError,
    LinearHead,
    MLPHead,
    head_format,
    load_linear_head,
    logistic_head,
    ncm_head,
    save_linear_head,
)
from shelfsight.adapt.splits import LabelledSplits, labelled_splits, validation_mask
from shelfsight.adapt.toptune import TopTuneConfig, TopTuneResult, storage_url, suggest_params, toptune
from shelfsight.adapt.toptune_inference import embed_with_head, load_head, predict, save_head
from shelfsight.adapt.toptune_training import (
    EpochRecord,
    HeadEpochCallback,
    TopTuneError,
    TrainedHead,
    build_head_optimizer,
    head_config,
    train_head,
)

__all__ = [
    "EpochRecord", "EpochStats", "FinetuneConfig", "FinetuneEpochCallback", "FinetuneError", "FinetuneResult",
    "HeadConfig", "HeadEpochCallback", "HeadFormatError", "LINEAR_HEAD_FORMAT", "LabelledSplits", "LinearHead",
    "MLPHead", "TopTuneConfig", "TopTuneError", "TopTuneResult", "TrainedHead", "build_head_optimizer",
    "embed_with_head", "finetune", "head_config", "head_format", "knn_classifier", "labelled_splits", "linear_probe",
    "load_finetune_config", "load_head", "load_linear_head", "logistic_head", "ncm_head", "predict",
    "predict_classes", "save_head", "save_linear_head", "storage_url", "suggest_params", "toptune", "train_head",
    "validation_mask",
]
