"""Image -> vector for the service: the same decoding, pixels and arithmetic as batch extraction.

Two interchangeable paths behind one call, ``encoder(pixels) -> (B, D)`` L2-normalised float32:

- :class:`TorchEncoder`: the backbone prepared exactly as ``embed_catalog`` prepares it (batch norm
  folded, channels-last), so a photo embedded by the service equals its cached bench embedding.
- :class:`OnnxEncoder`: the backbone exported once to ONNX (pixel normalisation and L2 normalisation
  inside the graph, ``uint8`` in) and run by ONNX Runtime, several times faster on CPU for a single
  image (see ``benchmarks/serve_load.py``).

:func:`choose_encoder` checks that the two agree on a probe batch, by extraction's rule
(:func:`shelfsight.embeddings.runtimes.agreement_of`: one rule for both, so an export that filled the cache
can serve and the reverse), and keeps the faster, so ``auto`` never serves an export whose numbers drifted.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from shelfsight.backbones import Backbone, Preprocess
from shelfsight.embeddings.export import EmbeddingModel, ExportError
from shelfsight.embeddings.export import ensure_onnx as shared_ensure_onnx
from shelfsight.embeddings.export import export_onnx as shared_export_onnx
from shelfsight.embeddings.runtimes import OnnxRuntime, agreement_of, prepare_for_inference
from shelfsight.serve.errors import ServeError

EncoderChoice = Literal["auto", "torch", "onnx"]


class Encoder(Protocol):
    """``uint8`` pixels of shape (B, 3, H, W) -> L2-normalised float32 embeddings of shape (B, D)."""

    name: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


class TorchEncoder:
    """PyTorch eager on the CPU, prepared as batch extraction prepares it (folded batch norm, channels-last)."""

    name = "torch"

    def __init__(self, backbone: Backbone) -> None:
        encoder, self.fused = prepare_for_inference(backbone.encoder, torch.device("cpu"))
        self.model = EmbeddingModel(encoder, backbone.preprocess, channels_last=True).eval()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(pixels))).numpy().astype(np.float32, copy=False)


class OnnxEncoder(OnnxRuntime):
    """ONNX Runtime on the CPU over the exported :class:`EmbeddingModel` (``pixels`` uint8 in, ``embedding`` out):
    extraction's runtime, whose idle threads sleep instead of spinning, as a service shares its cores with the
    Milvus Lite process and other requests (one image: 11.5 ms without spinning, 23.6 ms with, on 2 busy cores)."""


# ── ONNX export: shared with extraction (``shelfsight.embeddings.export``) ──────────────────────────


def export_onnx(backbone: Backbone, path: str | os.PathLike[str]) -> Path:
    """Export for the service; an export failure is a ``ServeError`` that says to serve with PyTorch."""
    try:
        return shared_export_onnx(backbone, path)
    except ExportError as error:
        raise ServeError(f"{error}; serve with --encoder torch") from error


def ensure_onnx(backbone: Backbone, path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """The exported model at ``path``, exported now if missing or made for another backbone; (path, exported?)."""
    try:
        return shared_ensure_onnx(backbone, path)
    except ExportError as error:
        raise ServeError(f"{error}; serve with --encoder torch") from error


# ── choosing ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class EncoderReport:
    """Which encoder serves, and why: median single-image latencies and the agreement of the two paths."""

    chosen: str
    torch_ms: float | None = None
    onnx_ms: float | None = None
    max_abs_diff: float | None = None
    note: str = ""


def median_ms(encoder: Encoder, pixels: np.ndarray, *, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time of one call, in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        encoder(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder(pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def probe_pixels(preprocess: Preprocess, batch: int = 1, seed: int = 0) -> np.ndarray:
    size = preprocess.input_size
    return np.random.default_rng(seed).integers(0, 256, size=(batch, 3, size, size), dtype=np.uint8)


def choose_encoder(torch_encoder: TorchEncoder, onnx_encoder: OnnxEncoder | None, probe: np.ndarray, *,
                   choice: EncoderChoice = "auto", repeats: int = 10) -> tuple[Encoder, EncoderReport]:
    """The encoder to serve: the one asked for, or under ``auto`` the faster of two that agree."""
    if choice == "torch" or onnx_encoder is None:
        return torch_encoder, EncoderReport("torch", note="asked for" if choice == "torch" else "no ONNX export")
    agreement = agreement_of(onnx_encoder(probe), torch_encoder(probe))  # extraction's rule (runtimes.MAX_ABS_DIFF)
    difference = agreement.max_abs_diff
    if not agreement.ok:
        if choice == "onnx":
            raise ServeError(f"the ONNX export at {onnx_encoder.path} disagrees with PyTorch "
                             f"{agreement.describe('probe image(s)')}; delete it to re-export, or serve with "
                             "--encoder torch")
        return torch_encoder, EncoderReport("torch", max_abs_diff=difference,
                                            note=f"ONNX export disagrees by {difference:.2e}; using PyTorch")
    if choice == "onnx":
        return onnx_encoder, EncoderReport("onnx", max_abs_diff=difference, note="asked for")
    torch_ms = median_ms(torch_encoder, probe, repeats=repeats)
    onnx_ms = median_ms(onnx_encoder, probe, repeats=repeats)
    chosen: Encoder = onnx_encoder if onnx_ms < torch_ms else torch_encoder
    return chosen, EncoderReport(chosen.name, torch_ms=torch_ms, onnx_ms=onnx_ms, max_abs_diff=difference,
                                 note="faster of the two on a single image")
