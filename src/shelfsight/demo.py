"""``make demo``: real pretrained weights on a real dataset, end to end, offline."""

from __future__ import annotations

import os

import numpy as np
from rich.console import Console

from shelfsight import paths
from shelfsight.backbones import load_backbone
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.errors import DatasetNotFoundError

DEMO_MODEL = "efficientnet_lite0"


def pick_demo_catalog(data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None) -> Catalog:
    """The Grocery Store Dataset when the data root holds it, else Fashion-MNIST's test split."""
    try:
        return load_catalog("grocery-store", data_dir=data_dir, cache_dir=cache_dir)
    except DatasetNotFoundError as grocery_missing:
        try:
            return load_catalog("fashion-mnist", data_dir=data_dir, cache_dir=cache_dir, splits=("test",))
        except DatasetNotFoundError as fashion_missing:
            raise DatasetNotFoundError(f"No demo dataset found.\n- {grocery_missing}\n- {fashion_missing}") from None


def nearest_neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, block: int = 2048) -> float:
    """Share of items whose nearest other item has the same label (cosine; a quick sanity figure)."""
    hits = 0
    for start in range(0, len(vectors), block):
        scores = vectors[start:start + block] @ vectors.T
        rows = np.arange(scores.shape[0])
        scores[rows, start + rows] = -np.inf
        hits += int((labels[scores.argmax(axis=1)] == labels[start:start + block]).sum())
    return hits / len(vectors)


def run_demo(*, data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None,
             console: Console) -> None:
    from shelfsight.cli import print_embedding_summary

    catalog = pick_demo_catalog(data_dir, cache_dir)
    console.print(f"[bold]demo[/]: {DEMO_MODEL} (real ImageNet weights) on {catalog.name}, {len(catalog)} images; "
                  f"cache in {paths.cache_dir(cache_dir)}")
    backbone = load_backbone(DEMO_MODEL)
    result = embed_catalog(catalog, backbone, cache_dir=cache_dir)
    report = result.write_skip_report(result.cache_folder / "skipped.csv") if result.skipped and result.cache_folder \
        else None
    print_embedding_summary(catalog.name, DEMO_MODEL, len(catalog), result, report, None)
    label_of = {item.item_id: item.label for item in catalog}
    labels = np.array([label_of[i] for i in result.ids])
    agreement = nearest_neighbour_agreement(result.vectors, labels)
    console.print(f"nearest-neighbour label agreement over {len(labels)} images, {len(set(labels))} classes: "
                  f"[bold]{agreement:.3f}[/] (chance ~ {1 / len(set(labels)):.3f})")
