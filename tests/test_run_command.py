"""``shelfsight run PATH``: a folder of one's own photos to a report and a one-line answer, with no config;
the same path as ``make demo`` (plan, overall progress, cells, report)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shelfsight.catalog import load_catalog
from shelfsight.cli import app
from shelfsight.demo import demo_config_text
from shelfsight.zero_config import auto_config


def _shop(grocery_root: Path, target: Path, per_class: int = 8) -> Path:
    """A folder of class sub-folders made of real shop photos (no splits: the run makes one)."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    counts: dict[str, int] = {}
    for item in catalog.items:
        if counts.get(item.label, 0) >= per_class:
            continue
        counts[item.label] = counts.get(item.label, 0) + 1
        (target / item.label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(item.image_path, target / item.label / item.image_path.name)
        if len(counts) == 4 and all(c >= per_class for c in counts.values()):
            break
    return target


@pytest.mark.slow
def test_run_on_a_folder_of_photos_writes_the_report_and_says_which_embedding(grocery_root: Path,
                                                                             tmp_path: Path) -> None:
    shop = _shop(grocery_root, tmp_path / "my-shop")
    run_dir = tmp_path / "runs" / "my-shop"
    result = CliRunner().invoke(app, ["run", str(shop), "--run-dir", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "has no train/test split" in out and (run_dir / "catalogue.csv").is_file()
    assert "plan" in out and "to compute" in out and "estimated" in out  # the plan before the first cell
    assert "cells in" in out and "computed" in out  # the whole run's time at its end
    assert "Which embedding for visual search? on my-shop, efficientnet_lite" in out
    assert "Which embedding for auto-tagging? on my-shop, efficientnet_lite" in out
    assert (run_dir / "report" / "report.html").is_file() and "done in" in out
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert html.index("Which embedding for visual search?") < html.index("<table")  # the answer before any table
    table = pd.read_csv(run_dir / "results.csv")
    assert set(table["dataset"]) == {"my-shop"}  # the display name, not the manifest's path
    assert {"pretrained", "knn", "ncm", "linear", "toptune"} <= set(table["strategy"])


def test_auto_config_keeps_a_catalogue_s_own_splits_and_sizes_the_search(grocery_root: Path,
                                                                        tmp_path: Path) -> None:
    from rich.console import Console

    from shelfsight.bench import load_config

    folder = tmp_path / "shop"
    _shop(grocery_root, folder / "train", per_class=6)
    _shop(grocery_root, folder / "test", per_class=2)
    raw = auto_config(folder, tmp_path / "run", console=Console(quiet=True))
    config = load_config(raw)
    (dataset,) = config.datasets
    assert dataset.name == "shop" and dataset.source == str(folder.resolve())
    assert not (tmp_path / "run" / "catalogue.csv").exists()  # train/ and test/ folders are its splits
    assert config.section("toptune").trials == 4  # 24 training photos: the small search
    assert "toptune" in [s.name for s in config.strategies]
    assert [m.name for m in config.models] == ["efficientnet_lite0", "efficientnet_lite2"]


def test_the_demo_configs_name_only_strategies_and_settings_that_exist() -> None:
    """The shipped configs validate against the registry, so they cannot drift from the strategies."""
    import yaml

    from shelfsight.bench import load_config, strategies

    for name in ("demo", "demo-full", "label-budgets"):
        raw = yaml.safe_load(demo_config_text(name))
        config = load_config(raw)
        assert {s.name for s in config.strategies} <= set(strategies.names())
        assert config.label_budgets is not None and "all" in config.label_budgets.budgets
        if name != "label-budgets":
            assert {"pretrained", "linear", "knn", "toptune", "finetune", "crosstune"} <= {s.name for s in
                                                                                           config.strategies}
    demo = load_config(yaml.safe_load(demo_config_text("demo")))
    assert demo.section("finetune").train_per_class == 8 and demo.section("toptune").trials == 4


def _manifest_with_bad_files(grocery_root: Path, folder: Path) -> Path:
    """Eight real photos (two classes, train and test) plus a missing and a corrupt file."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    rows, counts = [], {}
    for item in catalog.items:
        if counts.get(item.label, 0) < 4 and (len(counts) < 2 or item.label in counts):
            counts[item.label] = counts.get(item.label, 0) + 1
            rows.append({"path": str(item.image_path), "label": item.label,
                         "split": "test" if counts[item.label] == 4 else "train"})
    folder.mkdir(parents=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows += [{"path": str(folder / "gone.jpg"), "label": rows[0]["label"], "split": "train"},
             {"path": str(folder / "broken.jpg"), "label": rows[0]["label"], "split": "train"}]
    manifest = folder / "shop.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_photos_that_cannot_be_used_are_said_listed_and_reported(grocery_root: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from shelfsight.bench import load_config, run_bench
    from shelfsight.report import write_report

    manifest = _manifest_with_bad_files(grocery_root, tmp_path / "data")
    config = load_config({"name": "skips", "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}}],
                          "datasets": [{"name": "shop", "source": str(manifest)}], "strategies": ["pretrained"]})
    console = Console(record=True, width=200)
    summary = run_bench(config, tmp_path / "run", console=console, progress=False)
    assert summary.failed == []
    skipped = pd.read_csv(tmp_path / "run" / "skipped.csv")
    reasons = {Path(p).name: r for p, r in zip(skipped["path"], skipped["reason"], strict=True)}
    assert set(reasons) == {"broken.jpg", "gone.jpg"} and reasons["gone.jpg"] == "file not found"
    assert reasons["broken.jpg"].startswith("corrupt or truncated image data")
    assert set(skipped["dataset"]) == {"shop"} and set(skipped["backbone"]) == {"efficientnet_lite0"}
    text = console.export_text()
    assert "2 photo(s) could not be used and were left out" in text and "gone.jpg" in text
    assert "plan" in text and "1 cells" in text
    html = write_report(tmp_path / "run", log_mlflow=False).html.read_text(encoding="utf-8")
    assert "Photos left out" in html and "file not found" in html


def test_a_dataset_that_cannot_load_stops_the_bench_up_front_with_one_message(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "broken", "models": ["efficientnet_lite0"],
                                      "datasets": [str(tmp_path / "nowhere.csv")],
                                      "strategies": ["pretrained", "knn", "linear"]}))
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "shelfsight.cli", "bench", str(config), "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count("cannot be loaded") == 1 and "nowhere.csv" in output and "Traceback" not in output
    assert not (tmp_path / "run" / "cells").exists() or not list((tmp_path / "run" / "cells").iterdir())


@pytest.mark.slow
def test_dedupe_exclude_in_a_bench_config_leaves_the_leaking_queries_out(grocery_root: Path,
                                                                         tmp_path: Path) -> None:
    """A test photo re-posted byte for byte in train: counted with ``warn``, left out with ``exclude``, and the
    setting is part of the cell key."""
    import json

    from shelfsight.bench import load_config, run_bench

    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "test"))
    rows = [{"path": str(i.image_path), "label": i.label, "split": split}
            for split in ("train", "test") for i in catalog.select_splits(split).per_class(3).items]
    leaked = next(r for r in rows if r["split"] == "test")
    copy = tmp_path / "reposted.jpg"
    shutil.copy2(leaked["path"], copy)
    rows.append({"path": str(copy), "label": leaked["label"], "split": "train"})
    manifest = tmp_path / "shop.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    base = {"name": "dedupe", "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}}],
            "datasets": [{"name": "shop", "source": str(manifest)}], "strategies": ["pretrained"]}
    queries = sum(1 for r in rows if r["split"] == "test")

    def protocol_details(action: str) -> dict[str, object]:
        run_dir = tmp_path / action
        summary = run_bench(load_config({**base, "dedupe": action}), run_dir, progress=False)
        assert summary.failed == []
        cell = json.loads((run_dir / "cells" / "efficientnet_lite0__shop__pretrained.json").read_text())
        return dict(cell["details"]["test-train"])

    warned = protocol_details("warn")
    excluded = protocol_details("exclude")
    leaked_id = next(i.item_id for i in load_catalog(manifest) if i.image_path == Path(leaked["path"]).resolve())
    assert not Path(leaked_id).is_absolute()  # ids are relative to the photos' folder, never a server path
    assert warned["duplicates"]["leaking_ids"] == excluded["duplicates"]["leaking_ids"] == [leaked_id]  # type: ignore[index]
    assert (warned["duplicates"]["action"], excluded["duplicates"]["action"]) == ("warn", "exclude")  # type: ignore[index]
    assert warned["queries"] == queries
    per_query = pd.read_parquet(tmp_path / "exclude" / "cells" / "efficientnet_lite0__shop__pretrained.queries.parquet")
    assert len(per_query) == queries - 1 and leaked_id not in set(per_query["query"])


def test_the_overall_line_corrects_its_estimate_with_the_cells_that_finished() -> None:
    import time

    from rich.console import Console
    from rich.progress import Progress

    from shelfsight.bench.run_progress import RunProgress, duration

    progress = RunProgress(None, [10.0, 10.0, 20.0, 0.0])
    assert progress.remaining() == 40.0  # nothing finished: the plan's own estimate
    progress.done(0, 20.0)  # the first cell took twice its estimate
    assert progress.remaining() == 60.0  # (10 + 20 + 0) x 2
    progress.done(3, 0.0)  # a reused cell (estimate 0) changes nothing
    assert progress.remaining() == 60.0
    progress.done(1, 5.0)  # 25 s against 20 s estimated so far
    assert progress.remaining() == 25.0
    with Progress(console=Console(quiet=True)) as display:
        shown = RunProgress(display, [60.0, 60.0])
        shown.done(0, 30.0)
        task = display.tasks[0]
        assert task.fields["count"] == "1/2 cells"
        assert 29.0 < task.fields["eta"] - time.monotonic() <= 30.0  # counted down from 30 s (60 s x 0.5)
    assert (duration(5), duration(65), duration(3725)) == ("5 s", "1 min 05 s", "1 h 02 min")
