"""Runtimes that run a backbone over uint8 batches: PyTorch eager, ONNX Runtime, OpenVINO.

Every runtime answers ``runtime(pixels) -> (B, D)`` L2-normalised float32 for uint8 pixels of shape
(B, 3, H, W), and says its ``identity`` (part of the embedding cache key, so vectors from different
runtimes never mix). A runtime other than PyTorch is used only after it agrees with PyTorch on real
photos of the catalogue being embedded (:func:`check_agreement`): ``auto`` falls back to PyTorch and says
why, an explicit choice fails with the same message. On a GPU PyTorch stays the runtime.

ONNX Runtime and OpenVINO run the graph of :mod:`shelfsight.embeddings.export`, at fp32 (OpenVINO's
default on CPUs with bf16 units is bf16: its precision hint is set to f32 here), with idle threads that
sleep instead of spinning, so a shared CPU does not collapse their throughput.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from shelfsight.backbones import Backbone, Preprocess, normalize_pixels
from shelfsight.errors import ShelfsightError

RuntimeChoice = Literal["auto", "torch", "onnx", "openvino"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")
MIN_COSINE = 0.9999
"""Every probe vector's cosine with PyTorch's must reach this (the agreement rule: :attr:`Agreement.ok`)."""
MAX_ABS_DIFF = 1e-3
"""And no coordinate may differ from PyTorch's by more (the vectors are unit length).

One rule for extraction (``runtime_choice``) and the service (``serve.encoder.choose_encoder``): both run the
same export against the same PyTorch model, and the service's vectors are searched against the ones extraction
stored, so an export good enough to fill the cache is good enough to serve, and the reverse. Why these bounds:
the exports agree with PyTorch to about 5e-7 here (cosine >= 0.9999998, ``docs/serving.md``), float32 rounding
from fused operators and another summation order; the bounds leave three orders of magnitude for other CPUs'
kernels, while an export of the wrong network or preprocessing misses them by far (``tests/test_runtimes.py``).
They are extraction's bounds, kept as they were, because the runtime they admit is part of the embedding key."""


class RuntimeUnavailableError(ShelfsightError):
    """A runtime that cannot be used: not installed, not exportable, or disagreeing with PyTorch."""


class Runtime(Protocol):
    name: str

    def identity(self) -> dict[str, Any]: ...

    def __call__(self, pixels: torch.Tensor) -> np.ndarray: ...


def prepare_for_inference(encoder: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """Eval mode on ``device``, batch norm folded into convolutions where the graph can be traced,
    channels-last memory: about twice the CPU throughput of a plain eval model for CNNs, and the same
    numbers up to float rounding. Returns the model and whether folding applied (part of cache keys).
    """
    from torch.fx.experimental.optimization import fuse

    model = encoder.to(device).eval()
    try:
        model, fused = fuse(model), True
    except Exception:  # noqa: BLE001 - untraceable models (dynamic control flow) run unfused
        fused = False
    return model.to(memory_format=torch.channels_last), fused


def torch_forward(encoder: torch.nn.Module, pixels: torch.Tensor, preprocess: Preprocess, device: torch.device,
                  precision: str) -> np.ndarray:
    """uint8 batch -> L2-normalised float32 vectors, with autocast for bf16/fp16."""
    autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    with torch.inference_mode():
        batch = normalize_pixels(pixels.to(device, non_blocking=True), preprocess)
        with autocast:
            features = encoder(batch.contiguous(memory_format=torch.channels_last))
        features = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


class TorchRuntime:
    """PyTorch eager, prepared for inference (folded batch norm, channels-last)."""

    name = "torch"

    def __init__(self, backbone: Backbone, device: torch.device, precision: str) -> None:
        self.encoder, self.fused = prepare_for_inference(backbone.encoder, device)
        self.preprocess, self.device, self.precision = backbone.preprocess, device, precision

    def identity(self) -> dict[str, Any]:
        return {"runtime": "torch", "fused": self.fused}

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        return torch_forward(self.encoder, pixels, self.preprocess, self.device, self.precision)


class OnnxRuntime:
    """ONNX Runtime on the CPU over the exported graph (``pixels`` uint8 in, ``embedding`` out)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle threads sleep: with spinning, two busy cores halve its throughput (benchmarks/extraction.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def identity(self) -> dict[str, Any]:
        return {"runtime": "onnx", "onnxruntime": metadata.version("onnxruntime"), "export": self.path.stem}

    def __call__(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
        (output,) = self.session.run(None, {self._input: np.ascontiguousarray(array, dtype=np.uint8)})
        return np.asarray(output, dtype=np.float32)


class OpenVinoRuntime:
    """OpenVINO on the CPU over the exported graph, at full fp32 precision (its f32 precision hint)."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeUnavailableError("the openvino runtime needs the openvino package: "
                                          "pip install openvino") from None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.path = Path(path)
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)

    def identity(self) -> dict[str, Any]:
        return {"runtime": "openvino", "openvino": metadata.version("openvino"), "precision": "f32",
                "export": self.path.stem}

    def __call__(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
        output = self.compiled(np.ascontiguousarray(array, dtype=np.uint8))[0]
        return np.asarray(output, dtype=np.float32)


@dataclass(frozen=True)
class Agreement:
    """How closely a runtime reproduces PyTorch on the probe photos."""

    photos: int
    min_cosine: float
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.photos > 0 and self.min_cosine >= MIN_COSINE and self.max_abs_diff <= MAX_ABS_DIFF

    def describe(self, photos: str = "catalogue photo(s)") -> str:
        return (f"on {self.photos} {photos}: min cosine {self.min_cosine:.6f} (needs >= {MIN_COSINE}), "
                f"max abs difference {self.max_abs_diff:.2e} (needs <= {MAX_ABS_DIFF:g})")


def check_agreement(candidate: Runtime, reference: Runtime, probe: torch.Tensor) -> Agreement:
    """Compare ``candidate`` with the PyTorch ``reference`` on real photos (uint8, one batch)."""
    if len(probe) == 0:
        return Agreement(0, float("nan"), float("nan"))
    return agreement_of(candidate(probe), reference(probe))


def agreement_of(got: np.ndarray, want: np.ndarray) -> Agreement:
    """How closely the vectors ``got`` reproduce PyTorch's ``want`` for the same photos, row by row."""
    if len(want) == 0:
        return Agreement(0, float("nan"), float("nan"))
    if got.shape != want.shape:
        return Agreement(len(want), -1.0, float("inf"))
    cosine = np.sum(got.astype(np.float64) * want, axis=1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    finite = np.isfinite(got).all()
    return Agreement(len(want), float(cosine.min()) if finite else -1.0,
                     float(np.abs(got - want).max()) if finite else float("inf"))


@dataclass(frozen=True)
class RuntimeReport:
    """Which runtime embeds, and why (shown by the CLI, kept in the cache manifest)."""

    requested: str
    chosen: str
    reason: str
    agreement: Agreement | None = None
    identity: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "chosen": self.chosen, "reason": self.reason}
        if self.agreement is not None:
            out.update(probe_photos=self.agreement.photos, min_cosine=self.agreement.min_cosine,
                       max_abs_diff=self.agreement.max_abs_diff)
        return out
