"""The compression frontier: retrieval quality kept against bytes per item, and what fits a memory budget.

Reads the ``compress`` and ``compress-toptune`` cells of a run: the results table holds each method's
``METHOD/mMP@5`` and ``METHOD/R@1`` (means over seeds, 95% bootstrap intervals over queries) and its cost
columns; the cells' details say which methods were skipped or refused and why. Shows, per dataset and
protocol, the frontier plot (log bytes per item; one line per backbone and embedding; the Pareto front
over all of them marked), the recommendation for a memory budget, and the table.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

from shelfsight.bench import strategies as registry
from shelfsight.bench.strategies import compress, compress_toptune
from shelfsight.report.analysis import pareto_front
from shelfsight.report.data import RunData
from shelfsight.report.figures import LABEL_PT, fix_layout, place_labels, png
from shelfsight.report.images import png_uri

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

STRATEGIES = {compress.NAME: registry.baseline().name, compress_toptune.NAME: "top-tuned"}
"""The strategies whose cells this section reads, and the embedding each compresses."""
FLOAT = "float"
METRICS = ("mMP@5", "R@1")
COSTS = ("bytes_per_item", "index_bytes", "fixed_bytes", "build_seconds", "qps_batch1", "qps_batched")
BUDGET_ITEMS = 20_000_000
BUDGET_BYTES = 16e9
"""A fixed example budget, shown labelled as such: 20 M photos in 16 GB (800 bytes per photo)."""
GROWTH = (10, 100)
"""The catalogue's own size is the first scenario; these growth factors of it the next ones."""


@dataclass(frozen=True)
class Budget:
    items: int = BUDGET_ITEMS
    bytes: float = BUDGET_BYTES

    def text(self) -> str:
        return (f"{self.items / 1e6:g} M photos in {self.bytes / 1e9:g} GB "
                f"({self.bytes / self.items:,.0f} bytes per photo)")


def frontier_frame(run: RunData) -> pd.DataFrame:
    """One row per (dataset, protocol, model, strategy, method) of the compress cells: metric means and
    intervals, ``kept`` ratios to the same embedding's float search, recall and costs."""
    table = run.table[run.table["strategy"].isin(list(STRATEGIES)) & run.table["metric"].str.contains("/")]
    if table.empty:
        return pd.DataFrame()
    parts = table["metric"].str.split("/", n=1, expand=True)
    table = table.assign(method=parts[0], name=parts[1])
    keys = ["dataset", "protocol", "model", "strategy", "method"]
    frame = table.pivot_table(index=keys, columns="name", values="mean", aggfunc="first")
    for column in ("ci_low", "ci_high"):
        bounds = table[table["name"].isin(METRICS)].pivot_table(index=keys, columns="name", values=column,
                                                                 aggfunc="first")
        frame = frame.join(bounds.add_suffix(f" {column[3:]}"))
    frame = frame.reset_index()
    frame["embedding"] = frame["strategy"].map(STRATEGIES)
    recall = [c for c in frame.columns if str(c).startswith("recall@")]
    frame["recall"] = frame[recall[0]] if recall else math.nan
    frame["memory_per_item"] = frame.apply(_memory_per_item, axis=1)
    fitted = fitted_on(run)
    frame["fitted_on"] = [fitted.get(key, "-") for key in zip(*(frame[k] for k in keys), strict=True)]
    return _with_kept(frame)


def fitted_on(run: RunData) -> dict[tuple[str, str, str, str, str], str]:
    """(dataset, protocol, model, strategy, method) -> the items its codes were fitted on (``gallery``, ``train
    split``, ``2-fold cross-fit`` or ``nothing fitted``): never the queries it is scored on."""
    found: dict[tuple[str, str, str, str, str], str] = {}
    for cell in run.cells:
        for protocol, rows in (cell.details.get("compression") or {}).items():
            for row in rows:
                if "fitted_on" in row:
                    key = (cell.cell.dataset, protocol, cell.cell.model, cell.cell.strategy, row["method"])
                    found[key] = str(row["fitted_on"])
    return found


def _memory_per_item(row: pd.Series) -> float:
    """Bytes per item the index needs in memory: its measured size less fixed parts, per item, never less than
    the code itself (Milvus's fixed parts are unknown: its whole index per item, an upper bound)."""
    index, fixed, items = row.get("index_bytes", math.nan), row.get("fixed_bytes", math.nan), row.get("items", math.nan)
    code = float(row.get("bytes_per_item", math.nan))
    if not items or math.isnan(items) or math.isnan(index):
        return code
    return max(code, (index - (0.0 if math.isnan(fixed) else fixed)) / items)


def _with_kept(frame: pd.DataFrame) -> pd.DataFrame:
    reference = frame[frame["method"] == FLOAT].set_index(["dataset", "protocol", "model", "strategy"])
    for metric in METRICS:
        if metric not in frame:
            frame[metric] = math.nan
        base = reference[metric] if metric in reference else pd.Series(dtype=float)
        lookup = frame.set_index(["dataset", "protocol", "model", "strategy"]).index.map(lambda key, b=base: b.get(key))
        frame[f"kept {metric}"] = frame[metric] / pd.Series(lookup, index=frame.index, dtype=float)
    return frame.sort_values(["dataset", "protocol", "model", "strategy", "bytes_per_item"]).reset_index(drop=True)


def not_built(run: RunData) -> list[tuple[str, str, str, str]]:
    """(model · embedding, protocol, method, reason) of each method skipped, refused or failed."""
    found: dict[tuple[str, str, str], str] = {}
    for cell in run.cells:
        for protocol, rows in (cell.details.get("compression") or {}).items():
            for row in rows:
                if row.get("status") != "ok":
                    name = f"{cell.cell.model} · {STRATEGIES.get(cell.cell.strategy, cell.cell.strategy)}"
                    found[(name, protocol, row["method"])] = f"{row['status']}: {row.get('reason', '')}"
    return [(*key, reason) for key, reason in sorted(found.items())]


def choose(frame: pd.DataFrame, budget: Budget, metric: str = "mMP@5") -> tuple[pd.Series, pd.Series] | None:
    """(choice, best) among the methods whose memory for ``budget.items`` photos fits ``budget.bytes``: ``best``
    has the highest ``metric``; ``choice`` is the smallest whose mean lies within best's 95% interval (a tie
    within query noise is settled by memory), ``best`` itself when there is no interval."""
    fixed = sum(frame[c].fillna(0.0) if c in frame else 0.0 for c in ("fixed_bytes", "fixed_bytes_projection"))
    needed = budget.items * frame["memory_per_item"] + fixed
    fitting = frame[(needed <= budget.bytes) & frame[metric].notna()]
    if fitting.empty:
        return None
    best = fitting.sort_values([metric, "memory_per_item"], ascending=[False, True]).iloc[0]
    low = best.get(f"{metric} low", math.nan)
    tied = fitting[fitting[metric] >= low] if pd.notna(low) else fitting.loc[[best.name]]
    choice = tied.sort_values(["memory_per_item", metric], ascending=[True, False]).iloc[0]
    return choice.copy(), best.copy()


def recommendation(frame: pd.DataFrame, budget: Budget, metric: str = "mMP@5") -> str | None:
    """"20 M photos in 16 GB: efficientnet_lite2 (top-tuned) + pca128-int8 ... keeps 100% of its float mMP@5"."""
    chosen = choose(frame, budget, metric)
    if chosen is None:
        return None
    choice, best = chosen
    floats = frame[frame["method"] == FLOAT]
    top = floats.loc[floats[metric].idxmax()] if floats[metric].notna().any() else None
    versus = (f"; the best float embedding, {top['model']} ({top['embedding']}, {top['bytes_per_item']:,.0f} "
              f"bytes per item), scores {top[metric]:.3f}") if top is not None else ""
    tie = ("" if choice.name == best.name else
           f"; the highest that fits, {best['model']} ({best['embedding']}) + {best['method']} at "
           f"{best[metric]:.3f}{_interval(best, metric)}, is tied with it within query noise")
    gigabytes = budget.items * choice["memory_per_item"] / 1e9
    rerank = choice.get("rerank_bytes_per_item", 0.0)
    disk = f" plus {rerank:,.0f} on disk read for re-ranking" if pd.notna(rerank) and rerank > 0 else ""
    return (f"{budget.text()}: {choice['model']} ({choice['embedding']}) + {choice['method']} "
            f"({choice['bytes_per_item']:,.0f} bytes per item in memory{disk}; about {gigabytes:.1f} GB) keeps "
            f"{100 * choice[f'kept {metric}']:.0f}% of its float {metric}: {choice[metric]:.3f}"
            f"{_interval(choice, metric)}{tie}{versus}.")


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row.get(f"{metric} low", math.nan), row.get(f"{metric} high", math.nan)
    return "" if pd.isna(low) or pd.isna(high) else f" [95% CI {low:.3f}, {high:.3f}]"


def frontier_plot(frame: pd.DataFrame, title: str) -> bytes:
    """The frontier figure as PNG bytes (``frontier_figure``)."""
    return png(frontier_figure(frame, title))


def frontier_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Quality against log bytes per item: each backbone and embedding's methods as points, its line the best
    it reaches within each number of bytes; 95% intervals as bars; the Pareto front over all of them in black,
    its methods named (``figures.place_labels``: at least 10 px, no two labels overlapping)."""
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    fronts = []
    for axes, metric in zip(figure.subplots(1, len(METRICS)), METRICS, strict=True):
        for position, ((model, embedding), part) in enumerate(frame.groupby(["model", "embedding"], sort=True)):
            part = part.dropna(subset=[metric])
            colour = f"C{position % 10}"
            axes.scatter(part["bytes_per_item"], part[metric], color=colour, s=14, alpha=0.6)
            if f"{metric} low" in part:
                axes.vlines(part["bytes_per_item"], part[f"{metric} low"], part[f"{metric} high"], color=colour,
                            alpha=0.35, linewidth=1)
            ordered = part.sort_values("bytes_per_item")  # the best this embedding reaches within each budget
            axes.step(ordered["bytes_per_item"], ordered[metric].cummax(), where="post", color=colour,
                      linewidth=1.2, label=f"{model} · {embedding}")
        valid = frame.dropna(subset=[metric])
        front = valid.iloc[pareto_front(valid["bytes_per_item"].tolist(), valid[metric].tolist())]
        axes.step(front["bytes_per_item"], front[metric], where="post", color="black", linewidth=1.5,
                  label="Pareto front (all)")
        fronts.append((axes, list(zip(front["bytes_per_item"], front[metric], strict=True)),
                       [str(m) for m in front["method"]]))
        axes.set_xscale("log")
        axes.margins(x=0.08, y=0.12)  # room for the labels of the points at the edges
        axes.set_xlabel("bytes per item (log)")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=LABEL_PT, loc="lower right")
    figure.suptitle(title, fontsize=11)
    fix_layout(figure)
    for axes, points, names in fronts:
        if dropped := place_labels(axes, points, names):
            axes.set_title("also on the front: " + ", ".join(dropped), fontsize=LABEL_PT)
    return figure


def build(run: RunData, budget: Budget = Budget()) -> Section | None:
    """The section, or None when the run has no compress cell."""
    from shelfsight.report.sections import Plot, Section  # the package imports this module

    frame = frontier_frame(run)
    if frame.empty:
        return None
    sizes = {str(d): catalogue_items(run, str(d)) for d in frame["dataset"].unique()}
    plots, html_parts, markdown = [], [_INTRO_HTML], [_INTRO_MD, ""]
    for (dataset, protocol), part in frame.groupby(["dataset", "protocol"], sort=True):
        title = f"{dataset} · {protocol}"
        plot = Plot(f"compression-{_slug(dataset)}-{_slug(protocol)}", title,
                           frontier_plot(part, f"{title}: quality against bytes per item"),
                           "Each point a method; vertical bars 95% bootstrap intervals; black steps: the Pareto front.")
        plots.append(plot)
        advice = _advice(part, budget, sizes[str(dataset)])
        html_parts += [f"<h3>{html.escape(title)}</h3>",
                       *(f"<p><strong>{html.escape(line)}</strong></p>" for line in advice),
                       f'<img src="{png_uri(plot.png)}" alt="{html.escape(title)}" style="max-width:100%">',
                       _table_html(part)]
        markdown += [f"### {title}", "", *(f"**{line}**\n" for line in advice), *_table_markdown(part), ""]
    missing = not_built(run)
    if missing:
        html_parts.append("<h3>Not built</h3><ul>" + "".join(
            f"<li>{html.escape(who)} · {html.escape(protocol)} · <code>{html.escape(method)}</code>: "
            f"{html.escape(reason)}</li>" for who, protocol, method, reason in missing) + "</ul>")
        markdown += ["### Not built", ""] + [f"- {who} · {protocol} · `{method}`: {reason}"
                                            for who, protocol, method, reason in missing]
    return Section("compression", "Compression frontier", "\n".join(html_parts), "\n".join(markdown), plots)


def _advice(frame: pd.DataFrame, budget: Budget, items: int | None) -> list[str]:
    """At the catalogue's own size (and grown by ``GROWTH``): the smallest method tied with the best, and its
    memory; then the fixed example budget, labelled; each over every embedding, then the pre-trained ones alone."""
    untrained = frame[frame["strategy"] == compress.NAME]
    both = not untrained.empty and untrained["strategy"].nunique() < frame["strategy"].nunique()
    lines = []
    if items:
        lines.append(at_scale(frame, items) or f"At this catalogue's size ({items:,} photos): no method measured.")
        found = at_scale(untrained, items) if both else None
        lines += [f"Without training: {found}"] if found else []
    example = recommendation(frame, budget) or f"{budget.text()}: no measured method fits."
    lines.append(f"Example budget, not this catalogue's: {example}")
    found = recommendation(untrained, budget) if both else None
    lines += [f"Example budget without training: {found}"] if found else []
    return lines


def catalogue_items(run: RunData, dataset: str) -> int | None:
    """The photos the dataset's protocols searched, read from its cells' details (queries plus gallery where the
    queries are not in the gallery): the catalogue's own size for the scaling scenario; None when not recorded."""
    from shelfsight.catalog import declared_entry

    entry = declared_entry(dataset)
    declared = {p.name: p for p in (entry.protocols if entry is not None else ())}
    sizes = [0]
    for cell in run.cells:
        if cell.status != "ok" or cell.cell.dataset != dataset:
            continue
        for protocol, details in cell.details.items():
            if not isinstance(details, dict) or not {"queries", "gallery"} <= set(details):
                continue
            found = declared.get(protocol)
            inside = found.leave_one_out if found is not None else protocol == "leave-one-out"
            sizes.append(int(details["gallery"]) + (0 if inside else int(details["queries"])))
    return max(sizes) or None


def at_scale(frame: pd.DataFrame, items: int, metric: str = "mMP@5") -> str | None:
    """"At this catalogue's size (5,155 photos) and grown x10 and x100: ... keeps 99% ... about 0.7 MB, 6.6 MB
    and 66 MB in memory": the smallest method within the best one's 95% interval, whatever memory it needs."""
    chosen = choose(frame, Budget(items, math.inf), metric)
    if chosen is None:
        return None
    choice, _ = chosen
    scales = [items, *(items * g for g in GROWTH)]
    grown = " and ".join(f"x{g}" for g in GROWTH)
    floats = frame[(frame["method"] == FLOAT) & frame[metric].notna()]
    top = floats.loc[floats[metric].idxmax()] if not floats.empty else None
    versus = (f"; the best float embedding, {top['model']} ({top['embedding']}), needs {_sizes(top, scales)}"
              if top is not None and top.name != choice.name else "")
    counts = ", ".join(f"{n:,}" for n in scales[1:])
    return (f"At this catalogue's size ({items:,} photos) and grown {grown} ({counts}): {choice['model']} "
            f"({choice['embedding']}) + {choice['method']} keeps {100 * choice[f'kept {metric}']:.0f}% of its float "
            f"{metric}: {choice[metric]:.3f}{_interval(choice, metric)}"
            f", the smallest method within the best one's interval, in {choice['bytes_per_item']:,.0f} bytes per "
            f"photo{' plus its fixed parts' if _fixed(choice) else ''}: {_sizes(choice, scales)}{versus}.")


def _sizes(row: pd.Series, scales: list[int]) -> str:
    """Memory of ``row``'s index at each scale: ``about 0.7 MB, 6.6 MB and 66 MB in memory``."""
    values = [_human(n * float(row["memory_per_item"]) + _fixed(row)) for n in scales]
    return f"about {', '.join(values[:-1])} and {values[-1]} in memory"


def _fixed(row: pd.Series) -> float:
    """Bytes the index holds whatever its size (codebooks, the PCA projection)."""
    return sum(float(row[c]) for c in ("fixed_bytes", "fixed_bytes_projection") if pd.notna(row.get(c, math.nan)))


def _human(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} bytes"


_INTRO_MD = (
    "Every method compresses the same embedding (pre-trained, or the top-tuned head's output): PCA fitted on items "
    "disjoint from the queries it is scored on (*fitted on*: the gallery where it holds no query, else the train "
    "split, else a 2-fold cross-fit; scikit-learn), int8 and product quantisation (FAISS), sign bits with Hamming "
    "search (FAISS "
    "`IndexBinaryFlat`: Milvus Lite 3.2.2 refuses binary vectors) and float re-ranking of the top candidates, "
    "Milvus index types that compress (checked with `describe_index`). *bytes/item* is the stored code; *kept* "
    "is the ratio to the same embedding's exact float search; *index* is the index as built (FAISS: serialized, "
    "its memory; Milvus Lite: its index files); queries/s include projecting the query, on a shared CPU.")
_INTRO_HTML = "<p>{}</p>".format(re.sub(r"\*([^*]+)\*", r"<em>\1</em>", html.escape(_INTRO_MD).replace("`", "")))
COLUMNS = (("model", "model"), ("embedding", "embedding"), ("method", "method"), ("fitted_on", "fitted on"),
           ("bytes_per_item", "bytes/item"),
           ("mMP@5", "mMP@5"), ("kept mMP@5", "kept"), ("R@1", "R@1"), ("kept R@1", "kept"),
           ("recall", "recall vs float"), ("index_bytes", "index KB"), ("build_seconds", "build s"),
           ("qps_batch1", "q/s batch 1"), ("qps_batched", "q/s batched"))


def _format(row: pd.Series, column: str) -> str:
    value: Any = row.get(column, math.nan)
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return "-"
    if column.startswith("kept"):
        return f"{100 * value:.1f}%"
    if column in METRICS:
        return f"{value:.3f}" + _interval(row, column).replace(" [95% CI ", " [").replace(", ", "–")
    if column == "index_bytes":
        return f"{value / 1e3:,.0f}"
    if column in ("bytes_per_item", "qps_batch1", "qps_batched"):
        return f"{value:,.0f}"
    return f"{value:.3f}" if column == "recall" else f"{value:.2f}"


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(row, column))}</td>" for column, _ in COLUMNS)
                   + "</tr>" for _, row in frame.iterrows())
    return f"<div class=\"scroll\"><table class=\"compression\"><tr>{head}</tr>{body}</table></div>"


def _table_markdown(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(label for _, label in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    return lines + ["| " + " | ".join(_format(row, column).replace("|", "\\|") for column, _ in COLUMNS) + " |"
                    for _, row in frame.iterrows()]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text))
