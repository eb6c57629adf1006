"""Choosing the runtime of an extraction: the one asked for, checked against PyTorch on real photos.

``auto`` means ONNX Runtime on a CPU when the backbone exports and the export agrees with PyTorch on the
catalogue's own photos, PyTorch otherwise (and always on a GPU, or at reduced precision). OpenVINO is an
explicit choice: at fp32 it was not faster than ONNX Runtime here (``benchmarks/extraction.py``), so
``auto`` does not pick it. The check runs whenever anything is to be computed, on photos about to be
embedded, so a drifted export can never fill the cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from shelfsight.backbones import Backbone
from shelfsight.embeddings.export import ExportError, ensure_onnx, export_path
from shelfsight.embeddings.runtimes import (
    OnnxRuntime,
    OpenVinoRuntime,
    Runtime,
    RuntimeChoice,
    RuntimeReport,
    RuntimeUnavailableError,
    TorchRuntime,
    check_agreement,
)

Probe = Callable[[], torch.Tensor]
"""Decodes a few real photos of the catalogue (uint8, one batch), only when a check needs them."""


def default_threads(num_workers: int) -> int:
    """Runtime threads: the cores the decoding workers leave, at least one."""
    return max(1, (os.cpu_count() or 1) - num_workers)


def select_runtime(choice: RuntimeChoice, backbone: Backbone, *, device: torch.device, precision: str,
                   probe: Probe, threads: int, cache_dir: str | os.PathLike[str] | None = None
                   ) -> tuple[Runtime, RuntimeReport]:
    """The runtime to embed with, and why. An explicit runtime that cannot be used raises
    ``RuntimeUnavailableError`` with the reason; ``auto`` falls back to PyTorch with it."""
    if choice not in ("auto", "torch", "onnx", "openvino"):
        raise RuntimeUnavailableError(f"unknown runtime {choice!r}: use auto, torch, onnx or openvino")
    reference = build_runtime("torch", backbone, device=device, precision=precision, threads=threads)
    if choice == "torch":
        return reference, RuntimeReport(choice, "torch", "asked for", identity=reference.identity())
    blocker = _blocker(choice, device, precision)
    if blocker:
        if choice == "auto":
            return reference, RuntimeReport(choice, "torch", blocker, identity=reference.identity())
        raise RuntimeUnavailableError(f"runtime {choice}: {blocker}")
    name = "onnx" if choice == "auto" else choice
    try:
        candidate = build_runtime(name, backbone, device=device, precision=precision, threads=threads,
                                  cache_dir=cache_dir)
    except (ExportError, RuntimeUnavailableError, ImportError, OSError) as error:
        if choice == "auto":
            return reference, RuntimeReport(choice, "torch", f"{name} unavailable: {error}",
                                            identity=reference.identity())
        raise RuntimeUnavailableError(f"runtime {name} unavailable: {error}") from error
    agreement = check_agreement(candidate, reference, probe())
    if agreement.ok:
        return candidate, RuntimeReport(choice, name, f"agrees with PyTorch {agreement.describe()}", agreement,
                                        candidate.identity())
    message = f"{name} disagrees with PyTorch {agreement.describe()}"
    if choice == "auto":
        return reference, RuntimeReport(choice, "torch", f"{message}; using PyTorch", agreement,
                                        reference.identity())
    raise RuntimeUnavailableError(f"{message}; delete {getattr(candidate, 'path', 'the export')} to re-export it, "
                                  "or use runtime torch (auto falls back to it)")


def _blocker(choice: str, device: torch.device, precision: str) -> str:
    """Why an exported runtime cannot serve this extraction ('' when it can)."""
    if device.type != "cpu":
        return "exported runtimes run on the CPU here; PyTorch is the runtime on a GPU"
    if precision != "fp32":
        return f"exported runtimes run at fp32, and {precision} was asked for"
    return ""


def build_runtime(name: str, backbone: Backbone, *, device: torch.device, precision: str, threads: int,
                  cache_dir: str | os.PathLike[str] | None = None) -> Runtime:
    """The runtime called ``name`` (torch, onnx, openvino) for ``backbone``, unchecked: the one place runtimes are
    built, by :func:`select_runtime` before its check and by the Ray actors that rebuild the driver's checked
    choice (the export is shared through ``cache_dir``)."""
    if name == "torch":
        return TorchRuntime(backbone, device, precision)
    path, _ = ensure_onnx(backbone, export_path(backbone, cache_dir))
    if name == "onnx":
        return OnnxRuntime(path, threads=threads)
    return OpenVinoRuntime(path, threads=threads)
