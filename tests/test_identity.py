"""What a cell's key sees: the catalogue's labels, splits and photo bytes, the scoring code's version; cell ids that
cannot collide; duplicate calibrations found by the model's identity, not its name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shelfsight.backbones import load_backbone
from shelfsight.bench import load_config, run_bench
from shelfsight.bench.config import ConfigError
from shelfsight.bench.identity import (
    SCORING_DIGEST,
    SCORING_VERSION,
    describe_change,
    scoring_code_digest,
    scoring_files,
)
from shelfsight.bench.results import CellResult, ResultStore
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.catalog.types import IDENTITY_FIELDS
from shelfsight.duplicates.calibration import (
    CalibrationError,
    calibrated_threshold,
    default_path,
    find_calibration,
    save_calibration,
)
from shelfsight.duplicates.run import resolve_threshold
from shelfsight.embeddings import digests as digests_module
from shelfsight.embeddings import embed_catalog
from shelfsight.embeddings.digests import DigestMemo

SMALL = {"name": "efficientnet_lite0", "preprocess": {"input_size": 64}, "alias": "lite"}
CLASSES = {"banana": "train/Fruit/Banana", "milk": "train/Packages/Milk/Arla-Standard-Milk",
           "carrot": "train/Vegetables/Carrots"}


# ------------------------------------------------------------------------------------------------ catalogue
def _items(root: Path) -> tuple[CatalogItem, ...]:
    return tuple(CatalogItem(f"p{k}", root / f"p{k}.jpg", label=f"c{k % 2}", split="train" if k < 3 else "test",
                             product_id=f"sku{k}", coarse_label="food", group=f"seller{k % 3}") for k in range(4))


def test_catalog_identity_has_a_part_per_field_and_ignores_where_the_catalogue_lies(tmp_path: Path) -> None:
    # metadata (extra manifest columns) is served, never read by a number
    assert {f.name for f in fields(CatalogItem)} == {"item_id", "image_path", "metadata", *IDENTITY_FIELDS.values()}, \
        "a new CatalogItem field must enter Catalog.identity (IDENTITY_FIELDS)"
    base = Catalog("shop", tmp_path / "a", _items(tmp_path / "a"))
    before = base.identity()
    assert set(before) == {"items", *IDENTITY_FIELDS}
    assert Catalog("shop", tmp_path / "b", _items(tmp_path / "b")).identity() == before  # a moved catalogue
    first = base.items[0]
    for change, part in ((dict(label="c9"), "labels"), (dict(split="test"), "splits"),
                         (dict(product_id="sku9"), "product_ids"), (dict(coarse_label=None), "coarse_labels"),
                         (dict(image_path=tmp_path / "a" / "other.jpg"), "items")):
        after = Catalog("shop", base.root, (replace(first, **change), *base.items[1:])).identity()
        assert {k for k in before if before[k] != after[k]} == {part}, change
    # a label "None" is not a missing coarse label
    as_text = Catalog("shop", base.root, (replace(first, coarse_label="None"), *base.items[1:])).identity()
    no_value = Catalog("shop", base.root, (replace(first, coarse_label=None), *base.items[1:])).identity()
    assert as_text["coarse_labels"] != no_value["coarse_labels"]


# ------------------------------------------------------------------------------------------------ photo bytes
def _same_size_replacement(original: Path, other: Path) -> bytes:
    """``other``'s JPEG padded after its end marker to ``original``'s size: other pixels, same byte count."""
    data, size = other.read_bytes(), original.stat().st_size
    assert len(data) < size, "pick a smaller photo to replace a larger one"
    return data + b"\0" * (size - len(data))


def _rewrite_keeping_size_and_mtime(path: Path, content: bytes) -> None:
    stat = path.stat()
    time.sleep(0.05)  # past one tick of the file system's clock, as any real edit is
    with open(path, "r+b") as handle:  # in place: same inode
        handle.write(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = path.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def test_digest_memo_sees_a_photo_rewritten_with_equal_size_and_mtime(grocery_root: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    photos = sorted((grocery_root / "grocery-store" / "dataset" / CLASSES["banana"]).glob("*.jpg"), key=os.path.getsize)
    small, large = photos[0], photos[-1]
    target = tmp_path / "photo.jpg"
    shutil.copyfile(large, target)
    reads: list[str] = []
    real_digest = digests_module.file_digest

    def counted(path: str) -> str:
        reads.append(path)
        return real_digest(path)

    monkeypatch.setattr(digests_module, "file_digest", counted)

    memo = DigestMemo(tmp_path / "cache")
    assert memo.digests([target]) == [hashlib.sha256(large.read_bytes()).hexdigest()]
    assert memo.digests([target]) and len(reads) == 2  # changed < RACY_SECONDS ago: not trusted yet
    monkeypatch.setattr(digests_module, "RACY_SECONDS", 0.0)
    memo.digests([target])
    assert memo.digests([target]) and len(reads) == 3  # remembered now: the second call read nothing

    replacement = _same_size_replacement(large, small)
    _rewrite_keeping_size_and_mtime(target, replacement)
    assert memo.digests([target]) == [hashlib.sha256(replacement).hexdigest()] and len(reads) == 4

    memo.digests([target])
    assert len(reads) == 4
    assert DigestMemo(tmp_path / "cache", rehash=True).digests([target]) and len(reads) == 5
    monkeypatch.setenv("SHELFSIGHT_REHASH", "1")
    assert DigestMemo(tmp_path / "cache").digests([target]) and len(reads) == 6


# ------------------------------------------------------------------------------------------------ a real bench
def _shop(grocery_root: Path, folder: Path) -> Path:
    """A manifest catalogue of 3 real classes, 4 train and 3 test photos each, copied under ``folder``."""
    rows = []
    for label, source in CLASSES.items():
        for k, photo in enumerate(sorted((grocery_root / "grocery-store" / "dataset" / source).glob("*.jpg"))[:7]):
            target = folder / "photos" / label / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
            rows.append({"id": photo.stem, "path": f"photos/{label}/{photo.name}", "label": label,
                         "split": "train" if k < 4 else "test"})
    manifest = folder / "shop.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _config(shop: Path, depot: Path) -> dict[str, Any]:
    return {"name": "identity", "models": [SMALL], "strategies": ["pretrained", "ncm"],
            "datasets": [{"name": "shop", "source": str(shop)}, {"name": "depot", "source": str(depot)}],
            "index": {"backend": "exact"}, "retrieval": {"k": 20}, "tracking": {"enabled": False},
            "embedding": {"num_workers": 0, "runtime": "torch"}, "stats": {"bootstrap": 100, "permutations": 100}}


def _edit(manifest: Path, item: str, **values: str) -> None:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for column, value in values.items():
        table.loc[table["id"] == item, column] = value
    table.to_csv(manifest, index=False)


SHOP_CELLS = ["lite__shop__ncm__seed0", "lite__shop__pretrained"]
DEPOT_CELLS = ["lite__depot__ncm__seed0", "lite__depot__pretrained"]


@pytest.fixture
def bench(grocery_root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(shop manifest, depot manifest, run folder) after a first run: depot lists the same photos from its own
    folder, so an edit of the shop must leave its cells alone."""
    shop, depot = _shop(grocery_root, tmp_path / "shop"), _shop(grocery_root, tmp_path / "depot")
    run_dir = tmp_path / "run"
    first = run_bench(load_config(_config(shop, depot)), run_dir, progress=False)
    assert first.failed == [] and sorted(first.computed) == sorted(SHOP_CELLS + DEPOT_CELLS)
    return shop, depot, run_dir


def _scores(run_dir: Path, cell_id: str) -> pd.DataFrame:
    result = CellResult.from_json((run_dir / "cells" / f"{cell_id}.json").read_text())
    scores = ResultStore(run_dir).per_query(result.cell)
    assert scores is not None
    return scores


def test_a_relabel_recomputes_the_cells_of_its_dataset_and_says_labels_changed(bench: tuple[Path, Path, Path]) -> None:
    shop, depot, run_dir = bench
    query = sorted(pd.read_csv(shop).query("label == 'banana' and split == 'test'")["id"])[0]
    before = _scores(run_dir, "lite__shop__pretrained").set_index(["protocol", "query"])
    _edit(shop, query, label="carrot")
    summary = run_bench(load_config(_config(shop, depot)), run_dir, progress=False)
    assert sorted(summary.computed) == SHOP_CELLS and sorted(summary.reused) == DEPOT_CELLS
    assert {summary.reasons[c] for c in SHOP_CELLS} == {"inputs changed: dataset.labels changed"}
    after = _scores(run_dir, "lite__shop__pretrained").set_index(["protocol", "query"])
    key = ("test-train", query)
    assert after.loc[key, "R@1"] != before.loc[key, "R@1"] or after.loc[key, "MAP"] != before.loc[key, "MAP"]
    ncm = CellResult.from_json((run_dir / "cells" / "lite__shop__ncm__seed0.json").read_text())
    classes = ncm.details["confusion"]["classes"]
    classified = _scores(run_dir, ncm.cell.cell_id).query("protocol == 'classification'").set_index("query")
    assert classes[int(classified.loc[query, "y_true"])] == "carrot"  # the new label is scored, not the stored one
    record = CellResult.from_json((run_dir / "cells" / "lite__shop__pretrained.json").read_text())
    assert record.inputs["dataset"]["labels"] == load_catalog(str(shop)).identity()["labels"]
    assert record.inputs["scoring_version"] == SCORING_VERSION


def test_a_resplit_recomputes_and_says_splits_changed(bench: tuple[Path, Path, Path]) -> None:
    shop, depot, run_dir = bench
    moved = sorted(pd.read_csv(shop).query("split == 'train'")["id"])[0]
    _edit(shop, moved, split="test")
    summary = run_bench(load_config(_config(shop, depot)), run_dir, progress=False)
    assert sorted(summary.computed) == SHOP_CELLS and sorted(summary.reused) == DEPOT_CELLS
    assert {summary.reasons[c] for c in SHOP_CELLS} == {"inputs changed: dataset.splits changed"}
    queries = set(_scores(run_dir, "lite__shop__pretrained").query("protocol == 'test-train'")["query"])
    assert moved in queries and len(queries) == 10  # 3 classes x 3 test photos, and the moved one


def test_a_photo_replaced_with_equal_size_and_mtime_recomputes_with_a_new_vector(
        bench: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    shop, depot, run_dir = bench
    monkeypatch.setattr(digests_module, "RACY_SECONDS", 0.0)  # the memo trusts every stat, as it would a day later
    run_bench(load_config(_config(shop, depot)), run_dir, progress=False)  # remembers each photo's digest
    catalog = load_catalog(str(shop))
    backbone = load_backbone(SMALL["name"], preprocess=SMALL["preprocess"])
    old = embed_catalog(catalog, backbone, num_workers=0, runtime="torch", progress=False)
    by_size = sorted((i for i in catalog if i.label == "milk"), key=lambda i: i.image_path.stat().st_size)
    donor, target = by_size[0], by_size[-1]
    _rewrite_keeping_size_and_mtime(target.image_path, _same_size_replacement(target.image_path, donor.image_path))

    summary = run_bench(load_config(_config(shop, depot)), run_dir, progress=False)
    assert sorted(summary.computed) == SHOP_CELLS and sorted(summary.reused) == DEPOT_CELLS
    assert {summary.reasons[c] for c in SHOP_CELLS} == {"inputs changed: dataset.photos changed"}
    new = embed_catalog(catalog, backbone, num_workers=0, runtime="torch", progress=False)
    row = {item_id: k for k, item_id in enumerate(new.ids)}
    assert not np.allclose(old.vectors[row[target.item_id]], new.vectors[row[target.item_id]], atol=1e-3)
    np.testing.assert_allclose(new.vectors[row[target.item_id]], new.vectors[row[donor.item_id]], atol=1e-5)


# ------------------------------------------------------------------------------------------------ cell ids
@pytest.mark.parametrize(("models", "datasets", "named"), [
    (["lite:a", "lite-a"], ["shop"], ["'lite:a'", "'lite-a'"]),
    (["a__b", "a"], ["c", "b__c"], ["model 'a__b' on dataset 'c'", "model 'a' on dataset 'b__c'"]),
    (["Lite", "lite"], ["shop"], ["'Lite'", "'lite'"]),
])
def test_labels_whose_cells_share_a_file_are_refused_at_load(models: list[str], datasets: list[str],
                                                              named: list[str]) -> None:
    config = {"models": [{"name": "efficientnet_lite0", "alias": m} for m in models],
              "datasets": [{"name": d, "source": f"{d}.csv"} for d in datasets]}
    with pytest.raises(ConfigError, match="would share cell files") as error:
        load_config(config)
    assert all(part in str(error.value) for part in named), str(error.value)
    config["models"][1]["alias"] = "other"
    config["datasets"] = [{"name": d, "source": f"{d}.csv"} for d in ("c", "shop")]
    assert [m.label for m in load_config(config).models] == [models[0], "other"]


def test_one_backbone_twice_without_an_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="two models labelled 'efficientnet_lite0'"):
        load_config({"models": ["efficientnet_lite0", {"name": "efficientnet_lite0", "preprocess": {"input_size": 96}}],
                     "datasets": ["grocery-store"]})


# ------------------------------------------------------------------------------------------------ scoring code
def test_the_scoring_version_moves_with_the_scoring_code() -> None:
    current = scoring_code_digest()
    assert current == SCORING_DIGEST, (
        "the scoring code (bench.identity.SCORING_MODULES) changed: raise SCORING_VERSION in "
        "src/shelfsight/bench/identity.py if a number a cell stores can change (stored cells are then recomputed), "
        f"then record the digest with `python scripts/scoring_digest.py --write` (now {current})")


PLAIN = "K = 1\n\n\ndef _probe(x, y=2):\n    z = x + y\n    return z * K\n"
DOCUMENTED = ('K = 1\n"""Why K is 1."""\n\n\n# a comment\ndef _probe(x: int, y: int = 2) -> int:\n'
              '    """What it does."""\n\n    z = x + y  # the sum\n    return z * K\n')
CHANGED = "K = 1\n\n\ndef _probe(x, y=3):\n    z = x + y\n    return z * K\n"


def test_the_scoring_digest_ignores_docstrings_comments_and_annotations_only(tmp_path: Path) -> None:
    package = Path(scoring_files()[0]).resolve().parents[1]
    for path in scoring_files():
        target = tmp_path / path.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert scoring_code_digest(tmp_path) == scoring_code_digest()
    evaluate = tmp_path / "bench" / "evaluate.py"
    source = evaluate.read_text()
    found = {}
    for name, tail in (("plain", PLAIN), ("documented", DOCUMENTED), ("changed", CHANGED)):
        evaluate.write_text(source + "\n\n" + tail)
        found[name] = scoring_code_digest(tmp_path)
    assert found["plain"] == found["documented"] != found["changed"]
    assert found["plain"] != scoring_code_digest()
    (tmp_path / "bench" / "strategies" / "new_strategy.py").write_text(PLAIN)  # a new module is seen by its glob
    evaluate.write_text(source)
    assert scoring_code_digest(tmp_path) != scoring_code_digest()


def test_a_changed_key_names_what_changed() -> None:
    old = {"dataset": {"labels": "3fa2c1d0e9b8a7f6e5d4", "name": "shop"}, "scoring_version": 3}
    new = {"dataset": {"labels": "9bc1d0e9b8a7f6e5d4c3", "name": "shop"}, "scoring_version": 4}
    assert describe_change(old, new) == "dataset.labels changed; scoring_version 3 -> 4"
    assert describe_change({"dataset": {"name": "shop"}}, {"dataset": {"name": "shop", "photos": "ab" * 10}}) \
        == f"dataset.photos (none) -> {'ab' * 10}"


# ------------------------------------------------------------------------------------------------ calibration
def _calibration(identity: dict[str, Any]) -> dict[str, Any]:
    curve = {"threshold": [0.9, 0.95], "precision": [0.8, 0.97], "recall": [0.9, 0.5]}
    return {"model": "efficientnet_lite0", "model_identity": json.loads(json.dumps(identity, default=str)),
            "methods": {"embedding": {"curve": curve}}}


def test_a_calibration_is_found_by_the_model_identity_not_its_name() -> None:
    at_64 = load_backbone("efficientnet_lite0", preprocess={"input_size": 64})
    at_96 = load_backbone("efficientnet_lite0", preprocess={"input_size": 96})
    assert default_path("efficientnet_lite0", at_64.cache_identity()) != default_path("efficientnet_lite0",
                                                                                      at_96.cache_identity())
    save_calibration(_calibration(at_64.cache_identity()), default_path("efficientnet_lite0", at_64.cache_identity()))
    choice = resolve_threshold(at_64, None, 0.95)
    assert choice.value == 0.95 and default_path("efficientnet_lite0", at_64.cache_identity()).name in choice.source
    with pytest.raises(CalibrationError, match="no calibration result"):
        resolve_threshold(at_96, None, 0.95)  # same name, another embedding: its own file, which is absent
    with pytest.raises(CalibrationError, match=r"different preprocess: preprocess=.*'input_size': 64.* then"):
        calibrated_threshold(_calibration(at_64.cache_identity()), 0.95, identity=at_96.cache_identity())

    with pytest.raises(CalibrationError, match="records no model identity"):
        calibrated_threshold({**_calibration(at_64.cache_identity()), "model_identity": None}, 0.95,
                             identity=at_64.cache_identity())

    legacy = default_path("efficientnet_lite0")  # the name-only file older versions wrote
    save_calibration(_calibration(at_96.cache_identity()), legacy)
    assert find_calibration("efficientnet_lite0", at_96.cache_identity()) == legacy
    assert find_calibration("efficientnet_lite0", at_64.cache_identity()) == default_path(
        "efficientnet_lite0", at_64.cache_identity())
