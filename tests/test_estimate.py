"""The plan's scoring estimate from protocol sizes and the engine's measured rates, and its warning when a gallery
is past what Milvus Lite handles well here (``bench/estimate.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from shelfsight.bench import estimate, load_config
from shelfsight.bench.config import IndexConfig
from shelfsight.bench.estimate import (
    ENGINE_RATES,
    EXACT_FLOPS,
    LITE_GALLERY_LIMIT,
    RANK_SECONDS,
    ProtocolLoad,
    engine_warning,
    protocol_sizes,
    scoring_seconds,
)
from shelfsight.catalog import DATASETS, load_catalog

SOP = ProtocolLoad("sop", 60_502, 60_502)


def test_a_sop_sized_protocol_costs_the_exact_products_plus_lite_s_insert_and_sampled_search() -> None:
    seconds, work = scoring_seconds(SOP, IndexConfig(), depth=100, dim=1280)
    exact = 2 * 60_502 * 60_502 * 1280 / EXACT_FLOPS + RANK_SECONDS * 60_502  # ~156 s + 12 s
    lite = 60_502 / 1_100 + 2_000 * (7.5e-3 + 28e-9 * 60_502)  # insert ~55 s, 2,000 queries ~18 s
    assert seconds == pytest.approx(exact + lite, rel=1e-12)
    assert 200 < seconds < 300 and work == "sop: 60,502 x 60,502"  # issue 32: a SOP cell under 5 minutes
    shallow = scoring_seconds(SOP, IndexConfig(), depth=10, dim=1280)[0]  # Lite's per-hit work shrinks with k
    assert seconds - shallow == pytest.approx(2_000 * 7.5e-3 * 0.9)


def test_the_server_and_exact_backends_use_their_own_rates() -> None:
    hnsw = IndexConfig(backend="milvus", uri="http://127.0.0.1:19530", type="HNSW")
    rates = ENGINE_RATES[("milvus", "HNSW")]
    exact = 2 * 60_502 * 60_502 * 1280 / EXACT_FLOPS + RANK_SECONDS * 60_502
    expected = exact + 60_502 / rates.insert_rows_per_second + 60_502 / rates.build_rows_per_second + 2_000 * 2.3e-3
    assert scoring_seconds(SOP, hnsw, depth=100, dim=1280)[0] == pytest.approx(expected, rel=1e-12)
    only_exact = scoring_seconds(SOP, IndexConfig(backend="exact"), depth=100, dim=1280)[0]
    assert only_exact == pytest.approx(exact * (1 + 2_000 / 60_502), rel=1e-12)


def test_a_gallery_past_the_measured_threshold_warns_with_the_server_command() -> None:
    assert LITE_GALLERY_LIMIT == 100_000
    assert engine_warning("rp2k", ProtocolLoad("rp2k", 10, LITE_GALLERY_LIMIT), IndexConfig()) is None
    warning = engine_warning("rp2k", ProtocolLoad("shelf", 10, 250_000), IndexConfig())
    assert warning is not None and "rp2k · shelf: a gallery of 250,000 items" in warning
    assert "shelfsight milvus start --data DIR" in warning and "backend: milvus, uri: http://127.0.0.1:" in warning
    server = IndexConfig(backend="milvus", uri="http://127.0.0.1:19530")
    assert engine_warning("rp2k", ProtocolLoad("shelf", 10, 250_000), server) is None


def test_protocol_sizes_count_each_side_of_the_grocery_protocols(grocery_root: Path) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("train", "val", "test", "iconic"))
    sizes = {s.name: s for s in protocol_sizes(DATASETS["grocery-store"].protocols, catalog)}
    splits = {split: sum(item.split == split for item in catalog) for split in ("train", "val", "test", "iconic")}
    assert sizes["fine"] == ProtocolLoad("fine", splits["test"], splits["train"] + splits["val"])
    assert sizes["iconic"] == ProtocolLoad("iconic", splits["test"], splits["iconic"])


def test_the_plan_prints_the_warning_once(grocery_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelfsight.bench.runner import show_plan

    monkeypatch.setattr(estimate, "LITE_GALLERY_LIMIT", 10)  # the fixture's galleries stand in for a large one
    config = load_config({"name": "t", "models": [{"name": "efficientnet_lite0", "preprocess": {"input_size": 64}}],
                          "datasets": [{"name": "grocery-store", "per_class": {"train": 3, "val": 1, "test": 2}}],
                          "strategies": ["pretrained", "knn"], "embedding": {"num_workers": 0},
                          "tracking": {"enabled": False}})
    console = Console(record=True, width=400)
    seconds = show_plan(config, tmp_path / "run", console=console)
    out = console.export_text()
    assert out.count("fine: a gallery of") == 1 and "shelfsight milvus start --data DIR" in out
    assert seconds > 0


class _Sized:
    """What the linear probe's estimate reads of a catalogue: its size and its classes."""

    def __init__(self, items: int, classes: int) -> None:
        self.items, self.classes = items, tuple(range(classes))

    def __len__(self) -> int:
        return self.items


def test_the_linear_probe_estimate_grows_with_the_classes() -> None:
    from types import SimpleNamespace

    from shelfsight.bench.strategies import linear

    def seconds(items: int, classes: int) -> float:
        return sum(part for part, _ in linear.estimate(SimpleNamespace(catalog=_Sized(items, classes))))  # type: ignore[arg-type]

    assert seconds(100_000, 1_000) == pytest.approx(100_000 * (1.4e-3 + 1_000 * 7e-6))
    assert seconds(100_000, 1_000) == pytest.approx(839.0, rel=0.05)  # the 100k bench's probe, measured
    assert seconds(5_502, 81) == pytest.approx(5_502 * 2e-3, rel=0.05)  # the Grocery Store's, as before
