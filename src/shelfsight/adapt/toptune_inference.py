"""Using a top-tuned head: its embeddings (the penultimate layer, for retrieval), its class predictions, and
the folder it is saved in (``head.safetensors`` and ``head.json``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from shelfsight.adapt.heads import HeadConfig, MLPHead
from shelfsight.adapt.toptune_training import INFERENCE_BATCH, Params, TopTuneError

HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
HEAD_FORMAT = "shelfsight-mlp-head"


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
