"""The backbone as one exported graph: uint8 pixels in, L2-normalised embeddings out.

:class:`EmbeddingModel` is extraction's arithmetic (pixel normalisation, the encoder, L2 normalisation) as
one module, so an exported graph computes exactly what ``embed_catalog`` computes. Exports are cached by
what decides the graph (backbone identity and preprocessing, torch version, opset) and written atomically,
so the bench, ``shelfsight embed`` and the service share one file per backbone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shelfsight import paths
from shelfsight.backbones import Backbone, Preprocess, normalize_pixels
from shelfsight.embeddings.cache import cache_key
from shelfsight.embeddings.onnx_wrap import WRAP_VERSION, wrap_onnx
from shelfsight.embeddings.versions import library_versions
from shelfsight.errors import ShelfsightError
from shelfsight.files import atomic_write

ONNX_OPSET = 18


class ExportError(ShelfsightError):
    """The backbone's graph cannot be exported (dynamic control flow, unsupported operators)."""


class EmbeddingModel(nn.Module):
    """Normalise pixels, run the encoder, L2-normalise: extraction's forward pass as one exportable module."""

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


def onnx_key(backbone: Backbone) -> str:
    """What decides the exported graph: the backbone identity, its preprocessing, the exporter's and the model
    library's versions."""
    wrapped = {"wrap": WRAP_VERSION} if backbone.spec.library == "onnx" else {}  # an onnx: file is wrapped, not traced
    return cache_key({"backbone": backbone.cache_identity(), "torch": torch.__version__, "opset": ONNX_OPSET,
                      "libraries": library_versions(backbone), **wrapped})


def export_path(backbone: Backbone, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the shared export of ``backbone`` lives: ``EXPORTS/KEY[:2]/KEY.onnx`` (see ``paths.export_dir``)."""
    key = onnx_key(backbone)
    return paths.export_dir(cache_dir) / key[:2] / f"{key}.onnx"


def export_onnx(backbone: Backbone, path: str | os.PathLike[str]) -> Path:
    """Export the backbone (pixel and L2 normalisation included) with a dynamic batch axis; written atomically.
    An ``onnx:`` backbone's own file is wrapped with the same contract (``onnx_wrap``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = backbone.preprocess.input_size
    model = EmbeddingModel(backbone.encoder.eval(), backbone.preprocess, channels_last=False).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)

    def export(temporary: Path) -> None:
        if backbone.spec.library == "onnx":  # already a graph: wrapped with its preprocessing, not traced
            wrap_onnx(backbone, temporary)
            return
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(temporary), input_names=["pixels"], output_names=["embedding"],
                              dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              opset_version=ONNX_OPSET, dynamo=True, optimize=True, external_data=False)

    try:
        atomic_write(target, export, mode=None, suffix=".onnx")
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ExportError(f"cannot export {backbone.spec.name} to ONNX ({type(error).__name__}: {first_line}); "
                          "use the torch runtime") from error
    return target


def ensure_onnx(backbone: Backbone, path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The export at ``path`` (default: the cache's), exported now if missing or made for another backbone.

    Returns ``(path, exported_now)``; a stamp beside the file records the key it was made for."""
    target = Path(path) if path is not None else export_path(backbone)
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
