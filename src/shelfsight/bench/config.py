"""The experiment config: models x datasets x strategies, validated once with clear messages.

    name: demo
    models:
      - efficientnet_lite0
      - {name: efficientnet_lite0, pretrained: false, alias: efficientnet_lite0-random}
    datasets:
      - grocery-store
      - {name: fashion-mnist, per_class: {train: 200, test: 50}}
    strategies: [pretrained, linear, knn, toptune]
    repeats: 1
    index: {backend: milvus-lite, type: FLAT}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shelfsight.bench.strategies import STRATEGIES
from shelfsight.errors import ShelfsightError


class ConfigError(ShelfsightError):
    """The experiment config is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    name: str
    pretrained: bool = True
    weights: str | None = None
    alias: str | None = None
    preprocess: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The name shown in results: the alias, else the backbone name (marked when random)."""
        if self.alias:
            return self.alias
        return self.name if self.pretrained else f"{self.name}-random-init"


class DatasetEntry(_Strict):
    name: str
    per_class: dict[str, int] | None = Field(
        default=None, description="At most N items per class in each named split (smaller, balanced runs).")
    image_root: str | None = None


class IndexConfig(_Strict):
    """Where retrieval runs. ``params``: nlist, nprobe (IVF_FLAT); m, ef_construction, ef (HNSW)."""

    backend: Literal["milvus-lite", "milvus", "exact", "faiss"] = "milvus-lite"
    type: Literal["FLAT", "IVF_FLAT", "HNSW"] = "FLAT"
    params: dict[str, int] = Field(default_factory=dict)
    uri: str | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _server_needs_uri(self) -> IndexConfig:
        if self.backend == "milvus" and not self.uri:
            raise ValueError("backend 'milvus' needs uri (e.g. http://127.0.0.1:19530); use milvus-lite for a file")
        unknown = set(self.params) - {"nlist", "nprobe", "m", "ef_construction", "ef"}
        if unknown:
            raise ValueError(f"unknown index parameter {sorted(unknown)[0]!r}; "
                             "use nlist, nprobe, m, ef_construction, ef")
        return self


class RetrievalConfig(_Strict):
    k: int = Field(default=100, ge=1, le=16384, description="Neighbours fetched from the vector database.")
    ks: tuple[int, ...] = (1, 5, 10)


class EmbeddingConfig(_Strict):
    batch_size: int | None = Field(default=None, ge=1)
    num_workers: int | None = Field(default=None, ge=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class TopTuneSettings(_Strict):
    """Top-tuning budget (the paper: 30 epochs a trial, 2 repeats, up to 1000 final epochs)."""

    trials: int = Field(default=20, ge=1)
    trial_epochs: int = Field(default=30, ge=1)
    trial_repeats: int = Field(default=2, ge=1)
    final_max_epochs: int = Field(default=1000, ge=1)
    patience: int = Field(default=20, ge=1)
    batch_size: int = Field(default=256, ge=1)


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class BenchConfig(_Strict):
    name: str = "bench"
    models: tuple[ModelEntry, ...]
    datasets: tuple[DatasetEntry, ...]
    strategies: tuple[str, ...] = ("pretrained",)
    repeats: int = Field(default=1, ge=1)
    seed: int = 0
    index: IndexConfig = IndexConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    toptune: TopTuneSettings = TopTuneSettings()
    knn_k: int = Field(default=5, ge=1)
    tracking: TrackingConfig = TrackingConfig()
    data_dir: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategy {unknown[0]!r}; available: {', '.join(STRATEGIES)}")
        return value

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.repeats))

    def digest(self) -> str:
        """A short hash of the validated config (provenance in every result)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def load_config(source: str | os.PathLike[str] | dict[str, Any]) -> BenchConfig:
    """Read and validate a YAML file (or a mapping); every problem names the file and field."""
    where = "config"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found.") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with at least 'models' and 'datasets'.")
    try:
        return BenchConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def config_to_json(config: BenchConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)
