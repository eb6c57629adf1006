"""A model entry of the bench config: a backbone by name (``onnx:FILE`` included), or precomputed vectors
(``name: vectors`` with ``source: FILE``; docs/own-embeddings.md). Its own module so the config stays readable."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

__all__ = ["VECTORS_FIELDS", "ModelEntry"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


VECTORS_FIELDS = {"source": None, "ids": None, "key": "auto", "missing": "error", "family": None}
"""The fields of precomputed vectors (``name: vectors``) and their defaults: left out of a dump at their defaults,
so the config digest of a config without them is what it always was."""


class ModelEntry(_Strict):
    """A model of the run: a backbone by name (``onnx:FILE`` included), or precomputed vectors (``name: vectors``
    with ``source: FILE``; see docs/own-embeddings.md)."""

    name: str
    pretrained: bool = True
    weights: str | None = None
    alias: str | None = None
    preprocess: dict[str, Any] | None = None
    source: str | None = Field(default=None, description="For `name: vectors`: the vectors file (Parquet, .npz, or "
                               ".npy with an ids file), one row per catalogue item.")
    ids: str | None = Field(default=None, description="For a .npy vectors file: its ids (or paths), one per line "
                            "(default: NAME.ids.txt beside it).")
    key: Literal["auto", "id", "path"] = Field(default="auto", description="Match a vectors file's rows with items "
                                               "by item id or by image path (auto: ids when the file has them).")
    missing: Literal["error", "skip"] = Field(default="error", description="Catalogue items a vectors file lacks: "
                                              "an error, or `skip`: scored without them, listed as skipped photos.")
    family: Literal["supervised", "self-supervised", "contrastive"] | None = Field(
        default=None, description="The family shown for a vectors or onnx: model (default: its declaration's, "
        "else supervised).")

    @model_validator(mode="after")
    def _vectors_fields(self) -> ModelEntry:
        if self.is_vectors:
            if not self.source:
                raise ValueError("a `name: vectors` model needs `source`: its vectors file (Parquet, .npz, or .npy)")
            if not self.pretrained or self.weights or self.preprocess:
                raise ValueError("a `name: vectors` model has no network: `pretrained`, `weights` and `preprocess` "
                                 "do not apply")
            return self
        given = [name for name, default in VECTORS_FIELDS.items()
                 if name != "family" and getattr(self, name) != default]
        if given:
            raise ValueError(f"{given[0]!r} applies to precomputed vectors only (`name: vectors`), not {self.name!r}")
        return self

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if k not in VECTORS_FIELDS or v != VECTORS_FIELDS[k]}

    @property
    def is_vectors(self) -> bool:
        """Precomputed vectors: no network, so nothing that needs one (fine-tuning, serving) applies."""
        return self.name == "vectors"

    @property
    def label(self) -> str:
        """The name shown in results: the alias, else the backbone name (marked when random)."""
        if self.alias:
            return self.alias
        return self.name if self.pretrained else f"{self.name}-random-init"
