"""The experiment config: models x datasets x strategies, validated once with clear messages.

    name: demo
    models:
      - efficientnet_lite0
      - {name: efficientnet_lite0, pretrained: false, alias: efficientnet_lite0-random}
    datasets:
      - grocery-store
      - {name: fashion-mnist, per_class: {train: 200, test: 50}}
    strategies:
      - pretrained
      - toptune
      - {name: finetune, models: [efficientnet_lite0], datasets: [grocery-store]}   # the costly one, kept small
      - crosstune                      # heads / backbones tuned on one dataset, evaluated on the others
    finetune: {epochs: 3, input_size: 128}
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
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from shelfsight.bench import strategies as registry
from shelfsight.bench.budgets import LabelBudgets
from shelfsight.bench.evaluate import RECALL_QUERIES
from shelfsight.bench.leakage import DedupePolicy
from shelfsight.bench.model_entry import ModelEntry, _Strict
from shelfsight.bench.results import Cell
from shelfsight.bench.sections import SECTIONS, StrategySections, refuse_old_names, seeded
from shelfsight.bench.strategies import Strategy
from shelfsight.errors import ShelfsightError


class ConfigError(ShelfsightError):
    """The experiment config is invalid; the message names the file and the field."""


class BenchDataset(_Strict):
    """A dataset of the run. ``name`` is what results, figures and filters call it; with ``source`` (a
    user catalogue's folder or manifest) the name is a display alias, so figures say ``shop`` rather than
    ``./exports/shop-2026.csv``. A registered dataset is named by its registered name."""

    name: str
    source: str | None = None
    per_class: dict[str, int] | None = Field(
        default=None, description="At most N items per class in each named split (smaller, balanced runs).")
    image_root: str | None = None
    same_group: Literal["exclude", "keep"] = Field(
        default="exclude", description="Where items have groups (a seller, a listing): `exclude` leaves a query's "
        "own group out of its ranking and relevant items (``bench.evaluate``); `keep` counts them.")

    @model_validator(mode="after")
    def _alias_of_a_user_catalogue(self) -> BenchDataset:
        from shelfsight.catalog import DATASETS

        if self.source is not None and (self.name in DATASETS or self.source in DATASETS):
            raise ValueError(f"dataset {self.name!r}: `source` names a user catalogue (a folder or manifest) shown "
                             "under `name`; a registered dataset is named by its own name")
        return self

    @property
    def location(self) -> str:
        """What to load: the user catalogue behind an alias, else the name itself."""
        return self.source or self.name


class IndexConfig(_Strict):
    """Where retrieval runs. ``params``: nlist, nprobe (IVF_FLAT); m, ef_construction, ef (HNSW); nlist (default
    about sqrt of the gallery), nprobe, m (sub-vectors, a divisor of the dimension), nbits (IVF_PQ, servers only)."""

    backend: Literal["milvus-lite", "milvus", "exact", "faiss"] = "milvus-lite"
    type: Literal["FLAT", "IVF_FLAT", "HNSW", "IVF_PQ"] = "FLAT"
    params: dict[str, int] = Field(default_factory=dict)
    uri: str | None = None
    token: str | None = None
    build_timeout: float = Field(default=300.0, gt=0, description="Seconds to wait for a server's index build.")
    keep_collections: bool = Field(
        default=False, description="Keep each cell's Milvus collections after scoring (default: dropped).")
    recall_queries: int = Field(
        default=RECALL_QUERIES, description="Queries the index answers per protocol for its index_recall@k "
        "against exact search (a seeded sample; all when there are fewer); 0: no index is built, no recall row.")

    @field_validator("recall_queries", mode="before")
    @classmethod
    def _recall_queries(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"recall_queries must be a whole number of queries >= 0 (default {RECALL_QUERIES}; "
                             f"0 skips the index and its recall row), got {value!r}")
        return value

    @model_validator(mode="after")
    def _server_needs_uri(self) -> IndexConfig:
        if self.backend == "milvus" and not self.uri:
            raise ValueError("backend 'milvus' needs uri (e.g. http://127.0.0.1:19530); use milvus-lite for a file")
        if self.type == "IVF_PQ" and self.backend == "milvus-lite":
            raise ValueError("index type IVF_PQ needs backend 'milvus' (a server): Milvus Lite 3.2.2 cannot build it")
        unknown = set(self.params) - {"nlist", "nprobe", "m", "ef_construction", "ef", "nbits"}
        if unknown:
            raise ValueError(f"unknown index parameter {sorted(unknown)[0]!r}; "
                             "use nlist, nprobe, m, ef_construction, ef, nbits")
        return self


class RetrievalConfig(_Strict):
    k: int = Field(default=100, ge=1, le=16384, description="Neighbours fetched from the vector database.")
    ks: tuple[int, ...] = (1, 5, 10)


class EmbeddingConfig(_Strict):
    batch_size: int | None = Field(default=None, ge=1)
    num_workers: int | None = Field(default=None, ge=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    runtime: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    """auto: ONNX Runtime on a CPU where it agrees with PyTorch on the catalogue's photos, else PyTorch."""


class StrategyEntry(_Strict):
    """A strategy, optionally kept to some models (by label: the name results show, e.g. an alias) and
    datasets: the costly ones (finetune) rarely need the whole matrix. For the expanding strategy
    (``crosstune``): ``tuned`` says what is carried across (default: whichever carried strategies the
    config runs on the source), ``sources`` which datasets it is tuned on (default: every other dataset)."""

    name: str
    models: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    tuned: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        registry.get(value)  # a ValueError naming the known strategies
        return value

    @field_validator("tuned")
    @classmethod
    def _carried(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            registry.carried(name)
        return value

    @model_validator(mode="after")
    def _expanding_fields(self) -> StrategyEntry:
        expanding = registry.expanding().name
        if self.name != expanding and (self.tuned is not None or self.sources is not None):
            raise ValueError(f"'tuned' and 'sources' apply to {expanding} only, not {self.name}")
        return self

    def applies(self, model: ModelEntry, dataset: str) -> bool:
        return ((self.models is None or model.label in self.models)
                and (self.datasets is None or dataset in self.datasets))


class StatsConfig(_Strict):
    """Uncertainty: bootstrap intervals over queries (and seeds), paired permutation tests between cells,
    Holm correction over the run's one family of comparisons; intervals of differences at 1 - alpha."""

    bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples per interval.")
    permutations: int = Field(default=10000, ge=100, description="Permutations per paired test.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Family-wise error rate after Holm correction.")
    seed: int = 0


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class BenchConfig(_Strict):
    name: str = "bench"
    models: tuple[ModelEntry, ...]
    datasets: tuple[BenchDataset, ...]
    strategies: tuple[StrategyEntry, ...] = (StrategyEntry(name=registry.baseline().name),)
    repeats: int = Field(default=1, ge=1)
    seed: int = 0
    index: IndexConfig = IndexConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    sections: StrategySections = Field(default_factory=StrategySections)
    """The strategies' own sections (``Strategy.section``: ``toptune:``, ``finetune:``, ``knn:``, ``compress:``,
    ``zeroshot:``), written at the top level of the YAML and of every dump; ``section(name)`` reads one."""
    dedupe: DedupePolicy = DedupePolicy()
    """Queries with an exact or near duplicate in their gallery: ``warn`` (default), ``exclude`` or ``off``;
    ``{action: exclude, threshold: 0.93}`` sets the near-duplicate cosine (``bench.leakage.DedupePolicy``, which
    ``evaluate_protocol(dedupe=...)`` applies; see docs/duplicates.md for how it reaches the cells)."""
    label_budgets: LabelBudgets | None = None
    """Label-efficiency curves (``bench.label_budgets``): the tuned strategies trained on N labelled photos
    per class, for each budget N, on several seeded subsets; ``[1, 2, 5, all]`` is shorthand for the budgets."""
    stats: StatsConfig = StatsConfig()
    tracking: TrackingConfig = TrackingConfig()
    data_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _strategy_sections(cls, value: Any) -> Any:
        """The registry's sections, given at the top level, gathered into ``sections``."""
        if not isinstance(value, dict):
            return value
        if SECTIONS in value:
            raise ValueError(f"'{SECTIONS}' is not a setting: write each strategy's section at the top level")
        refuse_old_names(value)
        named = {section.name for section in registry.config_sections()}
        return {**{k: v for k, v in value.items() if k not in named},
                SECTIONS: {k: v for k, v in value.items() if k in named}}

    @model_serializer(mode="wrap")
    def _sections_at_top_level(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {**{k: v for k, v in dumped.items() if k != SECTIONS}, **dumped.get(SECTIONS, {})}

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("strategies", mode="before")
    @classmethod
    def _strategy_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("label_budgets", mode="before")
    @classmethod
    def _budgets_shorthand(cls, value: Any) -> Any:
        return {"budgets": value} if isinstance(value, list) else value

    @field_validator("dedupe", mode="before")
    @classmethod
    def _dedupe_shorthand(cls, value: Any) -> Any:
        return {"action": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _strategy_filters_name_entries(self) -> BenchConfig:
        """A filter names the config's models and datasets; a public dataset the config leaves out (the demo
        drops absent ones) is allowed and matches nothing, anything else is a typo."""
        from shelfsight.catalog import DATASETS

        models = {m.label for m in self.models}
        datasets = {d.name for d in self.datasets}
        for position, entry in enumerate(self.strategies):
            for field, known, given in (("models", models, entry.models), ("datasets", datasets, entry.datasets),
                                        ("sources", datasets, entry.sources)):
                allowed = known if field == "models" else known | set(DATASETS)
                unknown = [name for name in given or () if name not in allowed]
                if unknown:
                    raise ValueError(f"strategies.{position}.{field}: {unknown[0]!r} is not among the config's "
                                     f"{'models' if field == 'models' else 'datasets'} ({', '.join(sorted(known))})")
        budgets = self.label_budgets
        if budgets is not None:
            for field, known, given in (("models", models, budgets.models), ("datasets", datasets, budgets.datasets)):
                allowed = known if field == "models" else known | set(DATASETS)
                unknown = [name for name in given or () if name not in allowed]
                if unknown:
                    raise ValueError(f"label_budgets.{field}: {unknown[0]!r} is not among the config's {field} "
                                     f"({', '.join(sorted(known))})")
        if self.dedupe.reference is not None and self.dedupe.reference not in models:
            raise ValueError(f"dedupe.reference: {self.dedupe.reference!r} is not among the config's models "
                             f"({', '.join(sorted(models))})")
        return self

    @model_validator(mode="after")
    def _cell_ids_distinct(self) -> BenchConfig:
        """Two cells must never share a file: a cell id keeps letters, digits, ``_.-`` (``lite:a`` and ``lite-a``
        become one) and joins its fields with ``__`` (``a__b`` on ``c`` and ``a`` on ``b__c`` become one); ids
        are compared without case, as a case-insensitive file system would. Two entries with one label (the
        same backbone twice without an alias) collide too."""
        strategy = self.strategies[0].name if self.strategies else registry.baseline().name
        seen: dict[str, tuple[int, int]] = {}
        for m, model in enumerate(self.models):
            for d, dataset in enumerate(self.datasets):
                cell_id = Cell(model.label, dataset.name, strategy).cell_id
                first = seen.setdefault(cell_id.casefold(), (m, d))
                if first != (m, d):
                    earlier = (self.models[first[0]].label, self.datasets[first[1]].name)
                    pair = _colliding(earlier, (model.label, dataset.name), first[0] == m)
                    raise ValueError(f"{pair} would share cell files "
                                     f"(e.g. cells/{cell_id}.json): cell ids keep letters, digits, '_', '.' and '-' "
                                     "and join the model and dataset with '__'; rename one (a model's alias, a "
                                     "dataset's name)")
        return self

    def section(self, name: str) -> Any:
        """A strategy section by its name (``Strategy.section.name``): the validated object."""
        return getattr(self.sections, name)

    def sections_of(self, strategy: Strategy) -> dict[str, Any]:
        """The sections ``strategy`` reads, by name: what its settings, estimate, prepare and run are handed."""
        return {name: self.section(name) for name in strategy.sections}

    def strategy(self, name: str) -> StrategyEntry | None:
        return next((s for s in self.strategies if s.name == name), None)

    def runs(self, strategy: str, model: ModelEntry, dataset: str) -> bool:
        """Whether the config has a ``strategy`` cell for this model and dataset."""
        return any(s.name == strategy and s.applies(model, dataset) for s in self.strategies)

    def crosstune_strategies(self, model: ModelEntry, dataset: str) -> list[str]:
        """``toptune@A`` / ``finetune@A`` cells of ``model`` evaluated on ``dataset``, from each source A."""
        entry = self.strategy(registry.expanding().name)
        if entry is None or not entry.applies(model, dataset):
            return []
        names: list[str] = []
        for source in (d.name for d in self.datasets):
            if source == dataset or (entry.sources is not None and source not in entry.sources):
                continue
            carried = registry.carried_names()
            tuned: tuple[str, ...] = (entry.tuned or tuple(t for t in carried if self.runs(t, model, source))
                                      or carried[:1])
            names.extend(f"{kind}@{source}" for kind in tuned)
        return names

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
        problems = "; ".join(f"{_where(error['loc'])}: {error['msg']}" for error in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def config_to_json(config: BenchConfig) -> str:
    """The config as JSON that ``load_config`` takes back: the seed lives at the top level only."""
    dumped = config.model_dump(mode="json")
    for section in registry.config_sections():
        if seeded(section):
            dumped[section.name].pop("seed", None)
    return json.dumps(dumped, indent=2, sort_keys=True)


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error's location as the YAML spells it (a strategy's section at the top level)."""
    parts = [str(p) for p in (loc[1:] if loc[:1] == (SECTIONS,) else loc)]
    return ".".join(parts) or "(top level)"


def _colliding(first: tuple[str, str], second: tuple[str, str], one_model: bool) -> str:
    """The two (model, dataset) pairs whose cells would share an id, said as briefly as they differ
    (``one_model``: both pairs come from the same model entry)."""
    if first == second:
        return f"two datasets named {first[1]!r}" if one_model else f"two models labelled {first[0]!r}"
    if first[1] == second[1]:
        return f"models {first[0]!r} and {second[0]!r}"
    if first[0] == second[0]:
        return f"datasets {first[1]!r} and {second[1]!r}"
    return f"model {first[0]!r} on dataset {first[1]!r} and model {second[0]!r} on dataset {second[1]!r}"
