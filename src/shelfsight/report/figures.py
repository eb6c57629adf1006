"""Figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot: no global state, no display needed, nothing left open between figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from shelfsight.bench import strategies as registry
from shelfsight.bench.table import main_metric, retrieval_protocols
from shelfsight.report.analysis import COST_AXES, pareto_front

DPI = 100
MIN_LABEL_PX = 10
"""The smallest text a reader should have to read on a point label, in pixels of the saved PNG."""
LABEL_PT = math.ceil(MIN_LABEL_PX * 72 / DPI)
"""Point labels' font size: MIN_LABEL_PX at DPI (8 pt at 100 dpi is 11 px)."""
SHOWN_WIDTH_PX = 1340
"""The widest a figure is shown without being scaled down: the report's 1,400 px column less its padding."""
_OFFSETS = [(dx, dy) for radius in (6, 16, 28) for dx, dy in
            ((radius, radius), (radius, -radius - 8), (-radius, radius), (-radius, -radius - 8), (radius, -4),
             (-radius, -4), (0, radius + 4), (0, -radius - 12))]
"""Candidate label positions around a point (points), nearest first: the first that overlaps no label wins."""


def strategy_colours(strategies: Sequence[str]) -> dict[str, str]:
    """One colour per strategy, the same in every figure of a report."""
    palette = [f"C{i}" for i in range(10)]
    ordered = sorted(set(strategies), key=registry.rank)
    return {s: palette[i % len(palette)] for i, s in enumerate(ordered)}


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def fix_layout(figure: Figure) -> None:
    """Run the figure's layout once and freeze it, so labels placed afterwards keep their measured places."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.draw_without_rendering()
    figure.set_layout_engine("none")


def place_labels(axes: Axes, points: Sequence[tuple[float, float]], texts: Sequence[str]) -> list[str]:
    """Label each point at LABEL_PT, offset to the first candidate place inside the axes where it overlaps no label
    placed before nor the legend (deterministic, no adjustText); a label with no free place is left off and
    returned, for the caller to list.
    Call after ``fix_layout``: places are measured in the figure's final pixels."""
    renderer = axes.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = axes.get_window_extent(renderer)
    legend = axes.get_legend()
    taken: list[Any] = [legend.get_window_extent(renderer)] if legend is not None else []
    for x, y in points:  # the marked points themselves: a label never hides one
        px, py = axes.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    dropped = []
    for (x, y), text in sorted(zip(points, texts, strict=True), key=lambda item: (item[0][0], item[0][1])):
        for dx, dy in _OFFSETS:
            label = axes.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=LABEL_PT,
                                  ha="left" if dx >= 0 else "right", annotation_clip=False)
            label.set_in_layout(False)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            label.remove()
        else:
            dropped.append(text)
    return dropped


def _grouped_bars(axes: Axes, frame: pd.DataFrame, colours: dict[str, str]) -> None:
    """Bars per model, one per strategy; error bars: the 95% bootstrap interval (over queries, and seeds
    where there are several), absent where a table has none."""
    models = list(dict.fromkeys(frame["model"]))
    strategies = [s for s in colours if s in set(frame["strategy"])]
    width = 0.8 / max(len(strategies), 1)
    rows = frame.set_index(["model", "strategy"])
    for offset, strategy in enumerate(strategies):
        xs, heights, below, above = [], [], [], []
        for position, model in enumerate(models):
            if (model, strategy) in rows.index:
                row = rows.loc[(model, strategy)]
                xs.append(position - 0.4 + width * (offset + 0.5))
                heights.append(float(row["mean"]))
                low, high = _interval(row)
                below.append(max(0.0, heights[-1] - low))
                above.append(max(0.0, high - heights[-1]))
        axes.bar(xs, heights, width=width * 0.95, color=colours[strategy], label=strategy,
                 yerr=[below, above] if any(below) or any(above) else None, capsize=2, error_kw={"elinewidth": 1})
    axes.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)


def _interval(row: pd.Series) -> tuple[float, float]:
    low, high = float(row.get("ci_low", math.nan)), float(row.get("ci_high", math.nan))
    mean = float(row["mean"])
    return (mean, mean) if math.isnan(low) or math.isnan(high) else (low, high)


def dataset_bars(table: pd.DataFrame, dataset: str, colours: dict[str, str]) -> bytes | None:
    """One panel per retrieval protocol (its main metric) and one for classification accuracy."""
    panels = [(p, main_metric(table, dataset, p)) for p in [*retrieval_protocols(table, dataset), "classification"]]
    panels = [(p, m) for p, m in panels if m is not None]
    if not panels:
        return None
    figure = Figure(figsize=(min(4.2 * len(panels), 16), 3.8), layout="constrained")
    for index, (protocol, metric) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        rows = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
        _grouped_bars(axes, rows, colours)
        axes.set_title(f"{protocol} · {metric}", fontsize=10)
        top = float(rows[["mean", "ci_high"]].max(axis=1).max()) if "ci_high" in rows else float(rows["mean"].max())
        axes.set_ylim(0, min(1.0, top * 1.15) if 0 < top <= 1 else None)
    seen: dict[str, Artist] = {}
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    order = [s for s in colours if s in seen]
    figure.suptitle(dataset, fontsize=11)
    figure.legend([seen[s] for s in order], order, loc="outside lower center", ncol=len(order), fontsize=8,
                  frameon=False)
    return png(figure)


def gains_chart(gains: pd.DataFrame, adaptation_colours: dict[str, str]) -> bytes | None:
    """Per dataset: gain of each adaptation over pre-trained, bars = family mean, dots = backbones."""
    if gains.empty:
        return None
    sets = list(dict.fromkeys(gains["dataset"]))
    figure = Figure(figsize=(min(4.5 * len(sets), 16), 3.4))
    for index, dataset in enumerate(sets, start=1):
        axes = figure.add_subplot(1, len(sets), index)
        part = gains[gains["dataset"] == dataset]
        families = sorted(part["family"].unique())
        adaptations = [a for a in adaptation_colours if a in set(part["adaptation"])]
        width = 0.8 / max(len(adaptations), 1)
        labelled: set[str] = set()
        for offset, adaptation in enumerate(adaptations):
            for position, family in enumerate(families):
                values = part[(part["family"] == family) & (part["adaptation"] == adaptation)]["gain"].to_numpy()
                if not len(values):
                    continue
                x = position - 0.4 + width * (offset + 0.5)
                axes.bar(x, values.mean(), width=width * 0.9, color=adaptation_colours[adaptation], alpha=0.8,
                         label=None if adaptation in labelled else adaptation)
                labelled.add(adaptation)
                axes.scatter(np.full(len(values), x), values, color="black", s=10, zorder=3)
        axes.axhline(0, color="black", linewidth=0.8)
        axes.set_xticks(range(len(families)), families, fontsize=9)
        first = part.iloc[0]
        axes.set_title(f"{dataset} · {first['protocol']} · {first['metric']}", fontsize=10)
        axes.set_ylabel(f"gain in {first['metric']} over {registry.baseline().name}", fontsize=8)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    return png(figure)


def _scale(axes: Axes, values: np.ndarray) -> None:
    """Logarithmic when the values span more than a factor 20; symmetric-log when zeros are among them."""
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) < 2 or positive.max() / positive.min() <= 20:
        return
    if (values[np.isfinite(values)] == 0).any():
        axes.set_xscale("symlog", linthresh=float(positive.min()))
    else:
        axes.set_xscale("log")


def cost_chart(frame: pd.DataFrame, title: str, colours: dict[str, str]) -> bytes | None:
    """Quality against each cost, as PNG bytes (``cost_figure``)."""
    figure = cost_figure(frame, title, colours)
    return png(figure) if figure is not None else None


def cost_figure(frame: pd.DataFrame, title: str, colours: dict[str, str]) -> Figure | None:
    """Quality against each cost, two panels a row so the figure is shown at full size: points coloured by
    strategy, the Pareto front a step line, its points named (LABEL_PT, placed so that no two labels overlap)."""
    axes_list = [axis for axis in COST_AXES if axis.metric in frame and frame[axis.metric].notna().any()]
    if frame.empty or not axes_list:
        return None
    columns = min(2, len(axes_list))
    rows = math.ceil(len(axes_list) / columns)
    figure = Figure(figsize=(5.6 * columns, 3.8 * rows + 0.6), layout="constrained")
    labelled = []
    for index, axis in enumerate(axes_list, start=1):
        axes = figure.add_subplot(rows, columns, index)
        part = frame[frame[axis.metric].notna()].reset_index(drop=True)
        part[axis.metric] = part[axis.metric] * axis.scale
        for strategy in [s for s in colours if s in set(part["strategy"])]:
            group = part[part["strategy"] == strategy]
            axes.errorbar(group[axis.metric], group["quality"],
                          yerr=group["quality_std"].where(group["n"] > 1, 0.0), fmt="o",
                          color=colours.get(str(strategy), "grey"), label=str(strategy), markersize=5, capsize=2)
        front = pareto_front(part[axis.metric].tolist(), part["quality"].tolist(),
                             lower_cost_is_better=axis.lower_is_better)
        xs = part.loc[front, axis.metric].to_numpy()
        ys = part.loc[front, "quality"].to_numpy()
        # cheapest first: the best quality reachable within each budget, a staircase rising as the budget grows
        axes.step(xs, ys, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front")
        axes.scatter(xs, ys, s=90, facecolors="none", edgecolors="black", linewidths=1, zorder=3)
        labelled.append((axes, list(zip(xs.tolist(), ys.tolist(), strict=True)),
                         [str(part.loc[i, "model"]) for i in front]))
        _scale(axes, part[axis.metric].to_numpy(dtype=float))
        axes.margins(x=0.08, y=0.12)  # room for the labels of the points at the edges
        axes.set_xlabel(axis.label + ("" if axis.lower_is_better else " (higher is cheaper)"), fontsize=9)
        axes.grid(alpha=0.3)
        if index % columns == 1 or columns == 1:
            axes.set_ylabel(title.split(" · ", 1)[-1], fontsize=9)
    figure.suptitle(title, fontsize=11)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=9, frameon=False)
    fix_layout(figure)
    for axes, points, names in labelled:
        if dropped := place_labels(axes, points, names):
            axes.set_title("also on the front: " + ", ".join(dropped), fontsize=LABEL_PT)
    return figure


def heatmap(matrix: pd.DataFrame, title: str, label: str) -> bytes:
    """Source dataset (rows) x evaluation dataset (columns); blank where not measured."""
    values = matrix.to_numpy(dtype=float)
    figure = Figure(figsize=(1.4 * values.shape[1] + 2.5, 1.0 * values.shape[0] + 1.8))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=np.nanmin(values),
                        vmax=np.nanmax(values))
    for (row, column), value in np.ndenumerate(values):
        if not math.isnan(value):
            axes.text(column, row, f"{value:.3f}", ha="center", va="center", fontsize=8,
                      color="white" if value < np.nanmean(values) else "black")
    axes.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns], rotation=20, ha="right")
    axes.set_yticks(range(values.shape[0]), [str(r) for r in matrix.index])
    axes.set_xlabel("evaluated on")
    axes.set_ylabel("tuned on")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label=label)
    return png(figure)


def confusion_chart(classes: Sequence[str], matrix: Sequence[Sequence[float]], title: str) -> bytes:
    """Row-normalised confusion matrix (rows true, columns predicted)."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(classes)
    side = min(max(4.0, 0.13 * n + 2.5), 14.0)
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    font = 8 if n <= 20 else max(3.5, 8 - n / 20)
    axes.set_xticks(range(n), list(classes), rotation=90, fontsize=font)
    axes.set_yticks(range(n), list(classes), fontsize=font)
    if n <= 12:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if normalised[row, column] > 0.5 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04, label="share of the true class")
    return png(figure)
