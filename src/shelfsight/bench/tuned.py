"""The tuned models cells evaluate (fine-tuned backbones, top-tuned heads), each made once per run in the work
folder of the cell that tunes it, and read back only when made from the same inputs: the services a strategy's
``prepare`` asks for (``strategies.TuningServices``), by model label and dataset name."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shelfsight.backbones import Backbone, finetuned_name, load_backbone, load_class_weights
from shelfsight.backbones.finetuned import read_record
from shelfsight.bench import strategies
from shelfsight.bench.cell_identity import CellIdentity
from shelfsight.bench.config import BenchConfig, ModelEntry
from shelfsight.bench.identity import digest
from shelfsight.bench.leakage import leaks, training_catalog, training_splits
from shelfsight.bench.provision import Provision
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies import TUNING_RECORD, TunedModel, budget_strategy, train_toptune
from shelfsight.bench.strategy_inputs import InputsMaker, scored_protocols, work_folder
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.embeddings import Embeddings
from shelfsight.protocols import RetrievalProtocol

WORK_KEY = ".inputs-key"
"""In a work folder (a top-tuning study, a fine-tuned backbone): the key of the inputs it was made from."""
FINETUNE, TOPTUNE = strategies.finetune.NAME, strategies.toptune.NAME
"""The strategies whose tuned models this module makes (their cells' work folders hold them)."""


class TunedModels:
    """Implements ``strategies.TuningServices`` for one run."""

    def __init__(self, config: BenchConfig, run_dir: Path, provision: Provision, identity: CellIdentity,
                 inputs: InputsMaker, forced: Callable[[Cell], bool]) -> None:
        self.config = config
        self.run_dir = run_dir
        self.provision = provision
        self.identity = identity
        self.inputs = inputs
        self.forced = forced
        self._finetuned: dict[tuple[str, str, int, str, int | None], tuple[TunedModel, Backbone]] = {}
        self._toptuned: dict[tuple[str, str, int], TunedModel] = {}
        self._claimed: set[Path] = set()

    def backbone(self, model: str, seed: int) -> Backbone:
        return self.provision.backbone(self.provision.model(model), seed)

    def catalog(self, dataset: str) -> Catalog:
        return self.provision.catalog(self.provision.dataset(dataset))

    def claim_work(self, cell: Cell, seed: int) -> Path:
        """The cell's work folder, made from the cell's tuning inputs (cleared first when from other ones)."""
        folder = work_folder(self.run_dir, cell)
        self.claim(folder, self.identity.tuning_inputs(self.provision.model(cell.model), cell.dataset, cell.strategy,
                                                       seed), cell)
        return folder

    def finetuned(self, model: str, source: str, seed: int, progress: bool, budget: int | None = None,
                  protocol: RetrievalProtocol | None = None) -> tuple[TunedModel, Backbone]:
        """The backbone fine-tuned on ``source`` (on a class-disjoint ``protocol``'s training items when
        given; on ``budget`` labelled photos per class for a label-budget cell), in the work folder of that
        dataset's ``finetune`` cell: read back when finished and made from the same inputs, resumed from its
        last checkpoint when interrupted, else trained."""
        name = protocol.name if protocol is not None else ""
        key = (model, source, seed, name, budget)
        if key not in self._finetuned:
            self._finetuned[key] = self._finetune(self.provision.model(model), source, seed, progress, budget,
                                                  protocol)
        return self._finetuned[key]

    def _finetune(self, entry: ModelEntry, source: str, seed: int, progress: bool, budget: int | None,
                  protocol: RetrievalProtocol | None) -> tuple[TunedModel, Backbone]:
        from shelfsight.adapt.finetune import finetune
        from shelfsight.adapt.splits import labelled_splits

        if entry.is_vectors:  # the plan refuses these cells; a direct call gets the same reason
            raise ValueError(f"model {entry.label!r} is precomputed vectors: there is no network to fine-tune")
        name = protocol.name if protocol is not None else ""
        cell = Cell(entry.label, source, FINETUNE if budget is None else budget_strategy(FINETUNE, budget), seed)
        folder = (work_folder(self.run_dir, cell) / (f"finetuned-{name}" if name else "finetuned")).resolve()
        self.claim(folder, {**self.identity.tuning_inputs(entry, source, cell.strategy, seed), "protocol": name}, cell)
        catalog, splits = self.catalog(source), None
        if protocol is not None:
            catalog, splits = training_catalog(protocol, catalog), training_splits(protocol)
        if not (folder / "finetuned.json").is_file():
            config = dataclasses.replace(self.config.section(FINETUNE), seed=seed)
            if budget is not None:
                config = dataclasses.replace(config, train_per_class=budget)
            finetune(catalog, self.provision.backbone(entry, seed), dataset=source, output=folder, config=config,
                     resume=True, progress=progress, splits=splits)
        labelled = labelled_splits(source, catalog, seed, splits=splits)
        return _finetuned_model(folder, source, labelled), load_backbone(finetuned_name(entry.name, str(folder)))

    def protocol_finetuned(self, model: str, dataset: str, tuned: TunedModel, seed: int, progress: bool,
                           budget: int | None = None) -> dict[str, tuple[TunedModel, Embeddings]]:
        """For each class-disjoint protocol whose classes the classification fine-tune saw: a backbone
        fine-tuned on the protocol's training items, and the catalogue embedded with it."""
        catalog = self.catalog(dataset)
        strategy = FINETUNE if budget is None else budget_strategy(FINETUNE, budget)
        scored = scored_protocols(self.config, strategy, dataset, catalog)
        found = {}
        for protocol in protocols_for(dataset, catalog):
            if (scored is None or protocol.name in scored) and leaks(protocol, catalog, tuned.learned_from):
                own, backbone = self.finetuned(model, dataset, seed, progress, budget, protocol)
                found[protocol.name] = (own, self.provision.embed(catalog, backbone, progress))
        return found

    def toptuned(self, model: str, source: str, seed: int, progress: bool) -> TunedModel:
        """The head top-tuned on ``source``'s frozen embeddings, from that dataset's ``toptune`` cell work
        folder when it holds one made from the same inputs, else searched and trained into it."""
        from shelfsight.adapt import load_head

        key = (model, source, seed)
        if key not in self._toptuned:
            cell = Cell(model, source, TOPTUNE, seed)
            workdir = self.claim_work(cell, seed)
            if not (workdir / TUNING_RECORD).is_file() or not (workdir / "head" / "head.json").is_file():
                catalog = self.catalog(source)
                embeddings = self.provision.embed(catalog, self.backbone(model, seed), progress)
                train_toptune(self.inputs.strategy_inputs(cell, catalog, embeddings, progress))
            record = json.loads((workdir / TUNING_RECORD).read_text(encoding="utf-8"))
            head, _, params = load_head(workdir / "head")
            self._toptuned[key] = TunedModel(kind=TOPTUNE, dataset=source, path=workdir / "head",
                                             costs=dict(record["costs"]), details={"best_params": params},
                                             head=head, learned_from=tuple(record.get("learned_from", ())))
        return self._toptuned[key]

    def claim(self, folder: Path, inputs: dict[str, Any], cell: Cell) -> None:
        """Make ``folder`` hold work made from ``inputs``: work from other inputs (or any work, when the
        cell is forced) is cleared first, once per run."""
        if folder in self._claimed:
            return
        key = digest(inputs)
        marker = folder / WORK_KEY
        stale = folder.exists() and (self.forced(cell) or not marker.is_file()
                                     or marker.read_text(encoding="utf-8") != key)
        if stale:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(key, encoding="utf-8")
        self._claimed.add(folder)


def _finetuned_model(folder: Path, source: str, labelled: Any) -> TunedModel:
    record = read_record(folder)
    weights, classes = load_class_weights(folder)
    training = record["training"]
    details = {"device": training["device"], "world_size": training["world_size"],
               "best_val_accuracy": training["best_val_accuracy"], "best_epoch": training["best_epoch"],
               "stopped_early": training["stopped_early"], "train_input_size": record["train_input_size"],
               "finetune_config": record["config"]}
    learned = tuple(item.item_id for item in (*labelled.train, *labelled.val))
    return TunedModel(kind=FINETUNE, dataset=source, path=folder, costs=dict(record["costs"]),
                      details=details, class_weights=weights, classes=tuple(classes), learned_from=learned)
