"""The per-photo cache shared by processes: concurrent writers lose nothing, failures are kept by kind, and the
embedding space changes with the versions of the libraries that compute it.

Concurrency is tested with real processes (``spawn``), released together by a barrier."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import gradient
from shelfsight.backbones import Backbone, load_backbone
from shelfsight.catalog import load_catalog, load_image_folder
from shelfsight.catalog.images import ImageReadError, decode_image
from shelfsight.embeddings import Embeddings, embed_catalog, extract, plan
from shelfsight.embeddings.cache import PERMANENT, TRANSIENT, VectorStore
from shelfsight.embeddings.digests import file_digest
from shelfsight.embeddings.extract import failure_of
from shelfsight.embeddings.runtimes import TorchRuntime
from shelfsight.errors import ImageDecodeError

WRITERS, PARTS, ROWS, DIM = 4, 20, 5, 8
SMALL = {"input_size": 64}
OPTIONS: dict[str, Any] = {"batch_size": 4, "num_workers": 0, "chunk_size": 4, "runtime": "torch", "progress": False}


@pytest.fixture(scope="module")
def small_backbone() -> Backbone:
    """Real EfficientNet-Lite0 weights at a small input size, as in test_embeddings."""
    return load_backbone("efficientnet_lite0", preprocess=SMALL)


def _part(writer: int, index: int) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """The rows writer ``writer`` stores as its ``index``-th part: known digests, seeded vectors, one failure."""
    digests = [hashlib.sha256(f"{writer}/{index}/{row}".encode()).hexdigest() for row in range(ROWS)]
    vectors = np.random.default_rng([writer, index]).standard_normal((ROWS, DIM)).astype(np.float32)
    failed = {hashlib.sha256(f"{writer}/{index}/broken".encode()).hexdigest(): f"not an image ({writer}/{index})"}
    return digests, vectors, failed


def _append_parts(root: str, key: str, writer: int, barrier: Any) -> None:
    """One writer process: wait for the others, then store its parts and note its progress in the manifest."""
    store = VectorStore(Path(root), key)
    barrier.wait(timeout=600)
    for index in range(PARTS):
        digests, vectors, failed = _part(writer, index)
        store.append(digests, vectors, failed)
        store.update_manifest({f"writer-{writer}": index})


def _run_together(target: Callable[..., None], arguments: list[tuple[Any, ...]]) -> None:
    """Start one spawned process per argument tuple (each gets a shared barrier last) and wait for all."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(arguments))
    processes = [context.Process(target=target, args=(*args, barrier)) for args in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_four_processes_appending_at_once_lose_no_vector(tmp_path: Path) -> None:
    key = "ab" + "0" * 62
    _run_together(_append_parts, [(str(tmp_path), key, writer) for writer in range(WRITERS)])
    store = VectorStore(tmp_path, key)
    stored = store.read()
    assert len(store.parts()) == WRITERS * PARTS
    assert len(stored.vectors) == WRITERS * PARTS * ROWS and len(stored.failures) == WRITERS * PARTS
    for writer in range(WRITERS):
        for index in range(PARTS):
            digests, vectors, failed = _part(writer, index)
            assert all(np.array_equal(stored.vectors[d], v) for d, v in zip(digests, vectors, strict=True))
            assert all(stored.failures[d] == reason for d, reason in failed.items())
    manifest = store.read_manifest()
    assert {k: manifest[k] for k in manifest if k.startswith("writer-")} == {
        f"writer-{w}": PARTS - 1 for w in range(WRITERS)}  # no writer's last update overwritten by another's
    assert sorted(p.name for p in store.folder.iterdir() if p.name.startswith(".")) == []  # no temporary left


def _embed_in_process(data_root: str, item_ids: list[str], cache: str, out: str, barrier: Any) -> None:
    """One extraction process: load everything, wait for the other, embed into the shared cache."""
    torch.set_num_threads(1)
    catalog = load_catalog("grocery-store", data_dir=data_root, splits=("val",)).subset(item_ids)
    backbone = load_backbone("efficientnet_lite0", preprocess=SMALL)
    barrier.wait(timeout=600)
    result = embed_catalog(catalog, backbone, cache_dir=cache, **OPTIONS)
    np.savez(out, ids=np.array(result.ids), vectors=result.vectors, computed=result.computed)


def test_two_extractions_sharing_one_cache_store_every_photo(grocery_root: Path, small_backbone: Backbone,
                                                               tmp_path: Path) -> None:
    catalog = load_catalog("grocery-store", data_dir=grocery_root, splits=("val",)).head(30)
    ids = catalog.ids
    halves = [ids[:20], ids[10:]]  # ten photos in both
    outputs = [tmp_path / f"run{k}.npz" for k in range(2)]
    _run_together(_embed_in_process, [(str(grocery_root), half, str(tmp_path / "cache"), str(out))
                                      for half, out in zip(halves, outputs, strict=True)])
    runs = [np.load(out) for out in outputs]
    assert [list(run["ids"]) for run in runs] == halves
    assert 30 <= sum(int(run["computed"]) for run in runs) <= 40  # every photo at least once, none lost
    torch.set_num_threads(1)
    union = embed_catalog(catalog, small_backbone, cache_dir=tmp_path / "cache", **OPTIONS)
    assert union.computed == 0 and union.ids == ids
    by_id = dict(zip(union.ids, union.vectors, strict=True))
    for run in runs:
        np.testing.assert_allclose(np.stack([by_id[i] for i in run["ids"]]), run["vectors"], atol=1e-6)
    fresh = embed_catalog(catalog, small_backbone, use_cache=False, **OPTIONS)
    np.testing.assert_allclose(union.vectors, fresh.vectors, atol=1e-6)
    assert "images_per_second" in _store_of(union).read_manifest()


def _store_of(result: Embeddings) -> VectorStore:
    """The store a cached result was read from (its folder is ROOT/vectors/KEY[:2]/KEY)."""
    assert result.cache_folder is not None
    return VectorStore(result.cache_folder.parents[2], result.cache_folder.name)


def _photos(folder: Path, count: int = 3) -> Path:
    (folder / "goods").mkdir(parents=True)
    for k in range(count):
        gradient(80, 60, seed=k).save(folder / "goods" / f"g{k}.jpg", quality=90)
    return folder


def _counting_decoder(monkeypatch: pytest.MonkeyPatch, fail_once: set[str] | None = None) -> dict[str, int]:
    """Count decode attempts per file name (extraction runs in this process: ``num_workers=0``); a name in
    ``fail_once`` raises MemoryError on its first attempt, as a decode that ran out of memory would."""
    attempts: dict[str, int] = {}

    def decode(path: Any, **kwargs: Any) -> Any:
        name = Path(path).name
        attempts[name] = attempts.get(name, 0) + 1
        if fail_once and name in fail_once and attempts[name] == 1:
            raise MemoryError("cannot allocate the decoded image")
        return decode_image(path, **kwargs)

    monkeypatch.setattr(extract, "decode_image", decode)
    return attempts


def test_a_corrupt_photo_is_remembered_and_never_decoded_again(tmp_path: Path, small_backbone: Backbone,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _photos(tmp_path / "catalogue")
    good = (folder / "goods" / "g0.jpg").read_bytes()
    (folder / "goods" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "goods" / "text.jpg").write_bytes(b"this is not an image")
    attempts = _counting_decoder(monkeypatch)
    first = embed_catalog(load_image_folder(folder), small_backbone, **OPTIONS)
    assert {s.item_id: s.kind for s in first.skipped} == {"goods/text.jpg": PERMANENT, "goods/truncated.jpg": PERMANENT}
    assert attempts == {f"g{k}.jpg": 1 for k in range(3)} | {"truncated.jpg": 1, "text.jpg": 1}
    stored = _store_of(first).read()
    assert set(stored.failures) == {file_digest(folder / "goods" / n) for n in ("truncated.jpg", "text.jpg")}
    again = embed_catalog(load_image_folder(folder), small_backbone, **OPTIONS)
    assert again.computed == 0 and again.skipped == first.skipped
    assert attempts == {f"g{k}.jpg": 1 for k in range(3)} | {"truncated.jpg": 1, "text.jpg": 1}  # nothing re-read


def test_a_transient_failure_is_retried_next_run_and_its_vector_stored(tmp_path: Path, small_backbone: Backbone,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = load_image_folder(_photos(tmp_path / "catalogue"))
    attempts = _counting_decoder(monkeypatch, fail_once={"g1.jpg"})
    first = embed_catalog(catalog, small_backbone, **OPTIONS)
    (skipped,) = first.skipped
    assert (skipped.item_id, skipped.kind) == ("goods/g1.jpg", TRANSIENT) and "MemoryError" in skipped.reason
    assert first.ids == ["goods/g0.jpg", "goods/g2.jpg"]
    assert _store_of(first).read().failures == {}  # never stored
    second = embed_catalog(catalog, small_backbone, **OPTIONS)
    assert second.computed == 1 and attempts["g1.jpg"] == 2 and second.skipped == []
    assert second.ids == catalog.ids
    reference = embed_catalog(catalog, small_backbone, use_cache=False, **OPTIONS)
    np.testing.assert_allclose(second.vectors, reference.vectors, atol=1e-6)
    assert embed_catalog(catalog, small_backbone, **OPTIONS).computed == 0


def test_decode_failures_are_classified_where_they_happen(tmp_path: Path) -> None:
    """Real files: a folder where a photo should be (a read error) is transient; bytes that are no image, or a
    truncated JPEG, are permanent; so are memory and unknown errors transient, and the system's I/O errors."""
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageReadError) as read_error:
        decode_image(tmp_path / "folder.jpg")
    assert failure_of(read_error.value)[0] == TRANSIENT
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    gradient().save(tmp_path / "whole.jpg", quality=90)
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    for name in ("text.jpg", "cut.jpg"):
        with pytest.raises(ImageDecodeError) as decode_error:
            decode_image(tmp_path / name)
        assert not isinstance(decode_error.value, ImageReadError)
        assert failure_of(decode_error.value)[0] == PERMANENT
    assert failure_of(MemoryError())[0] == TRANSIENT
    assert failure_of(OSError(errno.EIO, os.strerror(errno.EIO)))[0] == TRANSIENT
    assert failure_of(ImageReadError("x.jpg", "cannot read file (Input/output error)")) == (
        TRANSIENT, "cannot read file (Input/output error)")


def test_the_ray_decode_task_reports_each_failure_with_its_kind(tmp_path: Path, small_backbone: Backbone) -> None:
    """The Ray engine's decode task (a plain function; no cluster needed) classifies as one process does."""
    from shelfsight.embeddings.ray_engine import _decode_batch

    gradient().save(tmp_path / "good.jpg", quality=90)
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    (tmp_path / "folder.jpg").mkdir()
    paths = [str(tmp_path / n) for n in ("good.jpg", "text.jpg", "folder.jpg")]
    out = _decode_batch({"position": np.arange(3), "path": np.array(paths)}, small_backbone.preprocess.as_dict(),
                        draft=True)
    assert list(out["kind"]) == ["", PERMANENT, TRANSIENT]
    assert out["reason"][0] == "" and out["reason"][1].startswith("not an image")
    assert out["reason"][2].startswith("cannot read file") and out["pixels"][0].any()


def test_a_vector_wins_over_a_remembered_failure(tmp_path: Path, small_backbone: Backbone) -> None:
    store = VectorStore(tmp_path, "cd" + "1" * 62)
    vector = np.ones((1, DIM), np.float32)
    store.append([], np.zeros((0, DIM), np.float32), {"d1": "not an image", "d2": "not an image"})
    store.append(["d1", "d3"], np.vstack([vector, 2 * vector]), {})
    store.append([], np.zeros((0, DIM), np.float32), {"d3": "not an image"})  # a failure written after the vector
    stored = store.read()
    assert stored.failures == {"d2": "not an image"}
    assert np.array_equal(stored.vectors["d1"], vector[0]) and np.array_equal(stored.vectors["d3"], 2 * vector[0])
    catalog = load_image_folder(_photos(tmp_path / "catalogue"))
    first = embed_catalog(catalog, small_backbone, **OPTIONS)
    remembered = {file_digest(catalog.items[1].image_path): "not an image"}  # e.g. written by an older run
    _store_of(first).append([], np.zeros((0, 1), np.float32), remembered)
    again = embed_catalog(catalog, small_backbone, **OPTIONS)
    assert again.computed == 0 and again.ids == catalog.ids and again.skipped == []
    assert np.array_equal(again.vectors, first.vectors)


def test_parts_of_the_earlier_layout_are_read_and_their_failures_retried(tmp_path: Path,
                                                                          small_backbone: Backbone) -> None:
    catalog = load_image_folder(_photos(tmp_path / "catalogue"))
    first = embed_catalog(catalog, small_backbone, **OPTIONS)
    folder = first.cache_folder
    assert folder is not None
    digests = [file_digest(item.image_path) for item in catalog.items]
    for part in folder.glob("part-*.npz"):
        part.unlink()
    np.savez(folder / "part-000000.npz", digests=np.array(digests[:1]), vectors=first.vectors[:1],
             failed=np.array([[digests[1], "preprocessing failed (MemoryError: )"]]))
    np.savez(folder / "part-000001.npz", digests=np.array(digests[2:]), vectors=first.vectors[2:],
             failed=np.zeros((0, 2), str))
    (folder / ".part-000002.npz.tmp1234").write_bytes(b"half a part")  # a writer's temporary: never read
    store = VectorStore(folder.parents[2], folder.name)
    assert [p.name for p in store.parts()] == ["part-000000.npz", "part-000001.npz"]
    resumed = embed_catalog(catalog, small_backbone, **OPTIONS)
    assert resumed.computed == 1 and resumed.ids == catalog.ids  # the kindless failure was tried again
    np.testing.assert_allclose(resumed.vectors, first.vectors, atol=1e-6)
    names = [p.name for p in store.parts()]
    assert names[:2] == ["part-000000.npz", "part-000001.npz"] and len(names) == 3  # the old layout first
    assert re.fullmatch(r"part-\d{20}-\d+-[0-9a-f]{32}\.npz", names[2])  # time, process, random: no two alike


def test_torch_runtime_space_follows_library_versions(tmp_path: Path, small_backbone: Backbone,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    installed = plan.library_versions(small_backbone)
    assert installed == {name: metadata.version(name) for name in
                         ("pillow", "torchvision", "torch", "efficientnet-lite-pytorch")}
    runtime = TorchRuntime(small_backbone, torch.device("cpu"), "fp32").identity()

    def key(versions: dict[str, str]) -> str:
        base = plan.base_identity(small_backbone, draft=True, precision="fp32", device=torch.device("cpu"),
                                  versions=versions)
        return plan.space_key(base, runtime)

    assert key(installed) == key(dict(installed))
    for name in installed:
        assert key({**installed, name: installed[name] + ".post1"}) != key(installed), name
    catalog = load_image_folder(_photos(tmp_path / "catalogue", count=2))
    first = embed_catalog(catalog, small_backbone, **OPTIONS)
    upgraded = {**installed, "torch": installed["torch"] + ".post1"}
    with monkeypatch.context() as patched:
        patched.setattr(plan, "library_versions", lambda backbone: upgraded)
        after_upgrade = embed_catalog(catalog, small_backbone, **OPTIONS)
    assert after_upgrade.computed == 2 and after_upgrade.cache_folder != first.cache_folder
    assert embed_catalog(catalog, small_backbone, **OPTIONS).computed == 0
