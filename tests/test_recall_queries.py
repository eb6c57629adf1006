"""``index.recall_queries``: how many queries the vector database answers per protocol for its recall row. It is
validated, moves ``details.index_recall_queries`` and the cell key (the default keeps stored keys), 0 makes no
index at all, the plan's estimate follows it; and a user catalogue's derived protocols (``test-train``) get
collection names a Milvus server accepts (issue 32: the 100k bench on the server failed on the hyphen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shelfsight.bench import ConfigError, ResultStore, load_config, run_bench
from shelfsight.bench.config import IndexConfig
from shelfsight.bench.estimate import EXACT_FLOPS, RANK_SECONDS, ProtocolLoad, engine_warning, scoring_seconds
from shelfsight.bench.evaluate import RECALL_QUERIES
from shelfsight.bench.index_factory import milvus_name
from shelfsight.embeddings.vectors_file import write_vectors

CLASSES, PER_CLASS = 4, 10  # splits per class: 6 train, 1 val, 3 test -> 12 queries, 24 gallery items


def _catalogue(folder: Path) -> tuple[Path, Path]:
    """A manifest of 40 items with tiny photos of their own colour (never decoded: a vectors model reads the
    file) and their vectors: class centres plus noise, so the ranking is neither perfect nor random."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(CLASSES, 16))
    rows, vectors = [], []
    for number in range(CLASSES * PER_CLASS):
        label, rank = number % CLASSES, number // CLASSES
        path = folder / "photos" / f"p{number}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2), (number, 0, 0)).save(path)
        rows.append({"id": f"i{number}", "path": f"photos/p{number}.png", "label": f"c{label}",
                     "split": "train" if rank < 6 else "val" if rank == 6 else "test"})
        vectors.append(centres[label] + 3.0 * rng.normal(size=16))
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, write_vectors(folder / "vectors.npz", [r["id"] for r in rows], np.array(vectors))


def _bench(folder: Path, run: Path, index: dict[str, Any]) -> dict[str, Any]:
    """One pretrained cell on the catalogue: its stored record as a dict."""
    manifest, vectors = _catalogue(folder)
    config = load_config({"name": "t", "models": [{"name": "vectors", "source": str(vectors), "alias": "v"}],
                          "datasets": [{"name": "shop", "source": str(manifest)}], "strategies": ["pretrained"],
                          "index": index, "retrieval": {"k": 10}, "tracking": {"enabled": False},
                          "stats": {"bootstrap": 100, "permutations": 100}})
    summary = run_bench(config, run, progress=False)
    assert summary.failed == [], summary
    (result,) = ResultStore(run).load_all()
    return {"metrics": result.metrics["test-train"], "details": result.details["test-train"], "key": result.key,
            "index": result.inputs["index"], "computed": summary.computed}


def test_the_setting_is_validated_with_a_clear_error() -> None:
    base = {"models": ["x"], "datasets": ["d"]}
    assert load_config(base).index.recall_queries == RECALL_QUERIES == 2000
    assert load_config({**base, "index": {"recall_queries": 0}}).index.recall_queries == 0
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(ConfigError, match=r"index\.recall_queries: .*a whole number of queries >= 0 "
                                              r"\(default 2000; 0 skips the index"):
            load_config({**base, "index": {"recall_queries": bad}})


def test_the_sample_size_moves_the_details_and_the_key_and_zero_makes_no_index(tmp_path: Path) -> None:
    lite = {"backend": "milvus-lite", "type": "FLAT"}
    default = _bench(tmp_path / "a", tmp_path / "run", lite)
    assert default["details"]["queries"] == 12 and default["details"]["index_recall_queries"] == 12  # all: < 2000
    assert default["index"] == {"backend": "milvus-lite", "type": "FLAT", "params": {}}  # stored keys unchanged
    assert default["metrics"]["index_recall@10"] == 1.0  # FLAT is exact
    sampled = _bench(tmp_path / "a", tmp_path / "run", {**lite, "recall_queries": 5})  # same run folder
    assert sampled["details"]["index_recall_queries"] == 5 and sampled["index"]["recall_queries"] == 5
    assert sampled["key"] != default["key"] and sampled["computed"] == ["v__shop__pretrained"]  # recomputed
    assert sampled["metrics"] == default["metrics"]  # FLAT: the recall of 5 queries is 1.0 too, the rest is exact
    none = _bench(tmp_path / "a", tmp_path / "none", {**lite, "recall_queries": 0})
    assert none["details"]["index_recall_queries"] == 0 and "index_recall@10" not in none["metrics"]
    assert none["metrics"] == {k: v for k, v in default["metrics"].items() if not k.startswith("index_recall")}
    assert not (tmp_path / "none" / "milvus.db").exists()  # no index was made
    assert 0 < default["metrics"]["R@1"] < 1 and 0 < default["metrics"]["MAP@R"] < 1


def test_the_plan_estimates_the_configured_sample() -> None:
    sop = ProtocolLoad("sop", 60_502, 60_502)
    exact = 2 * 60_502 * 60_502 * 1280 / EXACT_FLOPS + RANK_SECONDS * 60_502
    lite_500 = 60_502 / 1_100 + 500 * (7.5e-3 + 28e-9 * 60_502)  # insert, then 500 queries at k=100
    assert scoring_seconds(sop, IndexConfig(recall_queries=500), depth=100, dim=1280)[0] == pytest.approx(
        exact + lite_500, rel=1e-12)
    assert scoring_seconds(sop, IndexConfig(recall_queries=0), depth=100, dim=1280)[0] == pytest.approx(exact)
    huge = ProtocolLoad("shelf", 10, 250_000)
    assert engine_warning("d", huge, IndexConfig()) is not None  # Milvus Lite past its measured comfort
    assert engine_warning("d", huge, IndexConfig(recall_queries=0)) is None  # no index: nothing to move


def test_collection_names_a_server_accepts() -> None:
    assert milvus_name("c_v__shop__pretrained_test-train") == "c_v__shop__pretrained_test_train"
    assert milvus_name("c_a.b/leave-one-out") == "c_a_b_leave_one_out" and len(milvus_name("x" * 400)) == 255


@pytest.mark.slow  # the session's Milvus server (30-45 s to start when no other test has): one tiny cell
def test_a_user_catalogue_cell_runs_on_the_server_as_on_milvus_lite(milvus_standalone: str, tmp_path: Path) -> None:
    lite = _bench(tmp_path / "a", tmp_path / "lite", {"backend": "milvus-lite", "type": "FLAT"})
    server = _bench(tmp_path / "a", tmp_path / "server", {"backend": "milvus", "uri": milvus_standalone, "type": "FLAT",
                                                          "recall_queries": 7})
    assert server["details"]["index_recall_queries"] == 7 and server["metrics"]["index_recall@10"] == 1.0
    assert server["metrics"] == lite["metrics"]  # the protocol `test-train` made its collection on the server


@pytest.mark.slow  # the session's Milvus server: one tiny cell on an IVF_FLAT collection
def test_a_small_gallery_on_a_server_reports_no_index_recall_for_an_exact_search(milvus_standalone: str,
                                                                                  tmp_path: Path) -> None:
    lite = _bench(tmp_path / "a", tmp_path / "lite", {"backend": "milvus-lite", "type": "FLAT"})
    server = _bench(tmp_path / "a", tmp_path / "ivf", {"backend": "milvus", "uri": milvus_standalone,
                                                       "type": "IVF_FLAT"})
    # a 2.3 server leaves a segment under 1,024 rows unindexed: its answer is exact search's, not the index's
    assert "index_recall@10" not in server["metrics"] and "1,024 rows" in server["details"]["index_recall_skipped"]
    assert server["metrics"] == {k: v for k, v in lite["metrics"].items() if not k.startswith("index_recall")}
