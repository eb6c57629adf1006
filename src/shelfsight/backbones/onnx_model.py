"""A user's ONNX file as a backbone: ``onnx:path/to/model.onnx``, run by ONNX Runtime on the CPU.

An ONNX graph says nothing about how photos must be prepared, so the preprocessing is declared: in a sidecar
``model.onnx.yaml`` beside the file (``input_size``, ``crop_pct`` or ``resize_size``, ``interpolation``,
``mean``/``std`` or ``range: [-1, 1]``, ``resize_mode``, ``channel_order``, ``layout``; and ``family``,
``output``), or in a bench model entry's ``preprocess:``, which overrides the sidecar field by field. A file
with neither is refused: ImageNet defaults guessed for a graph trained otherwise would give wrong numbers
silently. Its identity is the file's digest plus the resolved preprocessing.

The encoder (:class:`OnnxFileEncoder`) takes the normalised float batch every backbone takes, so extraction's
PyTorch path, parameter counts and the service's PyTorch encoder run it as they run any backbone; the export
(``embeddings.export``) wraps the file into extraction's graph contract (uint8 pixels in, L2-normalised out).
A graph whose input is ``uint8`` normalises the pixels itself (a shelfsight export does): it gets the pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from shelfsight.backbones.loaders import FeatureEncoder
from shelfsight.backbones.spec import BackboneSpec, Family, Preprocess
from shelfsight.errors import ModelUnavailableError, UnknownModelError

PREFIX = "onnx:"
SIDECAR_SUFFIX = ".yaml"
RANGES: dict[tuple[float, float], tuple[float, float]] = {(-1.0, 1.0): (0.5, 0.5), (0.0, 1.0): (0.0, 1.0),
                                                          (0.0, 255.0): (0.0, 1.0 / 255.0)}
"""``range: [LOW, HIGH]`` -> (mean, std) per channel: pixels scaled to [0, 1] then ``(x - mean) / std``."""
SPEC_KEYS = ("family", "output")
"""Sidecar keys that describe the model rather than its preprocessing."""


def sidecar_path(path: Path) -> Path:
    """Where a file's declaration lives: ``model.onnx.yaml``."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def onnx_file(name: str) -> Path:
    """The file an ``onnx:PATH`` name points at, resolved; a clear error when it is not there."""
    raw = name[len(PREFIX):]
    if not raw:
        raise UnknownModelError(f"{name!r}: nothing after the onnx: prefix; write onnx:path/to/model.onnx")
    path = Path(raw).expanduser().resolve()
    if not path.is_file():
        raise UnknownModelError(f"{name!r}: no ONNX file at {path}")
    return path


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's mapping, or None when the file has none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        mapping = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UnknownModelError(f"{sidecar}: cannot read the ONNX model's declaration ({exc})") from None
    if not isinstance(mapping, dict):
        raise UnknownModelError(f"{sidecar}: expected a mapping of preprocessing fields (input_size, mean, ...)")
    return mapping


def resolve_preprocess(base: Preprocess, declared: dict[str, Any] | None, where: str = "preprocess") -> Preprocess:
    """``base`` with ``declared`` fields over it; ``range: [-1, 1]`` and ``resize_size: 256`` are shorthands for
    mean/std and crop_pct. Lists become tuples. An unknown field or a bad value names ``where``."""
    if not declared:
        return base
    fields: dict[str, Any] = {k: (tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v)
                              for k, v in declared.items() if k not in SPEC_KEYS}
    if "range" in fields:
        low_high = fields.pop("range")
        if low_high not in RANGES:
            raise ValueError(f"{where}: range must be one of {[list(r) for r in RANGES]}, got {list(low_high)}")
        mean, std = RANGES[low_high]
        fields.setdefault("mean", (mean,) * 3)
        fields.setdefault("std", (std,) * 3)
    size = int(fields.get("input_size", base.input_size))
    if "resize_size" in fields:
        fields["crop_pct"] = _crop_for(size, int(fields.pop("resize_size")))
    known = set(Preprocess.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: unknown preprocessing field {unknown[0]!r}; use {', '.join(sorted(known))}, "
                         "range or resize_size")
    try:
        return base.replace(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _crop_for(input_size: int, resize_size: int) -> float:
    """The ``crop_pct`` whose ``resize_size`` (``int(input_size / crop_pct)``) is exactly ``resize_size``."""
    if resize_size < input_size:
        raise ValueError(f"resize_size {resize_size} is smaller than input_size {input_size}")
    crop = input_size / resize_size
    while int(input_size / crop) < resize_size:  # float rounding may land one pixel short
        crop = math.nextafter(crop, 0.0)
    return crop


def onnx_spec(name: str) -> BackboneSpec:
    """The spec of ``onnx:PATH``: its sidecar's preprocessing (defaults where none is declared; loading refuses a
    file with no declaration at all), family and output."""
    path = onnx_file(name)
    declared = read_sidecar(path) or {}
    where = str(sidecar_path(path))
    try:
        preprocess = resolve_preprocess(Preprocess(), declared, where)
        family: Family = declared.get("family", "supervised")
        return BackboneSpec(name=name, family=family, library="onnx", checkpoint=str(path), preprocess=preprocess,
                            onnx_output=declared.get("output"), description="ONNX file run by ONNX Runtime")
    except (TypeError, ValueError) as exc:
        raise UnknownModelError(f"{where}: {exc}") from None


def require_declaration(spec: BackboneSpec, overrides: dict[str, Any] | None) -> None:
    """Refuse a file whose preprocessing nobody declared."""
    if overrides or sidecar_path(Path(spec.checkpoint)).is_file():
        return
    raise ModelUnavailableError(
        f"{spec.name}: its preprocessing is not declared. Write {sidecar_path(Path(spec.checkpoint))} (e.g. "
        "`input_size: 224`, `resize_size: 256`, `interpolation: bicubic`, `mean: [0.485, 0.456, 0.406]`, "
        "`std: [0.229, 0.224, 0.225]` or `range: [-1, 1]`, `channel_order: rgb`), or give `preprocess:` in the "
        "bench model entry; see docs/own-embeddings.md")


class OnnxFileEncoder(FeatureEncoder):
    """ONNX Runtime over the user's graph, behind the ``FeatureEncoder`` call: normalised float ``(B, 3, H, W)``
    in, ``(B, D)`` features out (flattened; L2 normalisation stays extraction's). Channels are in the graph's
    order already (``normalize_pixels`` applied ``channel_order``); ``layout`` is applied here. A graph with a
    fixed batch of one is run image by image."""

    def __init__(self, path: Path, preprocess: Preprocess, output: str | None = None, threads: int = 0) -> None:
        super().__init__(nn.Identity(), "onnx")
        self.path, self.preprocess, self.output, self.threads = path, preprocess, output, threads
        self._open()

    def _open(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is the file's: say which
            raise ModelUnavailableError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelUnavailableError(f"{self.path}: expected one image input, the graph has {len(inputs)} "
                                        f"({', '.join(i.name for i in inputs)})")
        self._input = inputs[0]
        names = [o.name for o in self.session.get_outputs()]
        if self.output is not None and self.output not in names:
            raise ModelUnavailableError(f"{self.path}: no output {self.output!r}; it has {', '.join(names)}")
        self._output = self.output or names[0]
        self.takes_pixels = self._input.type == "tensor(uint8)"
        batch = self._input.shape[0] if self._input.shape else None
        self.fixed_batch = batch == 1
        self.parameter_count = _initializer_count(self.path)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.detach().float().cpu().numpy()
        if self.takes_pixels:  # the graph normalises: give it back the uint8 pixels (exact after rounding)
            mean = np.asarray(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(self.preprocess.std, np.float32).reshape(1, 3, 1, 1)
            batch = np.clip(np.rint((batch * std + mean) * 255.0), 0, 255).astype(np.uint8)
        elif self._input.type == "tensor(float16)":
            batch = batch.astype(np.float16)
        if self.preprocess.layout == "nhwc":
            batch = batch.transpose(0, 2, 3, 1)
        rows = [batch[i:i + 1] for i in range(len(batch))] if self.fixed_batch else [batch]
        outputs = [self.session.run([self._output], {self._input.name: np.ascontiguousarray(r)})[0] for r in rows]
        features = np.concatenate(outputs).reshape(len(batch), -1).astype(np.float32, copy=False)
        return torch.from_numpy(features)


def _initializer_count(path: Path) -> int:
    """The graph's weights (elements of its initializers): its parameter count."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer))
