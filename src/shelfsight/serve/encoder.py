"""Image -> vector for the service: the same decoding, pixels and arithmetic as batch extraction.

Two interchangeable paths behind one call, ``encoder(pixels) -> (B, D)`` L2-normalised float32:

- :class:`TorchEncoder`: the backbone prepared exactly as ``embed_catalog`` prepares it (batch norm
  folded, channels-last), so a photo embedded by the service equals its cached bench embedding.
- :class:`OnnxEncoder`: the backbone exported once to ONNX (pixel normalisation and L2 normalisation
  inside the graph, ``uint8`` in) and run by ONNX Runtime, several times faster on CPU for a single
  image (see ``benchmarks/serve_load.py``).

:func:`choose_encoder` checks that the two agree on a probe batch and keeps the faster, so ``auto``
never serves an export whose numbers drifted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from shelfsight.backbones import Backbone, Preprocess, build_pixel_transform, normalize_pixels
from shelfsight.catalog.images import decode_image
from shelfsight.embeddings.cache import cache_key
from shelfsight.embeddings.extract import prepare_for_inference
from shelfsight.files import atomic_write
from shelfsight.serve.errors import ServeError

EncoderChoice = Literal["auto", "torch", "onnx"]
ONNX_OPSET = 18
AGREEMENT_TOLERANCE = 1e-4
"""Largest absolute difference allowed between the ONNX Runtime and PyTorch embeddings (unit vectors)."""


class Encoder(Protocol):
    """``uint8`` pixels of shape (B, 3, H, W) -> L2-normalised float32 embeddings of shape (B, D)."""

    name: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


class EmbeddingModel(nn.Module):
    """Normalise pixels, run the encoder, L2-normalise: ``_forward`` of extraction as one module (exportable)."""

    def __init__(self, encoder: nn.Module, preprocess: Preprocess, *, channels_last: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.preprocess = preprocess
        self.channels_last = channels_last

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = normalize_pixels(pixels, self.preprocess)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.encoder(batch)
        return F.normalize(features.float(), dim=1, eps=1e-12)


class TorchEncoder:
    """PyTorch eager on the CPU, prepared as batch extraction prepares it (folded batch norm, channels-last)."""

    name = "torch"

    def __init__(self, backbone: Backbone) -> None:
        encoder, self.fused = prepare_for_inference(backbone.encoder, torch.device("cpu"))
        self.model = EmbeddingModel(encoder, backbone.preprocess, channels_last=True).eval()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(pixels))).numpy().astype(np.float32, copy=False)


class OnnxEncoder:
    """ONNX Runtime on the CPU over an exported :class:`EmbeddingModel` (``pixels`` uint8 in, ``embedding`` out)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # Idle worker threads sleep instead of spinning: the service shares its cores with the Milvus Lite
        # process and other requests (one image: 11.5 ms without spinning, 23.6 ms with, on 2 busy cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        (output,) = self.session.run(None, {self._input: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return np.asarray(output, dtype=np.float32)


class Pixels:
    """A photo file -> ``uint8`` (3, H, W) array, decoded as extraction decodes it (JPEG draft included)."""

    def __init__(self, preprocess: Preprocess, *, draft: bool = True) -> None:
        self.transform = build_pixel_transform(preprocess)
        self.draft_size = preprocess.resize_size if draft else None

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Raises ``ImageDecodeError`` for anything that is not a readable image."""
        image: Image.Image = decode_image(path, draft_size=self.draft_size)
        return self.transform(image).numpy()  # type: ignore[no-any-return]


# ── ONNX export ───────────────────────────────────────────────────────────────────────────────────


def onnx_key(backbone: Backbone) -> str:
    """What decides the exported graph: the backbone identity, its preprocessing, the exporter version."""
    return cache_key({"backbone": backbone.cache_identity(), "torch": torch.__version__, "opset": ONNX_OPSET})


def export_onnx(backbone: Backbone, path: str | os.PathLike[str]) -> Path:
    """Export the backbone (pixel and L2 normalisation included) with a dynamic batch axis; written atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = backbone.preprocess.input_size
    model = EmbeddingModel(backbone.encoder.eval(), backbone.preprocess, channels_last=False).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)

    def export(temporary: Path) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(temporary), input_names=["pixels"], output_names=["embedding"],
                              dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              opset_version=ONNX_OPSET, dynamo=True, optimize=True, external_data=False)

    try:
        atomic_write(target, export, mode=None, suffix=".onnx")
    except Exception as error:
        raise ServeError(f"cannot export {backbone.spec.name} to ONNX ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); serve with --encoder torch") from error
    return target


def ensure_onnx(backbone: Backbone, path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """The exported model at ``path``, exported now if missing or made for another backbone; (path, exported?)."""
    target = Path(path)
    stamp = target.with_name(target.name + ".json")
    key = onnx_key(backbone)
    try:
        if target.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("key") == key:
            return target, False
    except (OSError, ValueError):
        pass
    export_onnx(backbone, target)
    stamp.write_text(json.dumps({"key": key, "model": backbone.spec.name, "torch": torch.__version__,
                                 "opset": ONNX_OPSET}, indent=2) + "\n", encoding="utf-8")
    return target, True


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
    difference = float(np.abs(onnx_encoder(probe) - torch_encoder(probe)).max())
    if difference > AGREEMENT_TOLERANCE:
        if choice == "onnx":
            raise ServeError(f"the ONNX export at {onnx_encoder.path} disagrees with PyTorch by {difference:.2e} "
                             f"(> {AGREEMENT_TOLERANCE:g}); delete it to re-export, or serve with --encoder torch")
        return torch_encoder, EncoderReport("torch", max_abs_diff=difference,
                                            note=f"ONNX export disagrees by {difference:.2e}; using PyTorch")
    if choice == "onnx":
        return onnx_encoder, EncoderReport("onnx", max_abs_diff=difference, note="asked for")
    torch_ms = median_ms(torch_encoder, probe, repeats=repeats)
    onnx_ms = median_ms(onnx_encoder, probe, repeats=repeats)
    chosen: Encoder = onnx_encoder if onnx_ms < torch_ms else torch_encoder
    return chosen, EncoderReport(chosen.name, torch_ms=torch_ms, onnx_ms=onnx_ms, max_abs_diff=difference,
                                 note="faster of the two on a single image")
