"""Pure functions over the results table: costs beside quality, the Pareto front, adaptation
gains and the cross-tuning matrix. Figures, the recommendation and both renderings read these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from shelfsight.bench import strategies as registry
from shelfsight.bench.table import cost_frame, datasets, main_metric, main_protocol

BASELINE = registry.baseline().name
ADAPTATIONS = tuple(s.name for s in registry.REGISTRY.values() if s.adaptation)
"""Adaptations of the paper whose gain over the pre-trained embedding is shown per family."""


@dataclass(frozen=True)
class CostAxis:
    """A cost column and which way is cheaper."""

    metric: str
    label: str
    lower_is_better: bool
    scale: float = 1.0
    """Multiplier from the stored unit to the plotted one."""


COST_AXES = (
    CostAxis("tune_seconds", "tuning time (s)", lower_is_better=True),
    CostAxis("extract_images_per_s", "extraction throughput (images/s)", lower_is_better=False),
    CostAxis("params_m", "backbone parameters (M)", lower_is_better=True),
    CostAxis("index_bytes", "index size (MB)", lower_is_better=True, scale=1e-6),
)


def cross_source(strategy: str) -> tuple[str, str] | None:
    """``toptune@sop`` -> ``("toptune", "sop")``: a head or backbone tuned on another dataset."""
    tuned, source = registry.parse_strategy(strategy)
    return (tuned, source) if source is not None and tuned else None


def pareto_front(cost: Sequence[float], quality: Sequence[float], *, lower_cost_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both cost and quality, cheapest first.

    A point is dropped when another is at least as cheap and at least as good; of identical
    points the first is kept. NaNs take no part.
    """
    sign = 1.0 if lower_cost_is_better else -1.0
    valid = [i for i in range(len(cost)) if not (math.isnan(cost[i]) or math.isnan(quality[i]))]
    order = sorted(valid, key=lambda i: (sign * cost[i], -quality[i], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return front


def quality_and_cost(table: pd.DataFrame, dataset: str, protocol: str, metric: str) -> pd.DataFrame:
    """One row per (model, strategy): family, quality mean/std/n and every cost column."""
    rows = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
    quality = rows.set_index(["model", "strategy"])[["family", "mean", "std", "n"]]
    quality = quality.rename(columns={"mean": "quality", "std": "quality_std"})
    costs = cost_frame(table, dataset)
    merged = quality.join(costs, how="left") if not costs.empty else quality
    return merged.reset_index()


def adaptation_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Gain of each adaptation over the same backbone's pre-trained embedding, per dataset, on the
    dataset's main retrieval protocol and metric (absolute, and relative to the pre-trained value)."""
    records = []
    for dataset in datasets(table):
        protocol = main_protocol(table, dataset)
        metric = main_metric(table, dataset, protocol) if protocol else None
        if protocol is None or metric is None:
            continue
        frame = quality_and_cost(table, dataset, protocol, metric).set_index(["model", "strategy"])
        for model in frame.index.get_level_values("model").unique():
            if (model, BASELINE) not in frame.index:
                continue
            base = frame.loc[(model, BASELINE)]
            for adaptation in ADAPTATIONS:
                if (model, adaptation) not in frame.index:
                    continue
                adapted = frame.loc[(model, adaptation)]
                gain = float(adapted["quality"] - base["quality"])
                records.append({
                    "dataset": dataset, "protocol": protocol, "metric": metric, "model": model,
                    "family": base["family"], "adaptation": adaptation, BASELINE: float(base["quality"]),
                    "adapted": float(adapted["quality"]), "gain": gain,
                    "relative_gain": gain / float(base["quality"]) if base["quality"] else math.nan,
                })
    columns = ["dataset", "protocol", "metric", "model", "family", "adaptation", BASELINE, "adapted", "gain",
               "relative_gain"]
    return pd.DataFrame(records, columns=columns)


def family_gains(gains: pd.DataFrame) -> pd.DataFrame:
    """Mean, minimum and maximum gain per (dataset, family, adaptation), with the number of backbones."""
    if gains.empty:
        return pd.DataFrame(columns=["dataset", "family", "adaptation", "mean", "min", "max", "models"])
    grouped = gains.groupby(["dataset", "family", "adaptation"], sort=True)["gain"]
    return grouped.agg(mean="mean", min="min", max="max", models="count").reset_index()


def cross_tuning(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, tuned) -> source dataset x evaluation dataset of the main retrieval metric.

    Cross-tuned cells are strategies ``<tuned>@<source>``; the diagonal is the plain ``<tuned>``
    cell of each dataset. Only (model, tuned) pairs with at least one cross-tuned cell appear.
    """
    records = []
    for dataset in datasets(table):
        protocol = main_protocol(table, dataset)
        metric = main_metric(table, dataset, protocol) if protocol else None
        if protocol is None or metric is None:
            continue
        rows = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
        for row in rows.itertuples():
            strategy = str(row.strategy)
            source = cross_source(strategy)
            if source is not None:
                records.append((row.model, source[0], source[1], dataset, row.mean, True))
            elif strategy in ADAPTATIONS:
                records.append((row.model, strategy, dataset, dataset, row.mean, False))
    frame = pd.DataFrame(records, columns=["model", "tuned", "source", "target", "value", "cross"])
    matrices = {}
    for (model, tuned), group in frame.groupby(["model", "tuned"], sort=True):
        if group["cross"].any():
            matrices[(str(model), str(tuned))] = group.pivot_table(index="source", columns="target", values="value")
    return matrices
