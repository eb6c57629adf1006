"""What a bench run loads once and every cell shares: each dataset's catalogue, each backbone (per seed for a
randomly initialised one; a vectors model's file, checked against every catalogue it is planned on before any
cell runs), their measured costs, and the photos extraction had to leave out."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable

from shelfsight.backbones import Backbone, gflops_per_image, load_backbone, load_vectors_backbone
from shelfsight.bench.config import BenchConfig, BenchDataset, ModelEntry
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import seeded_validation
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.errors import ShelfsightError


class VectorsModelError(ShelfsightError):
    """A vectors model's file cannot serve a dataset of the run: the run stops before its first cell."""


class Provision:
    """Catalogues and backbones, loaded once per run; embeddings through the per-photo cache."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self._catalogs: dict[str, Catalog] = {}
        self._backbones: dict[tuple[str, int], Backbone] = {}
        self._costs: dict[str, dict[str, float]] = {}
        self._read: dict[tuple[str, str], Embeddings] = {}
        self.skipped: dict[tuple[str, str], tuple[str, str, str]] = {}
        """(catalogue, item id) -> (path, reason, the backbone that met it) of every photo left out."""

    def catalog(self, dataset: BenchDataset) -> Catalog:
        if dataset.name not in self._catalogs:
            catalog = load_catalog(dataset.location, data_dir=self.config.data_dir, image_root=dataset.image_root)
            self._catalogs[dataset.name] = _subset(catalog, dataset.per_class)
        return self._catalogs[dataset.name]

    def dataset(self, name: str) -> BenchDataset:
        return next(d for d in self.config.datasets if d.name == name)

    def model(self, label: str) -> ModelEntry:
        return next(m for m in self.config.models if m.label == label)

    def seeded_validation(self, name: str) -> bool:
        """Whether classification on ``name`` carves its validation part with the seed (loads user catalogues)."""
        try:
            return seeded_validation(name, self.catalog(self.dataset(name)))
        except Exception:  # noqa: BLE001 - an unloadable dataset fails in its cells, with the reason
            return True

    def seed_of(self, cell: Cell) -> int:
        """The seed a cell runs with: its own, or the config's first seed for a deterministic cell."""
        return self.config.seed if cell.seed is None else cell.seed

    def backbone(self, model: ModelEntry, seed: int) -> Backbone:
        key = (model.label, seed if not model.pretrained else 0)
        if key not in self._backbones:
            self._backbones[key] = _load(model, key[1])
        return self._backbones[key]

    def check_vectors(self, planned: Iterable[tuple[str, str]]) -> None:
        """Read every vectors model's file against each dataset it is planned on (``(model label, dataset)``
        pairs), before any cell: a file that cannot serve stops the run with its one clear reason."""
        for label, dataset in dict.fromkeys(planned):
            model = self.model(label)
            if not model.is_vectors:
                continue
            try:
                self.embed(self.catalog(self.dataset(dataset)), self.backbone(model, 0), False)
            except ShelfsightError as exc:
                raise VectorsModelError(f"model {label!r} on dataset {dataset!r}: {exc}") from None

    def embed(self, catalog: Catalog, backbone: Backbone, progress: bool) -> Embeddings:
        """The catalogue embedded (from the cache where it can; a vectors model's file read once per dataset),
        the photos it left out remembered for the run."""
        if backbone.vectors is not None:
            read = (backbone.vectors.digest, catalog.name)
            if read not in self._read:
                self._read[read] = self._remember(catalog, backbone, embed_catalog(catalog, backbone))
            return self._read[read]
        embedding = self.config.embedding
        result = embed_catalog(catalog, backbone, batch_size=embedding.batch_size, num_workers=embedding.num_workers,
                               device=embedding.device, precision=embedding.precision, runtime=embedding.runtime,
                               progress=progress)
        return self._remember(catalog, backbone, result)

    def _remember(self, catalog: Catalog, backbone: Backbone, result: Embeddings) -> Embeddings:
        for item in result.skipped:
            self.skipped.setdefault((catalog.name, item.item_id), (item.path, item.reason, backbone.spec.name))
        return result

    def backbone_costs(self, backbone: Backbone) -> dict[str, float]:
        """Parameters and GFLOPs per image (at its input size), measured once per backbone. A vectors model has
        neither (no network here); an ONNX file has its weights counted and no GFLOPs (torch runs none of it):
        unknown costs are left out, never reported as zero."""
        key = json.dumps(backbone.cache_identity(), sort_keys=True)
        if key not in self._costs:
            costs: dict[str, float] = {}
            if backbone.vectors is None:
                costs = {"params_m": backbone.num_parameters / 1e6, "gflops_per_image": gflops_per_image(backbone)}
            self._costs[key] = {name: value for name, value in costs.items() if math.isfinite(value)}
        return self._costs[key]


def _load(model: ModelEntry, seed: int) -> Backbone:
    """A model entry's backbone: precomputed vectors, or a network by name (with the entry's family, if given)."""
    if model.is_vectors:
        assert model.source is not None
        return load_vectors_backbone(model.source, ids=model.ids, key=model.key, missing=model.missing,
                                     family=model.family or "supervised")
    backbone = load_backbone(model.name, pretrained=model.pretrained, weights=model.weights,
                             preprocess=model.preprocess, seed=seed)
    if model.family is not None:
        backbone.spec = dataclasses.replace(backbone.spec, family=model.family)
    return backbone


def _subset(catalog: Catalog, per_class: dict[str, int] | None) -> Catalog:
    """At most N items per class in each named split; other splits stay whole."""
    if not per_class:
        return catalog
    unknown = [s for s in per_class if s not in catalog.splits]
    if unknown:
        raise ValueError(f"per_class names split {unknown[0]!r}; {catalog.name} has {list(catalog.splits)}")
    keep: list[str] = []
    for split in catalog.splits:
        part = catalog.select_splits(split)
        keep.extend((part.per_class(per_class[split]) if split in per_class else part).ids)
    return catalog.subset(keep)
