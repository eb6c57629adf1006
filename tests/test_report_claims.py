"""What the report says, it measured (issue 27): break-even sentences name measured budgets only, the compression
scenario is the catalogue's own size, a report without label-efficiency, compression or duplicates sections says
what a fuller config adds (and that config validates), point labels are readable and never overlap, wide tables
scroll instead of clipping at 1,400 px, grid labels show without hover, and top-tuned vectors that rank by category
are called out."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure
from PIL import Image

from shelfsight.bench import load_config
from shelfsight.bench.label_budgets import break_evens
from shelfsight.bench.results import Cell, CellResult
from shelfsight.report import build, figures, load_run, render_html, render_markdown, write_report
from shelfsight.report.analysis import quality_and_cost
from shelfsight.report.data import RunData
from shelfsight.report.sections import compression, fuller
from shelfsight.report.sections.label_budgets import _evens_markdown, advice

# ---------------------------------------------------------------------------------------------- break-even


def _budget_tests(results: dict[str, bool], draws: int = 3) -> pd.DataFrame:
    """A tests table of one top-tuning curve against the pre-trained embedding: budget -> significantly better."""
    return pd.DataFrame([{"dataset": "shop", "model": "lite0", "strategy": "toptune", "reference": "pretrained",
                          "budget": budget, "metric": "mMP@5", "better": better, "mean": 0.70,
                          "draws": 1 if budget == "all" else draws, "reference_mean": 0.66, "p_holm": 0.004}
                         for budget, better in results.items()])


CURVES = pd.DataFrame({"dataset": ["shop"], "budget": ["all"], "train_per_class": [180.4]})
"""The curves table's ``all`` point: 180.4 training photos per class on average (said as ≈180)."""


def _named_budgets(sentence: str) -> set[str]:
    """Every budget a sentence names: ``N labelled photos``, ``N per class``, ``between A and B``."""
    found = set(re.findall(r"(\d+) (?:labelled photos|per class)", sentence))
    for low, high in re.findall(r"between (\S+) and (\S+?)[ :]", sentence):
        found |= {low, high}
    return found


@pytest.mark.parametrize(("results", "between"), [
    ({"1": False, "5": False, "all": True}, "between 5 and all (≈180 per class)"),
    ({"1": False, "5": False, "10": True, "25": True, "all": True}, "between 5 and 10"),
])
def test_a_break_even_sentence_names_only_measured_budgets(results: dict[str, bool], between: str) -> None:
    [curve] = break_evens(_budget_tests(results))
    measured = {b for b in results if b != "all"}
    assert curve.below == "5" and curve.budget == next(b for b, better in results.items() if better)
    [sentence] = advice([curve], CURVES)
    assert between in sentence and "fewer than" not in sentence
    # every number named is a measured budget, "all", or the measured mean of "all" (≈180 per class)
    assert _named_budgets(sentence) <= measured | {"all", "180"}, sentence
    assert "up to 5 labelled photos per class, use lite0's pre-trained embedding" in sentence
    row = _evens_markdown([curve], CURVES)[-1]
    assert "not at 5, nothing measured between" in row


def test_a_break_even_at_the_smallest_budget_says_so() -> None:
    [first] = break_evens(_budget_tests({"5": True, "10": True, "all": True}))
    [sentence] = advice([first], CURVES)
    assert first.below is None and "from 5 per class, the smallest budget measured" in sentence
    assert "between" not in sentence
    [one] = advice(break_evens(_budget_tests({"1": True, "5": True, "all": True})), CURVES)
    assert "from one labelled photo per class" in one


# ---------------------------------------------------------------------------------------------- compression

METHODS = {  # method -> (bytes per item, mMP@5 mean, low, high)
    "float": (5120, 0.700, 0.680, 0.720),
    "pca128-int8": (128, 0.690, 0.670, 0.710),  # within float's interval: the smallest such method
    "binary": (160, 0.600, 0.580, 0.620),  # outside it
}


def _compress_run(folder: Path) -> RunData:
    """A run with one compress cell on a 70/30 split of 5,155 photos (1,547 test queries, 3,608 in the gallery)."""
    rows = []
    for method, (size, mean, low, high) in METHODS.items():
        values = {"mMP@5": (mean, low, high), "R@1": (mean - 0.1, low - 0.1, high - 0.1),
                  "bytes_per_item": (size, None, None), "items": (3608, None, None),
                  "index_bytes": (size * 3608, None, None)}
        rows += [{"model": "lite0", "family": "supervised", "dataset": "clothing", "protocol": "test-train",
                  "strategy": "compress", "metric": f"{method}/{name}", "mean": v, "std": 0.0, "n": 1,
                  "ci_low": lo, "ci_high": hi} for name, (v, lo, hi) in values.items()]
    details = {"test-train": {"queries": 1547, "gallery": 3608, "k": 10}, "compression": {}}
    cell = CellResult(Cell("lite0", "clothing", "compress", None), "ok", details=details)
    return RunData(folder, pd.DataFrame(rows), (cell,), {}, {})


def test_the_compression_scenario_uses_the_catalogue_size(tmp_path: Path) -> None:
    run = _compress_run(tmp_path)
    assert compression.catalogue_items(run, "clothing") == 1547 + 3608
    loo = CellResult(Cell("m", "d", "pretrained", None), "ok", details={"leave-one-out": {"queries": 90,
                                                                                          "gallery": 90}})
    assert compression.catalogue_items(RunData(tmp_path, run.table, (loo,), {}, {}), "d") == 90  # not 180
    section = compression.build(run)
    assert section is not None
    first, example = (line.strip("*") for line in section.markdown.split("\n") if line.startswith("**"))
    assert first.startswith("At this catalogue's size (5,155 photos) and grown x10 and x100 (51,550, 515,500)")
    assert "+ pca128-int8 keeps 99% of its float mMP@5: 0.690" in first  # 0.690 / 0.700, the smallest tied
    # 128 bytes per photo: 5,155 x 128 = 660 KB, x10 6.6 MB, x100 66 MB; float 5,120 bytes: 26.4 MB ... 2.64 GB
    assert "about 660 KB, 6.6 MB and 66 MB in memory" in first
    assert "needs about 26.4 MB, 264 MB and 2.64 GB in memory" in first
    assert "20 M" not in first and example.startswith("Example budget, not this catalogue's: 20 M photos in 16 GB")


# ---------------------------------------------------------------------------------------------- a fuller config

def _run_like(folder: Path, catalogue: Path) -> Path:
    """The folder ``shelfsight run`` leaves (its config from ``auto_config``, validated and dumped as the bench
    does), with a results table and a linear cell that learned from 40 photos of 4 classes (10 per class)."""
    from rich.console import Console

    from shelfsight.bench.config import config_to_json
    from shelfsight.zero_config import auto_config

    folder.mkdir(parents=True)
    raw = auto_config(catalogue, folder, console=Console(quiet=True))
    (folder / "config.json").write_text(config_to_json(load_config(raw)))
    rows = [{"model": m, "family": "supervised", "dataset": "shop", "protocol": p, "strategy": s, "metric": metric,
             "mean": v, "std": 0.0, "n": 1}
            for m, (s, v), (p, metric) in itertools.product(
                ["efficientnet_lite0"], [("pretrained", 0.6), ("linear", 0.7)],
                [("test-train", "mMP@5"), ("classification", "accuracy")])]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    cell = {"cell": {"model": "efficientnet_lite0", "dataset": "shop", "strategy": "linear", "seed": 0},
            "status": "ok", "family": "supervised", "metrics": {}, "costs": {}, "error": None,
            "details": {"train": 40, "classes": 4}}
    (folder / "cells").mkdir()
    (folder / "cells" / "a.json").write_text(json.dumps(cell))
    return folder


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    from conftest import gradient

    root = tmp_path / "shop"
    for k, label in enumerate(("red", "blue", "green", "grey")):
        (root / label).mkdir(parents=True)
        for i in range(14):
            gradient(32, 32, seed=100 * k + i).save(root / label / f"{i}.jpg")
    return root


def test_the_run_report_lists_the_missing_sections_with_a_config_that_validates(tmp_path: Path,
                                                                                catalogue: Path) -> None:
    run_dir = _run_like(tmp_path / "run", catalogue)
    report = build(load_run(run_dir))
    [more] = [s for s in report.extras if s.id == fuller.ID]
    markdown = render_markdown(report)
    assert "## Sections a fuller config adds" in markdown
    assert "no section for label efficiency, compression frontier and duplicates and leakage." in markdown
    snippet = yaml.safe_load(re.search(r"```yaml\n(.*?)```", more.markdown, re.S).group(1))  # type: ignore[union-attr]
    assert snippet["label_budgets"] == {"budgets": [1, 5, "all"], "subsets": 3}  # 10 per class: 10 and 25 left out
    assert snippet["strategies"][-2:] == ["compress", "compress-toptune"] and "compress" in snippet
    commands = re.search(r"```sh\n(.*?)```", more.markdown, re.S).group(1).splitlines()  # type: ignore[union-attr]
    assert commands[0] == f"shelfsight bench fuller.yaml --run-dir {run_dir}"
    assert commands[1].startswith("shelfsight duplicates ") and f"--output {run_dir / 'duplicates'}" in commands[1]
    # the whole config printed in the HTML is the run's own plus the snippet, and the bench accepts it
    whole = fuller.fuller_config(json.loads((run_dir / "config.json").read_text()), snippet)
    config = load_config(whole)
    assert config.label_budgets is not None and config.label_budgets.numbers == (1, 5)
    assert {s.name for s in config.strategies} >= {"compress", "compress-toptune", "toptune"}
    html = render_html(report)
    assert 'id="fuller-config"' in html and "label_budgets:" in html
    assert any("Sections a fuller config adds" in line for line in more.answers)


# ---------------------------------------------------------------------------------------------- figures

def _labels(figure: Figure) -> list[Any]:
    return [t for axes in figure.axes for t in axes.texts]


def _check_labels(figure: Figure, expected: int) -> None:
    """At least 10 px at the saved DPI, shown unscaled (the PNG fits the report's column), no two overlapping."""
    data = figures.png(figure)
    width = Image.open(io.BytesIO(data)).width
    assert width <= figures.SHOWN_WIDTH_PX  # not scaled down in the page, so the pixels computed are the pixels seen
    labels = _labels(figure)
    assert len(labels) == expected
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    for label in labels:
        assert label.get_fontsize() * figures.DPI / 72 >= 10, label.get_text()
    boxes = [label.get_window_extent(renderer) for label in labels]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        same_axes = labels[i].axes is labels[j].axes
        assert not (same_axes and a.overlaps(b)), (labels[i].get_text(), labels[j].get_text())


def test_cost_chart_labels_are_readable_and_never_overlap() -> None:
    # eight models on the front, their costs and qualities close together: the crowded case
    rows = []
    for i in range(8):
        model = f"backbone-{i}"
        rows += [{"model": model, "family": "f", "dataset": "d", "protocol": "p", "strategy": "pretrained",
                  "metric": "mMP@5", "mean": 0.50 + 0.01 * i, "std": 0.0, "n": 1},
                 *({"model": model, "family": "f", "dataset": "d", "protocol": "cost", "strategy": "pretrained",
                    "metric": metric, "mean": value, "std": 0.0, "n": 1}
                   for metric, value in (("params_m", 10.0 + i), ("extract_images_per_s", 100.0 - i),
                                         ("index_bytes", 1e6 * (1 + i / 10))))]
    frame = quality_and_cost(pd.DataFrame(rows), "d", "p", "mMP@5")
    figure = figures.cost_figure(frame, "d · visual search · p mMP@5", figures.strategy_colours(["pretrained"]))
    assert figure is not None
    # params, throughput, index size: every model is on the front (each costs more and scores more); tuning time:
    # 0 s for all, so the best alone
    assert len(figure.axes) == 4
    fronts = 3 * 8 + 1
    dropped = sum(len(axes.get_title().split(", ")) for axes in figure.axes if axes.get_title())
    _check_labels(figure, fronts - dropped)
    assert figures.LABEL_PT * figures.DPI / 72 >= 10 and dropped < fronts / 4


def test_compression_frontier_labels_are_readable_and_never_overlap() -> None:
    methods = ["float", "int8", "milvus:IVF_SQ8", "pca256-int8", "pca128-int8", "binary-rerank4", "pq32", "pq16"]
    sizes = [5120, 1280, 1290, 256, 128, 160, 32, 16]
    frame = pd.DataFrame({"model": "lite0", "embedding": "pretrained", "method": methods, "bytes_per_item": sizes,
                          "mMP@5": [0.700, 0.699, 0.6985, 0.695, 0.69, 0.692, 0.6, 0.55],
                          "R@1": [0.600, 0.599, 0.5985, 0.595, 0.59, 0.592, 0.5, 0.45]})
    figure = compression.frontier_figure(frame, "clothing · test-train")
    dropped = sum(len(axes.get_title().split(", ")) for axes in figure.axes if axes.get_title())
    _check_labels(figure, 2 * 7 - dropped)  # 7 on each front: pca128-int8 is beaten by smaller binary-rerank4
    assert dropped == 0


# ---------------------------------------------------------------------------------------------- category ranking

def _example(scores: list[float]) -> dict[str, Any]:
    return {"query": "q", "query_key": "shirt", "query_path": "",
            "neighbours": [{"id": f"g{i}", "path": "", "key": "shirt", "score": s, "relevant": True}
                           for i, s in enumerate(scores)]}


def _category_run(folder: Path, toptune: list[float], pretrained: list[float], queries: int = 3) -> Path:
    """The report's known table (clip-b top-tuned is the visual-search choice) with example queries whose
    same-class neighbour scores are given."""
    table = []
    for strategy, value in (("pretrained", 0.70), ("toptune", 0.81)):
        table += [{"model": "clip-b", "family": "contrastive", "dataset": "catalogue", "protocol": "test-train",
                   "strategy": strategy, "metric": "mMP@5", "mean": value, "std": 0.0, "n": 1}]
    folder.mkdir(parents=True)
    pd.DataFrame(table).to_csv(folder / "results.csv", index=False)
    (folder / "cells").mkdir()
    for strategy, scores in (("toptune", toptune), ("pretrained", pretrained)):
        cell = {"cell": {"model": "clip-b", "dataset": "catalogue", "strategy": strategy, "seed": 0},
                "status": "ok", "family": "contrastive", "metrics": {}, "costs": {}, "error": None,
                "details": {"test-train": {"examples": [_example([s - i / 1000 for s in scores])
                                                       for i in range(queries)]}}}
        (folder / "cells" / f"{strategy}.json").write_text(json.dumps(cell))
    return folder


def test_top_tuned_vectors_that_rank_by_category_are_called_out(tmp_path: Path) -> None:
    coarse = _category_run(tmp_path / "coarse", [0.982, 0.981, 0.980, 0.979], [0.80, 0.76, 0.72, 0.70])
    report = build(load_run(coarse))
    warning = report.category[("catalogue", "clip-b")]
    assert "within 0.003 cosine" in warning and "pre-trained: 0.100)" in warning and "3 example queries" in warning
    [answer] = report.category_answers()  # clip-b · toptune is the recommended visual search: on the first screen
    assert answer.startswith("catalogue, recommended clip-b · toptune: clip-b's top-tuned vectors rank by category")
    assert answer in render_html(report).replace("&#39;", "'") and answer in render_markdown(report)
    # spread as wide as the pre-trained one: no warning, the rule alone
    fine = build(load_run(_category_run(tmp_path / "fine", [0.90, 0.85, 0.80], [0.80, 0.76, 0.72, 0.70])))
    assert fine.category == {} and "ranks by category, not by look-alike" in render_html(fine)
    few = build(load_run(_category_run(tmp_path / "few", [0.982, 0.981, 0.980], [0.80, 0.70], queries=2)))
    assert few.category == {}  # two example queries are too few to call it


# ---------------------------------------------------------------------------------------------- in Chromium

def _wide_run(folder: Path, photo: Path) -> Path:
    """A run whose cost board has every cost column, each with a spread (wider than 1,400 px), and one grid."""
    from shelfsight.bench.leaderboard import COST_METRICS

    rows = [{"model": "efficientnet_lite0", "family": "supervised", "dataset": "shop", "protocol": "test-train",
             "strategy": "pretrained", "metric": "mMP@5", "mean": 0.6, "std": 0.0, "n": 1}]
    rows += [{"model": "efficientnet_lite0", "family": "supervised", "dataset": "shop", "protocol": "cost",
              "strategy": "pretrained", "metric": metric, "mean": 12345678.9 + i, "std": 1234.5, "n": 3}
             for i, metric in enumerate(COST_METRICS)]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    example = {"query": "q1", "query_path": str(photo), "query_key": "red",
               "neighbours": [{"id": f"g{i}", "path": str(photo), "key": f"label-{i}", "score": 0.9 - i / 100,
                               "relevant": i < 2} for i in range(5)]}
    cell = {"cell": {"model": "efficientnet_lite0", "dataset": "shop", "strategy": "pretrained", "seed": 0},
            "status": "ok", "family": "supervised", "metrics": {}, "costs": {}, "error": None,
            "details": {"test-train": {"examples": [example]}}}
    (folder / "cells").mkdir()
    (folder / "cells" / "a.json").write_text(json.dumps(cell))
    return folder


def test_wide_tables_scroll_and_grid_labels_show_without_hover(tmp_path: Path, browser: Any) -> None:
    from conftest import gradient

    photo = tmp_path / "photo.jpg"
    gradient(120, 90).save(photo, quality=90)
    files = write_report(_wide_run(tmp_path / "run", photo), log_mlflow=False)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(files.html.resolve().as_uri(), wait_until="load")
        wrapper = "table.leaderboard[data-protocol='cost']"
        box = page.eval_on_selector(wrapper, """t => { const w = t.parentElement; const r = w.getBoundingClientRect();
            return {cls: w.className, overflow: getComputedStyle(w).overflowX, scroll: w.scrollWidth,
                    client: w.clientWidth, right: r.right}; }""")
        assert box["cls"] == "scroll" and box["overflow"] == "auto"
        assert box["scroll"] > box["client"] and box["right"] <= 1400  # wider than its column: it scrolls
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # the page itself does not overflow
        last = page.eval_on_selector(wrapper, """t => { const w = t.parentElement; w.scrollLeft = w.scrollWidth;
            const cells = t.querySelectorAll('tr:first-child th');
            return [cells[cells.length - 1].getBoundingClientRect().right, w.getBoundingClientRect().right]; }""")
        assert last[0] <= last[1] + 1  # scrolled to its end, the last column is whole inside the wrapper
        captions = page.locator("#retrieval-examples .cap")
        assert captions.count() == 5
        for i in range(5):
            caption = captions.nth(i)
            assert caption.is_visible() and caption.inner_text().split() == [f"label-{i}", f"{0.9 - i / 100:.3f}"]
            size = caption.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
            assert size >= 10
    finally:
        page.close()
