"""The report: a recommendation with a known answer, the Pareto front and gains by hand, and a real
run's report opened in headless Chromium (images decode, links stay in the page, best values match)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shelfsight.bench import load_config, read_table, run_bench
from shelfsight.bench.table import cost_frame
from shelfsight.report import build, load_run, recommend, render_html, render_markdown, write_report
from shelfsight.report.analysis import adaptation_gains, cross_tuning, family_gains, pareto_front
from shelfsight.report.recommend import AUTO_TAGGING, VISUAL_SEARCH, Choice, PairedTest, Tester, describe

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ a results table with a known answer

Values = dict[str, tuple[float, float, int]]


def _rows(dataset: str, protocol: str, model: str, family: str, strategy: str, values: Values) -> list[dict[str, Any]]:
    return [{"model": model, "family": family, "dataset": dataset, "protocol": protocol, "strategy": strategy,
             "metric": metric, "mean": mean, "std": std, "n": n} for metric, (mean, std, n) in values.items()]


def known_table() -> pd.DataFrame:
    """``clip-b`` (contrastive) wins retrieval top-tuned, ``resnet`` (supervised) wins classification
    fine-tuned; ``dino`` is second everywhere. Three seeds, spreads far below the margins."""
    d, rows = "catalogue", []
    retrieval = {  # model -> strategy -> mMP@5 mean
        ("clip-b", "contrastive"): {"pretrained": 0.700, "toptune": 0.812, "finetune": 0.790},
        ("resnet", "supervised"): {"pretrained": 0.500, "toptune": 0.560, "finetune": 0.640},
        ("dino", "self-supervised"): {"pretrained": 0.650, "toptune": 0.700, "finetune": 0.720},
    }
    tagging = {
        ("clip-b", "contrastive"): {"knn": 0.700, "linear": 0.760, "toptune": 0.800, "finetune": 0.850},
        ("resnet", "supervised"): {"knn": 0.720, "linear": 0.790, "toptune": 0.810, "finetune": 0.934},
        ("dino", "self-supervised"): {"knn": 0.760, "linear": 0.780, "toptune": 0.807, "finetune": 0.880},
    }
    seconds = {"pretrained": None, "knn": 0.5, "linear": 4.0, "toptune": 30.0, "finetune": 600.0}
    for (model, family), by_strategy in retrieval.items():
        for strategy, value in by_strategy.items():
            rows += _rows(d, "test-train", model, family, strategy,
                          {"mMP@5": (value, 0.010, 3), "R@1": (value + 0.05, 0.01, 3)})
    for (model, family), by_strategy in tagging.items():
        for strategy, value in by_strategy.items():
            rows += _rows(d, "classification", model, family, strategy,
                          {"accuracy": (value, 0.004, 3), "macro_f1": (value - 0.02, 0.005, 3)})
    for model, family in retrieval:
        for strategy in seconds:
            costs: Values = {"params_m": ({"clip-b": 86.0, "resnet": 25.6, "dino": 86.0}[model], 0.0, 3),
                             "index_bytes": (4e6, 0.0, 3), "extract_images_per_s": (200.0, 5.0, 3)}
            if seconds[strategy] is not None:
                costs["tune_seconds"] = (float(seconds[strategy] or 0.0), 1.0, 3)
            rows += _rows(d, "cost", model, family, strategy, costs)
    return pd.DataFrame(rows)


def _tester(ties: tuple[tuple[str, str], ...] = ()) -> Tester:
    """Paired tests with a known answer: every pair is significantly apart except the ``ties``."""
    tied = [set(pair) for pair in ties]

    def test(dataset: str, protocol: str, metric: str, a: Choice, b: Choice) -> PairedTest:
        difference = a.mean - b.mean
        same = {a.label, b.label} in tied
        return PairedTest(difference, difference - 0.01, difference + 0.01, 0.4 if same else 0.001,
                          0.8 if same else 0.004, not same, "stub")

    return test


def test_recommendation_names_the_dominant_models_with_their_numbers() -> None:
    recs = recommend(known_table(), _tester(ties=(("resnet · toptune", "dino · toptune"),)))
    search = recs.get(VISUAL_SEARCH, "catalogue", "any budget")
    assert search.best is not None and (search.best.model, search.best.strategy) == ("clip-b", "toptune")
    assert search.best.mean == 0.812 and search.best.family == "contrastive"
    assert search.runner_up is not None and search.runner_up.label == "clip-b · finetune"
    assert search.margin == pytest.approx(0.022) and search.decisive is True
    text = describe(search)
    assert "clip-b · toptune (contrastive), test-train mMP@5 0.812 ± 0.010 (n=3, R@1 0.862)" in text
    assert "significantly ahead of clip-b · finetune 0.790 ± 0.010 (n=3): difference +0.022, 95% CI +0.012 to " \
        "+0.032, p=0.001 (Holm 0.004)" in text
    assert "tuning 30 s" in text and "86.0 M parameters" in text

    tagging = recs.get(AUTO_TAGGING, "catalogue", "any budget")
    assert tagging.best is not None and tagging.best.label == "resnet · finetune"
    text = describe(tagging)
    assert "resnet · finetune (supervised), classification accuracy 0.934 ± 0.004 (n=3, macro_f1 0.914)" in text
    assert "ahead of dino · finetune 0.880" in text and "difference +0.054" in text

    # cheaper budgets: no training means the frozen embedding (retrieval) or a kNN vote (tagging)
    assert recs.get(VISUAL_SEARCH, "catalogue", "no training").best.label == "clip-b · pretrained"  # type: ignore[union-attr]
    assert recs.get(AUTO_TAGGING, "catalogue", "no training").best.label == "dino · knn"  # type: ignore[union-attr]
    assert recs.get(AUTO_TAGGING, "catalogue", "head only").best.label == "resnet · toptune"  # type: ignore[union-attr]
    head_only = recs.get(AUTO_TAGGING, "catalogue", "head only")
    assert head_only.decisive is False and "tied within noise with dino · toptune 0.807" in describe(head_only)

    assert len(recs.checks) == 4  # one dataset, four claims
    retrieval, helps, classification, middle = recs.checks
    assert retrieval.verdict == "agree" and "clip-b · toptune 0.812" in retrieval.evidence
    assert helps.verdict == "agree" and "better than pre-trained for 3 of 3 backbones" in helps.evidence
    assert "0.700 → 0.812 (difference +0.112" in helps.evidence
    assert classification.verdict == "agree" and "resnet · finetune 0.934" in classification.evidence
    # clip-b top-tunes above its fine-tune, so top-tuning is no "middle" there; it is for dino and resnet
    assert middle.verdict == "agree" and "holds for 2 of 3 backbones" in middle.evidence
    assert "toptune 0.812 in 30.0 s (a significant gain), finetune 0.790 in 600.0 s" in middle.evidence


def test_guidance_that_the_run_cannot_test_is_not_measured_and_disagreement_is_shown() -> None:
    table = known_table()
    no_finetune = table[table["strategy"] != "finetune"]
    checks = {c.claim: c for c in recommend(no_finetune).checks}
    classification = next(c for claim, c in checks.items() if claim.startswith("Auto-tagging"))
    assert classification.verdict == "not measured" and "no supervised backbone with finetune" in \
        classification.evidence
    middle = next(c for claim, c in checks.items() if claim.startswith("Top-tuning is"))
    assert middle.verdict == "not measured"
    # make the supervised model the best retriever: the contrastive claim is then contradicted, with numbers
    boosted = table.copy()
    mask = (boosted["model"] == "resnet") & (boosted["strategy"] == "finetune") & (boosted["metric"] == "mMP@5")
    boosted.loc[mask, "mean"] = 0.900
    retrieval = recommend(boosted).checks[0]
    assert retrieval.verdict == "disagree"
    assert "best contrastive toptune: clip-b · toptune 0.812" in retrieval.evidence
    assert "below resnet · finetune 0.900" in retrieval.evidence
    assert "+0.088, no paired test (per-query scores missing)" in retrieval.evidence  # no tester: means only
    tied = recommend(boosted, _tester(ties=(("resnet · finetune", "clip-b · toptune"),))).checks[0]
    assert tied.verdict == "tied within noise" and "p=0.4 (Holm 0.8)" in tied.evidence


def test_pareto_front_by_hand() -> None:
    cost = [1.0, 2.0, 3.0, 4.0, 2.5, math.nan]
    quality = [0.5, 0.4, 0.7, 0.7, 0.9, 1.0]
    # cheaper is better: (1, .5) and (2.5, .9) survive; (2, .4), (3, .7), (4, .7) are beaten by (2.5, .9)
    assert pareto_front(cost, quality) == [0, 4]
    # higher is better (images/s): (4, .7) and (2.5, .9); (3, .7) ties (4, .7) on quality but is slower
    assert pareto_front(cost, quality, lower_cost_is_better=False) == [3, 4]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0]  # identical points: the first is kept
    assert pareto_front([], []) == []


def test_adaptation_gains_cost_gaps_and_cross_tuning() -> None:
    table = known_table()
    gains = adaptation_gains(table).set_index(["model", "adaptation"])
    assert gains.loc[("clip-b", "toptune"), "gain"] == pytest.approx(0.112)
    assert gains.loc[("resnet", "finetune"), "gain"] == pytest.approx(0.140)
    assert gains.loc[("resnet", "finetune"), "relative_gain"] == pytest.approx(0.28)
    families = family_gains(adaptation_gains(table)).set_index(["family", "adaptation"])
    assert families.loc[("self-supervised", "finetune"), "mean"] == pytest.approx(0.070)
    assert families.loc[("contrastive", "toptune"), "models"] == 1

    costs = cost_frame(table, "catalogue")
    assert costs.loc[("clip-b", "pretrained"), "tune_seconds"] == 0.0  # trains nothing: zero, not unknown
    assert costs.loc[("clip-b", "finetune"), "tune_seconds"] == 600.0

    cross = pd.concat([table, pd.DataFrame(
        _rows("shop", "test-train", "clip-b", "contrastive", "toptune", {"mMP@5": (0.60, 0, 1)})
        + _rows("shop", "test-train", "clip-b", "contrastive", "toptune@catalogue", {"mMP@5": (0.45, 0, 1)})
        + _rows("catalogue", "test-train", "clip-b", "contrastive", "toptune@shop", {"mMP@5": (0.66, 0, 1)}))])
    matrices = cross_tuning(cross)
    assert list(matrices) == [("clip-b", "toptune")]  # finetune has no cross-tuned cell: no matrix
    matrix = matrices[("clip-b", "toptune")]
    assert matrix.loc["catalogue", "catalogue"] == 0.812 and matrix.loc["shop", "shop"] == 0.60  # the diagonal
    assert matrix.loc["catalogue", "shop"] == 0.45 and matrix.loc["shop", "catalogue"] == 0.66
    recs = recommend(cross)
    assert recs.get(VISUAL_SEARCH, "shop", "head only").best.label == "clip-b · toptune"  # type: ignore[union-attr]


# ------------------------------------------------------------------ rendering, with and without every section

def _synthetic_run(folder: Path, image: Path | None) -> Path:
    """A run folder holding the known table and one cell whose example images are partly missing."""
    folder.mkdir(parents=True)
    known_table().to_csv(folder / "results.csv", index=False)
    missing = str(folder / "gone.jpg")
    examples = [{"query": "q1", "query_path": str(image) if image else missing, "query_key": "a",
                 "neighbours": [{"id": f"g{i}", "path": missing if i % 2 else (str(image) if image else missing),
                                 "key": "a" if i < 2 else "b", "score": 1 - i / 10, "relevant": i < 2}
                                for i in range(5)]}]
    cell = {"cell": {"model": "clip-b", "dataset": "catalogue", "strategy": "toptune", "seed": 0}, "status": "ok",
            "family": "contrastive", "metrics": {}, "costs": {}, "error": None,
            "details": {"test-train": {"examples": examples}}}
    failed = {"cell": {"model": "vit", "dataset": "catalogue", "strategy": "pretrained", "seed": 0},
              "status": "error", "family": "", "metrics": {}, "costs": {}, "details": {},
              "error": "ModelUnavailableError: no weights offline"}
    (folder / "cells").mkdir()
    (folder / "cells" / "a.json").write_text(json.dumps(cell))
    (folder / "cells" / "b.json").write_text(json.dumps(failed))
    return folder


def test_a_partial_run_renders_every_section_or_says_why(tmp_path: Path) -> None:
    run = load_run(_synthetic_run(tmp_path / "run", image=None))
    report = build(run)
    html = render_html(report)
    assert "Not shown: no cross-tuning cells in this run" in html
    assert "Not shown: no classification cell with a confusion matrix" in html  # no cell holds a matrix
    assert "ModelUnavailableError: no weights offline" in html  # the failed cell is listed
    assert report.thumbnails_missing == 1 and "data:image/svg+xml;base64," in html  # placeholder, no crash
    assert len(report.grids) == 1 and report.grids[0].queries[0].rows[0].hits == 2
    assert "src=\"http" not in html and "<script" not in html and "<link" not in html
    markdown = render_markdown(report)
    assert describe(report.recommendations.get(VISUAL_SEARCH, "catalogue", "any budget")) in markdown
    assert "| clip-b | toptune | **0.812 ± 0.010** |" in markdown


def test_a_run_whose_cells_all_failed_still_renders(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    (folder / "cells").mkdir(parents=True)
    pd.DataFrame(columns=["model", "family", "dataset", "protocol", "strategy", "metric", "mean", "std", "n"]).to_csv(
        folder / "results.csv", index=False)
    (folder / "cells" / "a.json").write_text(json.dumps({
        "cell": {"model": "vit", "dataset": "d", "strategy": "pretrained", "seed": 0}, "status": "error",
        "family": "", "metrics": {}, "costs": {}, "details": {}, "error": "ModelUnavailableError: offline"}))
    files = write_report(folder, log_mlflow=False)
    html = files.html.read_text()
    assert "No result to recommend from: no cell finished" in html and "ModelUnavailableError: offline" in html
    assert files.figures == ()
    assert "No result to recommend from" in files.markdown.read_text()


def test_cross_tuning_cells_draw_a_heat_map_and_the_floor_is_its_own_family(tmp_path: Path) -> None:
    import io

    from PIL import Image

    table = pd.concat([known_table(), pd.DataFrame(
        _rows("shop", "test-train", "clip-b", "contrastive", "toptune", {"mMP@5": (0.60, 0, 1)})
        + _rows("shop", "test-train", "clip-b", "contrastive", "toptune@catalogue", {"mMP@5": (0.45, 0, 1)}))])
    folder = tmp_path / "run"
    folder.mkdir()
    table.to_csv(folder / "results.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"name": "x", "models": [
        {"name": "clip-b"}, {"name": "resnet50", "pretrained": False, "alias": "resnet"}, {"name": "dino"}]}))
    run = load_run(folder)
    assert set(run.table.loc[run.table["model"] == "resnet", "family"]) == {"random-init"}
    assert set(run.table.loc[run.table["model"] == "dino", "family"]) == {"self-supervised"}
    report = build(run)
    assert "cross-tuning" not in report.absent and [p.title for p in report.cross_plots] == ["clip-b · toptune"]
    image = Image.open(io.BytesIO(report.cross_plots[0].png))
    assert image.format == "PNG" and image.width > 200 and image.height > 150


def test_report_command_writes_both_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shelfsight.cli import app
    from shelfsight.errors import ShelfsightError

    run = _synthetic_run(tmp_path / "run", image=None)
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out"), "--no-mlflow"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    assert str(tmp_path / "out" / "report.html") in result.output
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) >= 3
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert isinstance(missing.exception, ShelfsightError) and "no results table" in str(missing.exception)


# ------------------------------------------------------------------ a real run in a real browser

SMALL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite0-64"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, grocery_root: Path) -> Iterator[Path]:
    """Two backbones (real weights and the random floor) x pretrained, linear and top-tuning on a
    grocery subset, through Milvus Lite, tracked in MLflow: once per module."""
    folder = tmp_path_factory.mktemp("report-run")
    config = load_config({
        "name": "report-test", "models": [SMALL, {**SMALL, "pretrained": False, "alias": "lite0-64-random"}],
        "datasets": [{"name": "grocery-store", "per_class": {"train": 2, "val": 1, "test": 1}}],
        "strategies": ["pretrained", "linear", "toptune"], "index": {"backend": "milvus-lite", "type": "FLAT"},
        "toptune": {"trials": 1, "trial_epochs": 2, "trial_repeats": 1, "final_max_epochs": 5, "patience": 2},
        "retrieval": {"k": 20}, "embedding": {"num_workers": 0}, "data_dir": str(grocery_root),
    })
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHELFSIGHT_CACHE_DIR", str(folder / "cache"))
        patch.chdir(folder)
        summary = run_bench(config, folder / "run", progress=False)
    assert summary.failed == []
    yield folder / "run"


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("SHELFSIGHT_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser: Any, html: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(html.resolve().as_uri(), wait_until="load")
    return page, requests


def _broken_images(page: Any) -> list[str]:
    return page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                         ".map(i => i.alt)")


def _check_page(page: Any, requests: list[str], html: Path, table: pd.DataFrame, dataset: str,
                columns: tuple[tuple[str, str], ...]) -> None:
    """Every image decodes, nothing is fetched but the page, links stay inside it, best values match the table."""
    assert _broken_images(page) == []
    assert [url for url in requests if not url.startswith("data:")] == [html.resolve().as_uri()]
    hrefs = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    assert hrefs and all(h.startswith("#") for h in hrefs)
    ids = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
    assert {h[1:] for h in hrefs} <= ids
    for protocol, metric in columns:
        selector = (f"table.leaderboard[data-dataset='{dataset}'][data-protocol='{protocol}'] "
                    f"td.best[data-metric='{metric}']")
        marked = {float(v) for v in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.value)")}
        rows = table[(table["dataset"] == dataset) & (table["protocol"] == protocol) & (table["metric"] == metric)]
        assert marked == {float(rows["mean"].max())}


def test_synthetic_report_in_chromium_with_placeholders(tmp_path: Path, browser: Any) -> None:
    from conftest import gradient

    photo = tmp_path / "photo.jpg"
    gradient(120, 90).save(photo, quality=90)
    files = write_report(_synthetic_run(tmp_path / "run", image=photo), log_mlflow=False)
    page, requests = _open(browser, files.html)
    try:
        _check_page(page, requests, files.html, known_table(), "catalogue",
                    (("test-train", "mMP@5"), ("test-train", "R@1"), ("classification", "accuracy")))
        sources = page.eval_on_selector_all("#retrieval-examples img", "els => els.map(e => e.src.split(';')[0])")
        assert sorted(set(sources)) == ["data:image/jpeg", "data:image/svg+xml"]  # the photo, the missing file
        assert "clip-b · toptune" in page.inner_text("#recommendation .headline")
    finally:
        page.close()


@pytest.mark.slow
def test_real_report_opens_offline_in_chromium(real_run: Path, browser: Any) -> None:
    from mlflow.tracking import MlflowClient

    files = write_report(real_run)
    assert files.html == real_run / "report" / "report.html" and files.mlflow_error is None
    page, requests = _open(browser, files.html)
    try:
        page.screenshot(path=str(artifacts_dir() / "report-first-screen.png"))  # the first screen, as a person sees it
        assert page.evaluate("document.images.length") > 8 * 6  # figures and at least one query grid
        _check_page(page, requests, files.html, read_table(real_run), "grocery-store",
                    (("fine", "mMP@5"), ("iconic", "R@1"), ("classification", "accuracy")))
        text = page.inner_text("#recommendation")
        recs = recommend(load_run(real_run).table)
        best = recs.get(VISUAL_SEARCH, "grocery-store", "any budget").best
        assert best is not None and best.model == "lite0-64"  # real ImageNet weights beat the random floor
        assert f"{best.label} (supervised), fine mMP@5 {best.mean:.3f}" in text
        assert page.locator("#retrieval-examples img.hit").count() > 0  # relevant neighbours framed green
        assert page.locator("#confusion img").count() == 1
    finally:
        page.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{real_run / 'mlflow.db'}")
    artifacts = [a.path for a in client.list_artifacts(files.mlflow_run_id, "report")]  # type: ignore[arg-type]
    assert "report/report.html" in artifacts and "report/figures" in artifacts
    again = write_report(real_run)
    assert again.mlflow_run_id == files.mlflow_run_id  # re-rendering replaces, it does not pile up runs
