"""Which installed libraries decide an embedding's numbers, by version: a part of every embedding space's key
and of the ONNX export's, so an upgrade never reads vectors or graphs the old code made."""

from __future__ import annotations

from importlib import metadata

from shelfsight.backbones import Backbone

DECODING_LIBRARIES = ("pillow", "torchvision", "torch")
"""Distributions whose code turns a file into the model's input (Pillow decodes, torchvision resizes and crops,
torch runs it): every runtime's vectors depend on them."""
MODEL_LIBRARIES: dict[str, tuple[str, ...]] = {
    "timm": ("timm",), "open_clip": ("open_clip_torch",), "transformers": ("transformers",), "torchhub": (),
    "efficientnet_lite": ("efficientnet-lite-pytorch",), "onnx": ("onnxruntime",), "vectors": ()}
"""The distribution that defines each loader's network (torch.hub code is pinned by its ref and weights digest; an
ONNX file is run by ONNX Runtime)."""


def library_versions(backbone: Backbone) -> dict[str, str]:
    """The installed versions of the libraries that decode the photos and compute ``backbone``'s vectors."""
    out = {}
    for package in (*DECODING_LIBRARIES, *MODEL_LIBRARIES.get(backbone.spec.library, ())):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out
