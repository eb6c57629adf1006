"""Groups (issue 27): a seller's photos never on both sides of a split, and a query never counting its own
seller's photos; ``run`` finds the seller column by itself and writes a config ``bench`` takes back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from shelfsight.adapt.splits import labelled_splits
from shelfsight.bench.config import config_to_json, load_config
from shelfsight.bench.evaluate import evaluate_protocol
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.embeddings import Embeddings
from shelfsight.errors import CatalogError
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex
from shelfsight.zero_config import config_for, detect_group, with_groups


def _sellers(grocery_root: Path, per_seller: int = 3) -> Catalog:
    """Real shop photos (no split) as a marketplace would list them: consecutive photos of a class come from
    one seller (``sender_id``), beside a per-photo unique id, a renamed copy of the label and a yes/no flag."""
    photos = load_catalog("grocery-store", data_dir=grocery_root, splits=("train",))
    items = []
    for k, item in enumerate(sorted(photos.items, key=lambda i: (i.label, i.item_id))):
        seller = f"{item.label[:3]}-{k // per_seller:04d}"
        metadata = (("sender_id", seller), ("photo_uid", f"u{k:05d}"), ("department", f"dept-{item.label}"),
                    ("kids", "yes" if k % 2 else "no"))
        items.append(replace(item, split="all", metadata=metadata))
    return Catalog("sellers", photos.root, tuple(items))


def test_detection_picks_the_seller_column_not_a_unique_id_the_label_or_a_flag(grocery_root: Path) -> None:
    catalog = _sellers(grocery_root)
    found = detect_group(catalog)
    assert found is not None and found.name == "sender_id"
    sellers = {dict(item.metadata)["sender_id"] for item in catalog}
    assert found.groups == len(sellers) and found.median == 3.0
    without = replace(catalog, items=tuple(
        replace(item, metadata=tuple((n, v) for n, v in item.metadata if n != "sender_id")) for item in catalog))
    assert detect_group(without) is None  # photo_uid (one per row), department (the label), kids (a flag): none


def test_group_none_turns_groups_off_and_an_unknown_column_is_named(grocery_root: Path, tmp_path: Path) -> None:
    import pandas as pd

    from shelfsight.zero_config import auto_config

    catalog = _sellers(grocery_root)
    rows = [{"path": str(item.image_path), "label": item.label, "split": "test" if k % 3 else "train",
             "group": dict(item.metadata)["sender_id"]} for k, item in enumerate(catalog)]
    pd.DataFrame(rows).to_csv(tmp_path / "own.csv", index=False)
    assert all(item.group for item in load_catalog(tmp_path / "own.csv"))  # a `group` column is read as groups
    raw = auto_config(tmp_path / "own.csv", tmp_path / "run", console=Console(quiet=True), group="none")
    reloaded = load_catalog(raw["datasets"][0]["source"])  # what the bench loads: its own split, no groups
    assert all(item.group is None for item in reloaded)
    assert [item.split for item in reloaded] == [row["split"] for row in rows]
    console = Console(record=True, width=400)
    assert all(item.group is None for item in with_groups(catalog, "none", console, "shop.csv"))
    with pytest.raises(CatalogError, match=r"no column 'seller'.*sender_id"):
        with_groups(catalog, "seller", console, "shop.csv")
    chosen = with_groups(catalog, "Kids", console, "shop.csv")  # a named column is used as named, case aside
    assert {item.group for item in chosen} == {"yes", "no"}


def test_run_split_keeps_each_seller_on_one_side_and_reloads_the_same(grocery_root: Path, tmp_path: Path) -> None:
    catalog = _sellers(grocery_root)
    console = Console(record=True, width=400)
    raw = config_for(catalog, tmp_path / "shop.csv", tmp_path / "run", console=console, seed=3)
    said = " ".join(console.export_text().split())
    sellers = len({dict(item.metadata)["sender_id"] for item in catalog})
    assert f"grouping by 'sender_id' ({sellers} groups, median 3 photos each)" in said
    assert "no group on both sides of the split" in said and "never counts its own group" in said
    manifest = Path(raw["datasets"][0]["source"])
    assert manifest == (tmp_path / "run" / "catalogue.csv").resolve()
    written = load_catalog(manifest)
    sides: dict[str | None, set[str]] = {}
    for item in written:
        sides.setdefault(item.group, set()).add(item.split)
    assert None not in sides and len(sides) == sellers
    assert all(len(found) == 1 for found in sides.values())  # no seller on both sides
    share = np.mean([item.split == "test" for item in written])
    assert 0.2 <= share <= 0.4, share
    assert {i.label for i in written if i.split == "train"} == {i.label for i in written}  # every class learns
    original = {item.item_id: item for item in catalog}
    for item in written:  # the extra columns and the photo come back as they were
        kept = {name: value for name, value in item.metadata if name != "group"}  # the group column is one too
        assert kept == dict(original[item.item_id].metadata) and item.group == kept["sender_id"]
        assert item.image_path == original[item.item_id].image_path and item.label == original[item.item_id].label
    again = config_for(catalog, tmp_path / "shop.csv", tmp_path / "again", console=Console(quiet=True), seed=3)
    assert Path(again["datasets"][0]["source"]).read_text() == manifest.read_text()  # seeded


def test_validation_carve_out_takes_whole_groups(grocery_root: Path) -> None:
    catalog = _sellers(grocery_root, per_seller=2)
    items = tuple(replace(item, split="test" if k % 5 == 0 else "train", group=dict(item.metadata)["sender_id"])
                  for k, item in enumerate(catalog))
    grouped = replace(catalog, items=items)
    splits = labelled_splits("shop", grouped, seed=0)
    train_groups = {item.group for item in splits.train}
    val_groups = {item.group for item in splits.val}
    assert val_groups and not train_groups & val_groups
    assert 0.04 <= len(splits.val) / (len(splits.val) + len(splits.train)) <= 0.2
    assert set(splits.classes) == {item.label for item in items if item.split == "train"}  # no class lost
    assert labelled_splits("shop", grouped, seed=0).val == splits.val
    assert labelled_splits("shop", grouped, seed=1).val != splits.val


def test_relevant_counts_leave_out_the_query_s_own_group_by_hand() -> None:
    from shelfsight.metrics import count_relevant

    # query 0 (a, seller s1) keeps the one "a" of another seller; query 1 has no seller: all three "a";
    # query 2's only "b" is its own seller's
    counted = count_relevant(["a", "a", "b"], ["a", "a", "a", "b"], same_set=False, query_groups=["s1", None, "s2"],
                             gallery_groups=["s1", "s1", "s2", "s2"])
    assert counted.tolist() == [1, 3, 0]
    # leave-one-out: the query itself is one of its group's, counted once; an item without a group loses itself
    same = count_relevant(["a", "a", "a", "b"], ["a", "a", "a", "b"], same_set=True,
                          query_groups=["s1", "s1", None, "s1"], gallery_groups=["s1", "s1", None, "s1"])
    assert same.tolist() == [1, 1, 2, 0]


def test_exact_search_skips_a_set_of_ids_per_query_and_still_returns_k() -> None:
    index = ExactIndex()
    index.add(["x0", "x1", "x2", "x3"], np.eye(4, dtype=np.float32)[[0, 0, 1, 2]] + np.float32(0.01))
    query = np.eye(4, dtype=np.float32)[[0, 0]]
    found = index.search(query, 2, exclude_ids=[["x0", "x1"], "x0"])
    assert found.ids == [["x2", "x3"], ["x1", "x2"]]


def _clustered(n_groups: int = 12, per_group: int = 4, dim: int = 8, seed: int = 0) -> tuple[Catalog, Embeddings]:
    """Items whose vectors sit near their group's centre (same background), labels crossing groups: without the
    exclusion most nearest neighbours are of the query's own group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    items, vectors = [], []
    for g in range(n_groups):
        for j in range(per_group):
            items.append(CatalogItem(f"p{g:02d}{j}", Path(f"/nowhere/p{g:02d}{j}.jpg"), label=f"c{(g + j) % 3}",
                                     split="all", group=f"s{g:02d}" if g < n_groups - 2 else None))
            vectors.append(centres[g] + 0.3 * rng.normal(size=dim) + 0.5 * np.eye(dim)[(g + j) % 3])
    array = np.asarray(vectors, dtype=np.float32)
    array /= np.linalg.norm(array, axis=1, keepdims=True)
    catalog = Catalog("clustered", Path("/nowhere"), tuple(items))
    return catalog, Embeddings(ids=catalog.ids, vectors=array, skipped=[], key="test")


def _brute_force(catalog: Catalog, vectors: np.ndarray, exclude_group: bool) -> dict[str, np.ndarray]:
    """Leave-one-out mMP@5 and R@1 by full sorting, a query's own group (and itself) removed first."""
    labels = np.array([item.label for item in catalog])
    groups = [item.group for item in catalog]
    mmp, r1 = [], []
    for q in range(len(catalog)):
        others = [j for j in range(len(catalog)) if j != q and not (
            exclude_group and groups[q] is not None and groups[j] == groups[q])]
        ranked = sorted(others, key=lambda j: (-float(vectors[q] @ vectors[j]), j))
        hits = labels[ranked] == labels[q]
        total = int(hits.sum())
        mmp.append(hits[:5].sum() / min(5, total) if total else np.nan)
        r1.append(float(hits[0]) if total else np.nan)
    return {"mMP@5": np.array(mmp), "R@1": np.array(r1)}


@pytest.mark.parametrize("policy", ["exclude", "keep"])
def test_leave_one_out_never_ranks_or_counts_the_query_s_own_group(policy: str) -> None:
    catalog, embeddings = _clustered()
    protocol = RetrievalProtocol("leave-one-out", ("all",), ("all",))
    result = evaluate_protocol(protocol, catalog, embeddings, make_index=lambda name, dim: ExactIndex(),
                               collection="groups", k=10, ks=(1, 5), full_map=False,
                               same_group=policy)  # type: ignore[arg-type]
    expected = _brute_force(catalog, embeddings.vectors, exclude_group=policy == "exclude")
    for name in ("mMP@5", "R@1"):
        np.testing.assert_allclose(result.per_query[name].to_numpy(), expected[name], equal_nan=True)
        assert result.metrics[name] == pytest.approx(np.nanmean(expected[name]))
    groups = [item.group for item in catalog]
    scores = embeddings.vectors @ embeddings.vectors.T
    np.fill_diagonal(scores, -np.inf)
    nearest = scores.argmax(axis=1)
    top1_own = np.mean([g is not None and groups[n] == g for g, n in zip(groups, nearest, strict=True)])
    assert top1_own > 0.5  # the planted backgrounds do dominate: the exclusion is what the numbers test
    details = result.details["same_group"]
    assert details == {"policy": policy, "groups": 10, "queries_with_own_group": 40, "own_group_items": 40 * 3,
                       "own_group_relevant": details["own_group_relevant"], "top1_own_group": top1_own}
    labels = [item.label for item in catalog]
    assert details["own_group_relevant"] == sum(1 for a in range(48) for b in range(48) if a != b and groups[a]
                                                and groups[a] == groups[b] and labels[a] == labels[b])
    if policy == "exclude":
        own = {item.item_id: item.group for item in catalog}
        for example in result.details["examples"]:  # type: ignore[attr-defined]
            assert all(own[n["id"]] is None or own[n["id"]] != own[example["query"]] for n in example["neighbours"])


def test_test_to_train_leaves_out_a_straddling_group_from_milvus_too(tmp_path: Path) -> None:
    """A catalogue's own split may put a seller on both sides: the database's answer is asked deep enough
    that dropping the query's seller still leaves k neighbours, and the full-ranking MAP agrees."""
    from shelfsight.search import open_index

    catalog, embeddings = _clustered(seed=1)
    catalog = replace(catalog, items=tuple(replace(item, split="test" if k % 4 == 0 else "train")
                                           for k, item in enumerate(catalog)))
    protocol = RetrievalProtocol("test-train", ("test",), ("train",))
    result = evaluate_protocol(protocol, catalog, embeddings, collection="straddle", k=5, ks=(1, 5),
                               make_index=lambda name, dim: open_index("milvus-lite", path=tmp_path / "m.db",
                                                                       collection=name, dim=dim))
    groups = {item.item_id: item.group for item in catalog}
    labels = {item.item_id: item.label for item in catalog}
    test = [item.item_id for item in catalog if item.split == "test"]
    train = [item.item_id for item in catalog if item.split == "train"]
    rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}
    ap = []
    for q in test:
        allowed = [g for g in train if groups[q] is None or groups[g] != groups[q]]
        ranked = sorted(allowed, key=lambda g: (-float(embeddings.vectors[rows[q]] @ embeddings.vectors[rows[g]]),
                                                train.index(g)))
        hits = np.array([labels[g] == labels[q] for g in ranked])
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap.append(float((precision * hits).sum() / hits.sum()) if hits.any() else np.nan)
    np.testing.assert_allclose(result.per_query["MAP"].to_numpy(), ap, rtol=1e-5, equal_nan=True)
    assert result.metrics["index_recall@5"] == pytest.approx(1.0)
    assert result.details["same_group"]["own_group_items"] > 0  # type: ignore[index]


def test_the_config_run_writes_reruns_with_bench_plan(grocery_root: Path, tmp_path: Path) -> None:
    """From a manifest with a seller column, as ``run`` does: load, detect, split, write; the config the runner
    stores (``config_to_json``) is read back by ``shelfsight bench CONFIG --plan``."""
    import pandas as pd

    from shelfsight.cli import app
    from shelfsight.zero_config import auto_config

    rows = [{"path": str(item.image_path), "label": item.label, **dict(item.metadata)} for item in
            _sellers(grocery_root)]
    pd.DataFrame(rows).to_csv(tmp_path / "shop.csv", index=False)
    console = Console(record=True, width=400)
    raw = auto_config(tmp_path / "shop.csv", tmp_path / "run", console=console)
    assert "grouping by 'sender_id'" in console.export_text()
    assert any(item.group for item in load_catalog(raw["datasets"][0]["source"]))
    written = tmp_path / "run" / "config.json"
    written.write_text(config_to_json(load_config(raw)))  # what run_bench writes into the run folder
    assert load_config(json.loads(written.read_text())) == load_config(raw)
    result = CliRunner().invoke(app, ["bench", str(written), "--plan", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "to compute" in " ".join(result.output.split())


def test_the_report_states_what_was_done_about_each_group() -> None:
    from types import SimpleNamespace

    from shelfsight.report.sections import groups

    def cell(strategy: str, model: str, same: dict[str, object]) -> SimpleNamespace:
        return SimpleNamespace(cell=SimpleNamespace(strategy=strategy, dataset="clothes", model=model),
                               details={"leave-one-out": {"same_group": same}, "confusion": [1, 2]})

    excluded = {"policy": "exclude", "groups": 812, "queries_with_own_group": 1200, "own_group_items": 4310,
                "own_group_relevant": 900, "top1_own_group": 0.446}
    split = {**excluded, "queries_with_own_group": 0, "own_group_items": 0, "own_group_relevant": 0}
    run = SimpleNamespace(cells=[cell("pretrained", "lite0", excluded), cell("linear", "lite0", split),
                                 cell("pretrained", "lite2", {**excluded, "top1_own_group": 0.4})])
    rows = groups.group_rows(run)  # type: ignore[arg-type]
    assert [(r["model"], r["top1_own_group"]) for r in rows] == [("lite0", 0.446), ("lite2", 0.4)]  # baseline only
    section = groups.build(run)  # type: ignore[arg-type]
    assert section is not None and section.answers == [
        "On clothes leave-one-out, photos are grouped (812 groups): a query never counts its own group's photos: "
        "4,310 same-group gallery photos of 1,200 queries are left out of their rankings; with them in, 45% of "
        "queries would have their top-1 neighbour in their own group (lite0)."]
    assert "44.6%" in section.markdown and "40.0%" in section.html
    assert groups.sentence({**split, "dataset": "d", "protocol": "test-train", "model": "m"}).endswith(
        "no group is on both sides, so no query can retrieve its own group's photos.")
    assert groups.build(SimpleNamespace(cells=[cell("linear", "lite0", split)])) is None  # type: ignore[arg-type]
