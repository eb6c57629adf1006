"""Precomputed vectors as a model: a file (Parquet, ``.npz``, or ``.npy`` with its ids) of one vector per catalogue
item, made by whatever a team runs today, benchmarked beside the built-in backbones.

A vectors model is a ``Backbone`` with no network: its ``vectors`` says which file, and extraction reads that
file instead of running anything (``embeddings.vectors_file``). Its identity is the file's content digest (and
the ids file's, for ``.npy``), so a changed file is another model in every cell key. Anything that needs the
network refuses it: fine-tuning (``bench.plan``), embedding new photos (``shelfsight embed``, ``index``,
``serve``: ``load_backbone("vectors")`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from shelfsight.backbones.loaders import FeatureEncoder
from shelfsight.backbones.provenance import file_digest
from shelfsight.backbones.spec import BackboneSpec, Family
from shelfsight.errors import ModelUnavailableError

NAME = "vectors"
FORMATS = (".parquet", ".npz", ".npy")
KeyKind = Literal["auto", "id", "path"]
MissingPolicy = Literal["error", "skip"]
NO_NETWORK = ("{what} is precomputed vectors ({source}): it has no network, so it cannot {action}. Serve or "
              "fine-tune the model that made them (a registered name, or its ONNX file as onnx:PATH).")


@dataclass(frozen=True)
class VectorsSource:
    """Where a vectors model's vectors are, how rows match catalogue items, and what a missing item does."""

    path: Path
    digest: str
    """SHA-256 of the file's bytes (with the ids file's, for ``.npy``)."""
    ids: Path | None = None
    """For ``.npy``: the ids (or paths), one per line (default: ``NAME.ids.txt`` beside it)."""
    key: KeyKind = "auto"
    """Match rows by item ``id`` or by image ``path`` (auto: ids when the file has them, else paths)."""
    missing: MissingPolicy = "error"
    """``skip``: score without catalogue items the file lacks, listed as skipped photos; ``error``: refuse."""

    def identity(self) -> dict[str, Any]:
        """The parts of a vectors model that decide its numbers: content, matching, missing items."""
        return {"library": NAME, "weights": f"file:{self.digest}", "key": self.key, "missing": self.missing}


def vectors_spec(source: str = "", family: Family = "supervised") -> BackboneSpec:
    """The spec of a vectors model (``name: vectors`` in a bench config); plain data, no network."""
    return BackboneSpec(name=NAME, family=family, library="vectors", checkpoint=source or "(a vectors file)",
                        description="precomputed vectors read from a file")


class NoNetwork(FeatureEncoder):
    """The encoder of a vectors model: there is none, and calling it says so."""

    def __init__(self, source: str) -> None:
        super().__init__(torch.nn.Identity(), NAME)
        self.source = source

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise ModelUnavailableError(NO_NETWORK.format(what="this model", source=self.source,
                                                      action="embed photos"))


def ids_path(path: Path, ids: str | Path | None) -> Path | None:
    """The ids file of a ``.npy`` (given, or ``NAME.ids.txt`` beside it); None for other formats."""
    if path.suffix != ".npy":
        if ids is not None:
            raise ModelUnavailableError(f"{path}: `ids` is for a .npy file; a {path.suffix} file holds its own ids")
        return None
    found = Path(ids).expanduser().resolve() if ids is not None else path.with_suffix(".ids.txt")
    if not found.is_file():
        raise ModelUnavailableError(f"{path}: a .npy file needs its ids, one per line, in {found} (or name the "
                                    "file with `ids:` in the model entry)")
    return found


def vectors_source(path: str | Path, *, ids: str | Path | None = None, key: KeyKind = "auto",
                   missing: MissingPolicy = "error") -> VectorsSource:
    """Check the file is there and in a known format, and identify it by content."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ModelUnavailableError(f"vectors file {resolved} not found (`source` of a `name: vectors` model)")
    if resolved.suffix not in FORMATS:
        raise ModelUnavailableError(f"{resolved}: a vectors file is Parquet, .npz, or .npy with its ids "
                                    f"(got {resolved.suffix or 'no extension'})")
    id_file = ids_path(resolved, ids)
    digest = file_digest(resolved)
    if id_file is not None:
        digest = f"{digest}+{file_digest(id_file)}"
    return VectorsSource(resolved, digest, id_file, key, missing)
