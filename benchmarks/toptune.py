"""Top-tuning wall time on real embeddings: the paper's search, then the final head, against two baselines.

Grocery Store embeddings of efficientnet_lite0 (from the embedding cache): train split for training, val for
the search and early stopping, test for the reported metrics. The protocol is the full one:
--trials trials of --trial-epochs epochs x --repeats seeds (median pruning), then the final head with the best
parameters for up to 1000 epochs with early stopping (patience 20). Target: search + final under 3 minutes.
For comparison: a linear probe (scikit-learn's default C, and C chosen on val) and cosine kNN, on the frozen
embeddings, and kNN on the top-tuned ones. The 1-minute load average is printed first: other processes on the
CPU slow every number here. ``--shared-cpu`` measures what a competing busy process costs a head trained with
one and with two torch threads, side by side (heads train with one: HEAD_THREADS).

    SHELFSIGHT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/toptune.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from shelfsight import embed_catalog, load_backbone, load_catalog
from shelfsight.adapt import TopTuneConfig, embed_with_head, knn_classifier, linear_probe, predict, toptune
from shelfsight.adapt.toptune_training import HEAD_THREADS, as_tensors, head_threads, train_on_tensors

PROBE_C = (1.0, 10.0, 100.0)


def split_arrays(model: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], float]:
    """(vectors, label indices) per split, the class names, and the seconds spent loading."""
    started = time.perf_counter()
    catalog = load_catalog("grocery-store")
    embeddings = embed_catalog(catalog, load_backbone(model), progress=False)
    classes = list(catalog.classes)
    index = {name: i for i, name in enumerate(classes)}
    items = {item.item_id: item for item in catalog}
    splits = np.array([items[i].split for i in embeddings.ids])
    labels = np.array([index[items[i].label] for i in embeddings.ids])
    arrays = {name: (embeddings.vectors[splits == name], labels[splits == name]) for name in ("train", "val", "test")}
    return arrays, classes, time.perf_counter() - started


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> str:
    return f"accuracy {accuracy_score(y_true, y_pred):.4f}, macro F1 {f1_score(y_true, y_pred, average='macro'):.4f}"


def shared_cpu(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               epochs: int = 20, rounds: int = 3) -> None:
    """One head trained for ``epochs`` with 1 and with 2 torch threads, on the CPU as it is and with a busy
    process holding a core, interleaved; medians of ``rounds``. What a loaded machine costs each setting."""
    params = {"layers": 2, "width": 512, "dropout": 0.2, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "AdamW"}

    def seconds(threads: int) -> float:
        with head_threads(threads):
            started = time.perf_counter()
            train_on_tensors(as_tensors(x_train, y_train, "train"), as_tensors(x_val, y_val, "val"), params,
                             n_classes=int(max(y_train.max(), y_val.max())) + 1, epochs=epochs, patience=epochs,
                             batch_size=256, seed=0, on_epoch=None)
            return time.perf_counter() - started

    results: dict[tuple[str, int], list[float]] = {}
    for label in ("quiet", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if label == "busy" else None
        try:
            for _ in range(rounds):
                for threads in (1, 2):
                    results.setdefault((label, threads), []).append(seconds(threads))
        finally:
            if busy is not None:
                busy.kill()
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"one head, {epochs} epochs, median of {rounds} (load average before: {os.getloadavg()[0]:.2f}):")
    for threads in (1, 2):
        print(f"  {threads} thread(s): {median['quiet', threads]:.2f} s as is, {median['busy', threads]:.2f} s with a "
              f"busy process, slowdown {median['busy', threads] / median['quiet', threads]:.2f}x")
    print(f"  shelfsight trains heads with {HEAD_THREADS} thread(s) (adapt/toptune_training.py: HEAD_THREADS)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--trial-epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--storage", default=None, help="SQLite file to keep (and resume) the study")
    parser.add_argument("--quiet", action="store_true", help="no line per trial")
    parser.add_argument("--shared-cpu", action="store_true",
                        help="only compare 1 and 2 head threads with and without a competing busy process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    arrays, classes, load_seconds = split_arrays(args.model)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = arrays["train"], arrays["val"], arrays["test"]
    print(f"{args.model} on Grocery Store: train {len(y_train)}, val {len(y_val)}, test {len(y_test)}, "
          f"dim {x_train.shape[1]}, {len(classes)} classes (loaded in {load_seconds:.1f} s); "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f}")
    if args.shared_cpu:
        shared_cpu(x_train, y_train, x_val, y_val)
        return

    config = TopTuneConfig(trials=args.trials, trial_epochs=args.trial_epochs, trial_repeats=args.repeats)
    result = toptune(x_train, y_train, x_val, y_val, config=config, storage=args.storage,
                     study_name=f"toptune-{args.model}", progress=not args.quiet, n_classes=len(classes))
    total = result.tuning_seconds + result.final_seconds
    print(f"search: {result.trials_completed} completed, {result.trials_pruned} pruned ({result.trials_run} run now), "
          f"{result.tuning_seconds:.1f} s; best trial val accuracy {result.best_trial_value:.4f}")
    print(f"best params: {result.best_params}")
    print(f"final head: {result.epochs_trained} epochs (early stop: {result.stopped_early}), "
          f"{result.final_seconds:.1f} s, val accuracy {result.final_val_accuracy:.4f}")
    print(f"total top-tuning time: {total:.1f} s (target < 180 s: {'met' if total < 180 else 'MISSED'})")

    print(f"top-tuned head, test: {scores(y_test, predict(result.head, x_test)[0])}")
    tuned = knn_classifier(embed_with_head(result.head, x_train), y_train).predict(embed_with_head(result.head, x_test))
    print(f"kNN (k=5) on top-tuned embeddings, test: {scores(y_test, tuned)}")
    probes = {c: linear_probe(x_train, y_train, seed=0, c=c) for c in PROBE_C}
    print(f"linear probe (C=1, scikit-learn default), test: {scores(y_test, probes[1.0].predict(x_test))}")
    best_c = max(PROBE_C, key=lambda c: accuracy_score(y_val, probes[c].predict(x_val)))
    print(f"linear probe (C={best_c:g}, chosen on val from {PROBE_C}), test: "
          f"{scores(y_test, probes[best_c].predict(x_test))}")
    print(f"kNN (k=5) on frozen embeddings, test: {scores(y_test, knn_classifier(x_train, y_train).predict(x_test))}")


if __name__ == "__main__":
    main()
