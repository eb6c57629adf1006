"""The command line: the same API underneath, clear messages instead of stack traces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from shelfsight.cli import app

runner = CliRunner()


def test_models_lists_registered_backbones_with_offline_status() -> None:
    result = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("efficientnet_lite0", "dinov2_vit_b14", "siglip_vit_b16", "marqo_ecommerce_b"):
        assert name in result.output
    lite_row = next(line for line in result.output.splitlines() if "efficientnet_lite0" in line)
    assert "packaged" in lite_row and "1280" in lite_row


def test_embed_writes_vectors_and_skip_report(messy_catalog: Path, tmp_path: Path) -> None:
    output = tmp_path / "vectors.npz"
    result = runner.invoke(app, ["embed", "-m", "efficientnet_lite0", "-d", str(messy_catalog), "--workers", "0",
                                 "--quiet", "--output", str(output)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "skip report" in result.output
    data = np.load(output)
    assert data["vectors"].shape == (12, 1280)
    assert "shoes/shoes_0.jpg" in data["ids"].tolist()


def test_user_errors_exit_2_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "shelfsight.cli", "embed", "-m", "efficientnet_lite", "-d", str(tmp_path)]
    wide = {**os.environ, "COLUMNS": "250"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=wide)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stdout + finished.stderr
    assert "efficientnet_lite0" in finished.stdout  # suggests the close name
    missing = subprocess.run([sys.executable, "-m", "shelfsight.cli", "embed", "-m", "efficientnet_lite0", "-d",
                              "grocery-store", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                             timeout=120, env=wide)
    assert missing.returncode == 2 and "Grocery Store Dataset not found" in missing.stdout


def test_demo_leaves_out_datasets_that_are_absent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without the Grocery Store Dataset the demo runs on Fashion-MNIST alone and says why."""
    import io

    from rich.console import Console

    from conftest import FASHION_DEBIAN
    from shelfsight import demo

    if not (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").is_file():
        import pytest

        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    seen = {}

    def fake_run_bench(config, target, console):  # type: ignore[no-untyped-def]
        seen["config"] = config
        from shelfsight.bench import BenchSummary

        return BenchSummary(run_dir=target)

    monkeypatch.setattr(demo, "run_bench", fake_run_bench)
    monkeypatch.setattr(demo, "print_leaderboard", lambda target, console: target / "leaderboard.md")
    output = io.StringIO()
    demo.run_demo(data_dir=tmp_path, run_dir=tmp_path / "run", console=Console(file=output, width=200))
    assert [d.name for d in seen["config"].datasets] == ["fashion-mnist"]
    assert [m.label for m in seen["config"].models] == [
        "efficientnet_lite0", "efficientnet_lite2", "efficientnet_lite0-random-init"]
    assert "left out grocery-store: Grocery Store Dataset not found" in output.getvalue()
