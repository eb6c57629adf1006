"""A team's own manifest, used as a new user would (issue 27): `--image-root` on `datasets check`, a hint when
the paths lack the files' extension, extra columns kept as metadata and returned by the service, placeholder
labels flagged, ids relative to the image root, and `--group` filling each item's group."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import gradient
from shelfsight.catalog import load_catalog, load_manifest
from shelfsight.catalog.check import doubtful_labels
from shelfsight.cli import app
from shelfsight.errors import CatalogError

LOCAL = "http://localhost"
"""TestClient's default Host is not on the service's default allow-list; localhost is."""


def _photos(folder: Path, n: int = 6) -> list[Path]:
    """``n`` small distinct JPEGs in ``folder``/photos."""
    (folder / "photos").mkdir(parents=True)
    paths = [folder / "photos" / f"p{k}.jpg" for k in range(n)]
    for k, path in enumerate(paths):
        gradient(64, 48, seed=k).save(path, quality=90)
    return paths


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _clothing_rows(names: list[str]) -> list[dict[str, str]]:
    """The issue's catalogue in miniature: image, label, sender_id, kids (two sellers, a 'Not sure' label)."""
    labels = ["shirt", "shirt", "Not sure", "pants", "Not sure", "Skip"]
    return [{"image": name, "label": labels[k % 6], "sender_id": str(100 + k % 2), "kids": "False" if k else ""}
            for k, name in enumerate(names)]


def test_datasets_check_takes_image_root_and_reports_the_columns(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "store")
    manifest = _manifest(tmp_path / "lists" / "images.csv", _clothing_rows([f"photos/{p.name}" for p in photos]))
    runner = CliRunner()
    without = runner.invoke(app, ["datasets", "check", str(manifest)])
    assert without.exit_code == 1 and "pass --image-root DIR" in without.output
    found = runner.invoke(app, ["datasets", "check", str(manifest), "--image-root", str(tmp_path / "store")])
    assert found.exit_code == 0, found.output
    assert "every listed image is present and decodes" in found.output
    text = " ".join(found.output.split())
    assert "kept as metadata (ignored by the bench, returned by the service): sender_id, kids" in text
    assert "'Not sure' (2), 'Skip' (1)" in text and "3 photo(s) have labels that look like placeholders" in text
    grouped = runner.invoke(app, ["datasets", "check", str(manifest), "--image-root", str(tmp_path / "store"),
                                  "--group", "sender_id"])
    assert grouped.exit_code == 0 and "groups: column 'sender_id', 2 distinct" in " ".join(grouped.output.split())


def test_paths_without_the_files_extension_get_the_fix_that_works(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    manifest = _manifest(tmp_path / "images.csv", _clothing_rows([f"photos/{p.stem}" for p in photos]))
    with pytest.raises(CatalogError, match=r"6 of the first 6 image paths do not exist, but 6 of them do with "
                                           r"'\.jpg' added .*the 'image' column lacks the files' extension") as error:
        load_manifest(manifest)
    fix = re.search(r'python -c "(.+?)"', str(error.value))
    assert fix is not None
    subprocess.run([sys.executable, "-c", fix.group(1)], check=True, timeout=60)
    fixed = load_manifest(tmp_path / "images-fixed.csv")
    assert [item.image_path for item in fixed] == photos


def test_a_root_without_the_photos_names_the_option_that_exists(tmp_path: Path) -> None:
    _photos(tmp_path / "store")
    manifest = _manifest(tmp_path / "images.csv", [{"path": "photos/p0.jpg", "label": "a"}])
    with pytest.raises(CatalogError, match=r"none of the first 1 image paths exist.*the manifest folder.*"
                                           r"--image-root DIR .*image_root: DIR"):
        load_manifest(manifest)
    assert load_manifest(manifest, image_root=tmp_path / "store").items[0].image_path.is_file()


def test_placeholder_labels_are_flagged_with_counts_not_dropped(tmp_path: Path) -> None:
    photos = _photos(tmp_path, 9)
    labels = ["shirt", "Not sure", "not_sure", "Skip", "?", "N/A", "other", "Others.", "notebook"]
    catalog = load_manifest(_manifest(tmp_path / "m.csv", [{"path": str(p), "label": label}
                                                            for p, label in zip(photos, labels, strict=True)]))
    assert len(catalog) == 9
    assert doubtful_labels(catalog) == (("?", 1), ("N/A", 1), ("Not sure", 1), ("Others.", 1), ("Skip", 1),
                                        ("not_sure", 1), ("other", 1))


def test_ids_are_relative_to_the_image_root_and_never_absolute(tmp_path: Path) -> None:
    inside = _photos(tmp_path / "shop")
    outside = _photos(tmp_path / "elsewhere", 2)
    rows = [{"path": str(inside[0]), "label": "a"},  # absolute, inside the manifest's folder
            {"path": "photos/p1.jpg", "label": "a"},
            {"path": "./photos/../photos/p2.jpg", "label": "b"},
            {"path": "photos/p3.jpg", "label": "b", "id": "sku-3"},  # an id given is kept
            {"path": str(outside[0]), "label": "c"},  # absolute, outside
            {"path": "../elsewhere/photos/p1.jpg", "label": "c"}]  # relative, outside
    catalog = load_manifest(_manifest(tmp_path / "shop" / "m.csv", rows))
    assert catalog.ids == ["photos/p0.jpg", "photos/p1.jpg", "photos/p2.jpg", "sku-3", "p0.jpg", "p1.jpg"]
    assert catalog.items[5].image_path == outside[1]
    assert not any(Path(i).is_absolute() or ".." in i.split("/") for i in catalog.ids)


def test_group_option_fills_each_items_group(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    rows = [{**row, "group": f"shoot-{k // 3}"} for k, row in enumerate(_clothing_rows([str(p) for p in photos]))]
    manifest = _manifest(tmp_path / "m.csv", rows)
    by_default = load_catalog(manifest)
    assert [i.group for i in by_default] == ["shoot-0"] * 3 + ["shoot-1"] * 3
    assert by_default.items[0].metadata == (("sender_id", "100"), ("kids", ""), ("group", "shoot-0"))
    by_seller = load_catalog(manifest, group="Sender_ID")
    assert [i.group for i in by_seller] == ["100", "101"] * 3
    assert {i.group for i in load_catalog(manifest, group="none")} == {None}
    with pytest.raises(CatalogError, match=r"no column 'seller' to take the groups from.*'sender_id'"):
        load_catalog(manifest, group="seller")
    with pytest.raises(CatalogError, match=r"group column cannot be 'label'"):
        load_catalog(manifest, group="label")
    with pytest.raises(CatalogError, match=r"names a column of a manifest"):
        load_catalog(tmp_path / "photos", group="sender_id")


def test_extra_columns_reach_the_service_with_each_hit(grocery_root: Path, tmp_path: Path) -> None:
    from shelfsight.serve import ServeSettings, create_app

    train = sorted((grocery_root / "grocery-store" / "dataset" / "train").rglob("*.jpg"))[::7][:6]
    photos = tmp_path / "shop"
    photos.mkdir()
    for k, source in enumerate(train):
        shutil.copy(source, photos / f"{k}.jpg")
    rows = [{"image": f"{k}.jpg", "label": source.parent.name, "sender_id": f"seller-{k % 2}",
             "kids": str(k == 3)} for k, source in enumerate(train)]
    manifest = _manifest(photos / "images.csv", rows)
    result = CliRunner().invoke(app, ["index", "--model", "efficientnet_lite0", "--catalog", str(manifest),
                                      "--index-dir", str(tmp_path / "idx"), "--no-onnx", "--workers", "0",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    with TestClient(create_app(ServeSettings(index_dir=tmp_path / "idx", encoder="torch")), base_url=LOCAL) as client:
        found = client.post("/search", files={"image": ("q.jpg", (photos / "3.jpg").read_bytes(), "image/jpeg")},
                            params={"k": 6})
        item = client.get("/items/0.jpg")
    assert found.status_code == 200, found.text
    hits = found.json()["results"]
    assert hits[0]["id"] == "3.jpg" and hits[0]["score"] > 0.99  # the photo itself, by its relative id
    assert hits[0]["metadata"] == {"sender_id": "seller-1", "kids": "True"}
    assert {hit["id"]: hit["metadata"]["sender_id"] for hit in hits} == {
        f"{k}.jpg": f"seller-{k % 2}" for k in range(6)}
    assert item.json()["metadata"] == {"sender_id": "seller-0", "kids": "False"}


def test_run_says_which_labels_look_like_placeholders_before_anything_else(tmp_path: Path) -> None:
    photos = _photos(tmp_path, 3)
    manifest = _manifest(tmp_path / "photos" / "m.csv", [
        {"path": p.name, "label": label} for p, label in zip(photos, ["Not sure", "Not sure", "shirt"], strict=True)])
    result = CliRunner().invoke(app, ["run", str(manifest), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, CatalogError)  # one class to split: stops right after the check
    text = " ".join(result.output.split())
    assert "labels to check: 2 photo(s) have labels that look like placeholders, taken as classes: 'Not sure' (2)" \
        in text and "t[~t['label'].isin(['Not sure'])]" in text


def test_runs_config_keeps_the_image_root_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from shelfsight.zero_config import auto_config

    photos = _photos(tmp_path / "store", 8)
    _manifest(tmp_path / "lists" / "m.csv", [{"path": f"photos/{p.name}", "label": "ab"[k % 2],
                                              "split": "train" if k < 4 else "test"} for k, p in enumerate(photos)])
    monkeypatch.chdir(tmp_path)  # the manifest named relative to the working folder, as a user types it
    config = auto_config("lists/m.csv", tmp_path / "run", console=Console(file=None, quiet=True),
                         image_root=str(tmp_path / "store"))
    [dataset] = config["datasets"]
    assert dataset["image_root"] == str(tmp_path / "store")
    assert len(load_catalog(dataset["source"], image_root=dataset["image_root"])) == 8
