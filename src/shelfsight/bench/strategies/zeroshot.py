"""``zeroshot``: auto-tagging and search with a text-image model's text tower, with nothing trained.

Each class becomes one vector: its name in a set of sentence templates (plus, where the catalogue ships one,
its product description), encoded by the text tower and averaged (prompt ensembling, ``backbones.prompts``).
A photo takes the class whose vector is closest in cosine: tagging new categories with no labelled photo.
The same class vectors then query the test photos through the vector index (text-to-image search; relevant
= photos of that class), scored with the retrieval metrics of every protocol. Models without a text tower
refuse the cell with a clear error; the rest of the run goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from shelfsight.backbones import require_text_encoder
from shelfsight.backbones.prompts import DEFAULT_TEMPLATES, check_templates, class_prompts, class_vectors
from shelfsight.bench.evaluate import DEEP_METRICS
from shelfsight.bench.strategies.base import (
    CLASSIFICATION,
    NO_TRAINING,
    CellRequest,
    ConfigSection,
    Prepared,
    Sections,
    Strategy,
    StrategyInputs,
    StrategyOutput,
    TunedModel,
)
from shelfsight.bench.strategies.ncm import predict
from shelfsight.bench.strategies.scoring import (
    ClassificationData,
    classification_data,
    classification_scores,
    per_query_table,
    require_tuned,
)
from shelfsight.catalog import Catalog, grocery
from shelfsight.metrics import full_ranking_average_precision, retrieval_report
from shelfsight.search import ExactIndex, SearchResult, recall_against_exact

NAME = "zeroshot"
TEXT_PROTOCOL = "text-to-image"
"""The protocol name of the text-to-image scores: each class's prompt vector queries the test photos."""
PROMPTS_FILE = "prompts.json"


@dataclass(frozen=True)
class ZeroShotConfig:
    """The ``zeroshot:`` section of a bench config."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Sentence templates, each with one ``{}`` for the class name; their vectors are averaged per class."""
    descriptions: bool = True
    """Add each class's description (its first sentence) to its prompts where there is one: Grocery Store ships
    them, ``class_texts`` may give them."""
    class_texts: dict[str, str] = field(default_factory=dict)
    """Dataset name -> a CSV file with a ``label`` column and optional ``name`` (the words to use for it) and
    ``description`` columns: for user catalogues whose labels are codes, or to reword any class."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", check_templates(self.templates))


@dataclass(frozen=True)
class ClassText:
    name: str
    description: str | None = None


SECTION = ConfigSection(NAME, ZeroShotConfig)


def section(sections: Sections) -> ZeroShotConfig:
    value = sections[SECTION.name]
    assert isinstance(value, ZeroShotConfig)
    return value


def settings(sections: Sections) -> dict[str, Any]:
    """What decides the numbers: the templates, whether descriptions are used, the class-text files' content."""
    zeroshot = section(sections)
    files = {dataset: _file_digest(Path(path)) for dataset, path in sorted(zeroshot.class_texts.items())}
    return {"templates": list(zeroshot.templates), "descriptions": zeroshot.descriptions, "class_texts": files}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else f"missing:{path}"


def class_texts(dataset: str, catalog: Catalog, config: ZeroShotConfig) -> dict[str, ClassText]:
    """Label -> the name and description its prompts are made from: the label itself, the dataset's own
    descriptions (Grocery Store), then the user's ``class_texts`` file for this dataset, which wins."""
    descriptions = grocery.class_descriptions(catalog.root) if catalog.name == grocery.NAME else {}
    texts = {label: ClassText(label, descriptions.get(label)) for label in catalog.classes}
    if dataset in config.class_texts:
        for label, given in read_class_texts(Path(config.class_texts[dataset])).items():
            if label in texts:
                texts[label] = ClassText(given.name or label, given.description or texts[label].description)
    if not config.descriptions:
        texts = {label: ClassText(text.name) for label, text in texts.items()}
    return texts


def read_class_texts(path: Path) -> dict[str, ClassText]:
    """A ``label[,name][,description]`` CSV (header row required); a clear error names the file and what to fix."""
    if not path.is_file():
        raise FileNotFoundError(f"zeroshot.class_texts: {path} does not exist (a CSV with columns label, name, "
                                "description)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "label" not in rows[0]:
        raise ValueError(f"zeroshot.class_texts: {path} has no 'label' column (columns: label, name, description)")
    return {row["label"].strip(): ClassText((row.get("name") or "").strip(),
                                            (row.get("description") or "").strip() or None)
            for row in rows if (row.get("label") or "").strip()}


def prepare(request: CellRequest) -> Prepared:
    """Encode every class's prompts with the cell's backbone's text tower (refused without one)."""
    backbone = request.services.backbone(request.model, request.seed)
    text = require_text_encoder(backbone.text_encoder, request.model, "the zeroshot strategy")
    config = section(request.sections)
    texts = class_texts(request.dataset, request.services.catalog(request.dataset), config)
    labels = sorted(texts)
    prompts = [class_prompts(texts[label].name, config.templates, texts[label].description) for label in labels]
    started = time.perf_counter()
    vectors = class_vectors(text, prompts)
    seconds = time.perf_counter() - started
    workdir = request.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / PROMPTS_FILE).write_text(json.dumps(dict(zip(labels, prompts, strict=True)), indent=1),
                                        encoding="utf-8")
    costs = {"tune_seconds": seconds, "text_encode_seconds": seconds, "prompts": float(sum(map(len, prompts))),
             "text_params_m": max(text.num_parameters - backbone.num_parameters, 0) / 1e6}
    details = {"weights": backbone.weights_id, "templates": list(config.templates), "prompts_file": PROMPTS_FILE,
               "classes_with_description": sum(texts[label].description is not None for label in labels)}
    tuned = TunedModel(kind=NAME, dataset=request.dataset, path=workdir, costs=costs, details=details,
                       class_weights=torch.from_numpy(vectors), classes=tuple(labels))
    return Prepared(backbone, tuned=tuned)


def run(inputs: StrategyInputs) -> StrategyOutput:
    tuned = require_tuned(inputs, NAME)
    data = classification_data(inputs)
    means = _class_matrix(tuned, data, inputs.embeddings.dim)
    details: dict[str, Any] = {**tuned.details, "train": 0, "test": len(data.y_test), "classes": len(data.classes),
                               "dropped_test_unseen_class": data.dropped_test}
    scores, per_item = classification_scores(data, predict(means, data.x_test), details)
    text_scores, details[TEXT_PROTOCOL], text_frame = text_to_image(inputs, data, means)
    return StrategyOutput({CLASSIFICATION: scores, TEXT_PROTOCOL: text_scores}, dict(tuned.costs), details,
                          per_query_table([per_item, text_frame]))


def _class_matrix(tuned: TunedModel, data: ClassificationData, dim: int) -> np.ndarray:
    """The class vectors in the order of the classification's classes, checked against the image space."""
    if tuned.class_weights is None:
        raise ValueError("zeroshot: the prepared model has no class vectors")
    weights = tuned.class_weights.numpy()
    if weights.shape[1] != dim:
        raise ValueError(f"zeroshot: text vectors have {weights.shape[1]} dimensions and image embeddings {dim}; "
                         "the text and image towers must come from the same model")
    rows = {label: row for row, label in enumerate(tuned.classes)}
    missing = [label for label in data.classes if label not in rows]
    if missing:
        raise ValueError(f"zeroshot: no prompt vector for class(es) {missing[:5]}")
    return weights[[rows[label] for label in data.classes]]


def text_to_image(inputs: StrategyInputs, data: ClassificationData,
                  means: np.ndarray) -> tuple[dict[str, float], dict[str, Any], pd.DataFrame]:
    """Each class with a test photo queries the test photos through the vector index; relevant = same class.
    Metrics of depth <= k read the index's answer, MAP@R, R-precision and full MAP an exact ranking."""
    present = np.unique(data.y_test)
    queries, query_keys = means[present], present
    ids, gallery, keys = list(data.test_ids), data.x_test, data.y_test
    depth = max(min(inputs.k, len(ids)), max(inputs.ks))
    answer = _search(inputs, ids, gallery, keys, queries, depth)
    exact = ExactIndex()
    exact.add(ids, gallery)
    deep = exact.search(queries, len(ids))
    reference = SearchResult(indices=deep.indices[:, :depth], scores=deep.scores[:, :depth],
                             ids=[row[:depth] for row in deep.ids])
    per_query = {name: values for name, values in
                 retrieval_report(query_keys, keys, answer.indices, same_set=False, ks=inputs.ks).per_query.items()
                 if name not in DEEP_METRICS}
    deep_scores = retrieval_report(query_keys, keys, deep.indices, same_set=False, ks=inputs.ks).per_query
    per_query |= {name: deep_scores[name] for name in DEEP_METRICS}
    per_query["MAP"] = full_ranking_average_precision(queries, gallery, query_keys, keys, exclude_self=False)
    metrics = {name: float(np.nanmean(values)) for name, values in per_query.items()}
    metrics[f"index_recall@{depth}"] = recall_against_exact(answer, reference)
    details = {"queries": len(present), "gallery": len(ids), "k": depth, "relevance": "label",
               "description": "each class's prompt vector queries the test photos; relevant = same class"}
    frame = pd.DataFrame({"protocol": TEXT_PROTOCOL, "query": [f"text:{data.classes[c]}" for c in present],
                          **per_query})
    return metrics, details, frame


def _search(inputs: StrategyInputs, ids: list[str], gallery: np.ndarray, keys: np.ndarray, queries: np.ndarray,
            depth: int) -> SearchResult:
    """The configured index (Milvus Lite by default) answers, then is dropped like every protocol's."""
    index = inputs.make_index(f"{inputs.collection_prefix}_text", gallery.shape[1])
    try:
        index.add(ids, gallery, labels=[str(key) for key in keys])
        return index.search(queries, depth)
    finally:
        drop = getattr(index, "drop", None)
        if not inputs.keep_collections and callable(drop):
            drop()
        else:
            index.close()


STRATEGY = Strategy(NAME, tier=NO_TRAINING, stochastic=False, run=run, section=SECTION, settings=settings,
                    prepare=prepare, classifies=True, zero_label_reference=True,
                    description="zero-shot tagging and text-to-image search with the text tower (prompt ensembling)")
