"""The index folder and its sidecar: what ``shelfsight serve`` needs to rebuild the model that made the vectors.

An index folder holds::

    service.json      this manifest (model, preprocessing, head, vector kind, compression, Milvus target, roots)
    projection.npz    the PCA of ``--compress pcaD`` (components, mean, variances), when there is one
    milvus.db         the Milvus Lite store (absent when the collection lives on a Milvus server)
    uploads/          images added through the API (the service owns this folder)
    encoder.onnx      the exported backbone (ONNX Runtime path), with encoder.onnx.json naming its key

The manifest is validated once, on read, so a hand-edited or foreign file fails with a message that
names the file and the field rather than deep inside a request.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelfsight.files import atomic_write
from shelfsight.serve.errors import ServeError

_Model = TypeVar("_Model", bound=BaseModel)

MANIFEST_NAME = "service.json"
MANIFEST_FORMAT: Literal["shelfsight-service"] = "shelfsight-service"
UPLOADS_ROOT = "uploads"
"""Root key of the images added through the API (a folder of the index, owned by the service)."""
VectorKind = Literal["backbone", "head"]


class MilvusTarget(BaseModel):
    """Where the collection lives: Milvus Lite inside the index folder (``uri`` None) or a server."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = None
    collection: str = "catalogue"
    index_type: str = "FLAT"
    metric: Literal["IP"] = "IP"
    params: dict[str, int] = Field(default_factory=dict)
    """Build parameters other than the defaults (``nlist``, ``m``, ``ef_construction``), as MilvusIndex options."""


class CompressionRecord(BaseModel):
    """How the stored vectors were compressed (``shelfsight index --compress``): the service applies the same
    projection to every query, and a later ``index`` run must use the same method."""

    model_config = ConfigDict(extra="forbid")
    method: str
    """Canonical name: ``pca64``, ``sq8``, ``pca64-sq8``."""
    pca: int | None = None
    whiten: bool = False
    sq8: bool = False
    """Int8 codes in Milvus (IVF_SQ8 or HNSW_SQ, see ``milvus.index_type``)."""
    source_dim: int = Field(gt=0)
    """Dimensions before the projection (the backbone's or the head's)."""
    dim: int = Field(gt=0)
    projection: str | None = None
    """File of the fitted PCA in the index folder (``projection.npz``), None without a projection."""
    projection_digest: str | None = None
    bytes_per_item: int = Field(gt=0)
    """Bytes of one stored code in the index: 4 per dimension as float32, 1 as int8."""


class CatalogueRecord(BaseModel):
    """One ``shelfsight index`` run that added items: provenance, not configuration."""

    model_config = ConfigDict(extra="forbid")
    source: str
    root: str
    """Key into ``ServiceManifest.roots``."""
    items: int
    added: int


class ServiceManifest(BaseModel):
    """The sidecar of an index folder (``service.json``)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["shelfsight-service"] = MANIFEST_FORMAT
    version: Literal[1] = 1
    model: str
    pretrained: bool = True
    weights: str | None = None
    preprocess: dict[str, Any]
    backbone: dict[str, Any]
    """The backbone's cache identity (library, checkpoint, weights digest, preprocessing) at indexing time."""
    backbone_dim: int = Field(gt=0)
    vectors: VectorKind = "backbone"
    """What the collection stores: raw backbone embeddings, or the head's top-tuned (penultimate) embeddings."""
    dim: int = Field(gt=0)
    head: str | None = None
    head_digest: str | None = None
    milvus: MilvusTarget = Field(default_factory=MilvusTarget)
    compression: CompressionRecord | None = None
    """None: the vectors are stored as computed (float32, ``dim`` = the source's)."""
    roots: dict[str, str] = Field(default_factory=dict)
    """Image roots by key: each item stores its root key and a path relative to that root."""
    catalogues: list[CatalogueRecord] = Field(default_factory=list)

    def root_key(self, folder: Path) -> str:
        """The key of ``folder`` among the roots, registering it when new."""
        text = str(folder)
        for key, value in self.roots.items():
            if value == text:
                return key
        key = f"catalogue-{len(self.roots)}"
        self.roots[key] = text
        return key


@dataclass(frozen=True)
class IndexLayout:
    """Paths inside an index folder."""

    folder: Path

    @classmethod
    def at(cls, folder: str | os.PathLike[str]) -> IndexLayout:
        return cls(Path(folder).expanduser().resolve())

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def milvus_lite(self) -> Path:
        return self.folder / "milvus.db"

    @property
    def uploads(self) -> Path:
        return self.folder / UPLOADS_ROOT

    @property
    def incoming(self) -> Path:
        """Where uploads are spooled before they are decoded (same file system as ``uploads``, so moves are atomic)."""
        return self.uploads / ".incoming"

    @property
    def onnx(self) -> Path:
        return self.folder / "encoder.onnx"

    def exists(self) -> bool:
        return self.manifest.is_file()


def read_manifest(layout: IndexLayout) -> ServiceManifest:
    """The validated manifest, or a ServeError naming the file and what is wrong."""
    path = layout.manifest
    if not path.is_file():
        raise ServeError(f"{layout.folder} is not a shelfsight index (no {MANIFEST_NAME}): build one with "
                         f"`shelfsight index --model MODEL --catalog CATALOGUE --index-dir {layout.folder}`")
    return read_json_model(path, ServiceManifest, broken="", invalid="; rebuild the index with `shelfsight index`")


def read_json_model(path: Path, model: type[_Model], *, broken: str, invalid: str) -> _Model:
    """A JSON file of the index folder, validated; a ServeError naming the file, the line or field, and the fix
    (``broken`` after a JSON error, ``invalid`` after a field's)."""
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as error:
        raise ServeError(f"{path}: not valid JSON (line {error.lineno}): {error.msg}{broken}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ServeError(f"{path}: field {where}: {first['msg']}{invalid}") from None


def write_json_model(path: Path, record: BaseModel) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    text = record.model_dump_json(indent=2) + "\n"
    return atomic_write(path, lambda target: target.write_text(text, encoding="utf-8"))


def write_manifest(layout: IndexLayout, manifest: ServiceManifest) -> Path:
    return write_json_model(layout.manifest, manifest)


def preprocess_overrides(manifest: ServiceManifest) -> dict[str, Any]:
    """The stored preprocessing as ``load_backbone(preprocess=...)`` overrides (JSON lists back to tuples)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in manifest.preprocess.items()}


def normalised_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A cache identity as it reads back from JSON, so a live one compares equal to a stored one."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))  # type: ignore[no-any-return]
