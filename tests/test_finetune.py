"""Full fine-tuning on real Grocery Store photos: exact resume, the saved backbone as a backbone, metric-learning
losses, layer-wise decay, and a two-process DDP run under torchrun (gloo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from shelfsight.adapt import FinetuneConfig, FinetuneError, finetune, load_finetune_config, predict_classes
from shelfsight.adapt.finetune import FinetuneNet, build_backbone_optimizer, build_criterion
from shelfsight.backbones import get_spec, load_backbone
from shelfsight.backbones.finetuned import FINETUNED_DIR_ENV, default_output
from shelfsight.backbones.loaders import FeatureEncoder
from shelfsight.catalog import Catalog, load_catalog
from shelfsight.embeddings import embed_catalog
from shelfsight.errors import UnknownModelError

SIZE = 64  # small crops keep a CPU epoch to about a second
TINY = {"batch_size": 8, "num_workers": 0, "patience": 10}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: fast on a shared CPU, and the same count in runs that must agree bitwise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(grocery_root: Path) -> Catalog:
    """Six Grocery Store classes that have validation photos: 4 train, up to 2 val and 1 test photo each."""
    catalog = load_catalog("grocery-store", data_dir=grocery_root)
    with_val = sorted({i.label for i in catalog if i.split == "val"})
    classes = [c for c in with_val if sum(i.label == c and i.split == "val" for i in catalog) >= 2][:6]
    keep, counts = [], {}
    for item in catalog:
        quota = {"train": 4, "val": 2, "test": 1}.get(item.split, 0)
        key = (item.label, item.split)
        if item.label in classes and counts.get(key, 0) < quota:
            counts[key] = counts.get(key, 0) + 1
            keep.append(item.item_id)
    return catalog.subset(keep)


def lite0():  # type: ignore[no-untyped-def]
    return load_backbone("efficientnet_lite0", preprocess={"input_size": SIZE})


def test_settings_are_validated_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layer_decay must be in"):
        FinetuneConfig(layer_decay=1.5)
    with pytest.raises(ValueError, match="not a timm optimizer"):
        FinetuneConfig(optimizer="adamz")
    settings = tmp_path / "bench.yaml"
    settings.write_text("models: [x]\nfinetune: {epochs: 2, scale: [0.5, 1.0], loss: arcface}\n")
    config = load_finetune_config(settings, lr=1e-3, epochs=None)
    assert (config.epochs, config.scale, config.loss, config.lr) == (2, (0.5, 1.0), "arcface", 1e-3)
    with pytest.raises(FinetuneError, match=r"bench\.yaml: epohcs: Unexpected keyword argument"):
        settings.write_text("finetune: {epohcs: 2}\n")
        load_finetune_config(settings)
    with pytest.raises(FinetuneError, match="loss: Input should be 'ce', 'arcface' or 'proxy_anchor'"):
        load_finetune_config({"loss": "triplet"})


def test_public_names_stay_importable_where_they_were() -> None:
    import importlib

    import shelfsight.adapt as adapt

    module = importlib.import_module("shelfsight.adapt.finetune")  # the attribute of that name is the function
    assert [name for name in module.__all__ if not hasattr(module, name)] == []
    assert [name for name in adapt.__all__ if not hasattr(adapt, name)] == []
    assert module.build_backbone_optimizer is not adapt.build_head_optimizer


def test_resume_repeats_the_uninterrupted_run(tiny: Catalog, tmp_path: Path) -> None:
    """Stopped after epoch 2 of 3 and resumed: the same weights, bit for bit, as three epochs in one go."""
    config = FinetuneConfig(epochs=3, keep_checkpoints=True, **TINY)  # type: ignore[arg-type]
    whole = finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "whole", config=config,
                     progress=False)

    class Stop(Exception):
        pass

    def stop_after_second(stats) -> None:  # type: ignore[no-untyped-def]
        if stats.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "split", config=config, progress=False,
                 on_epoch=stop_after_second)
    assert not (tmp_path / "split" / "finetuned.json").exists()
    resumed = finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "split", config=config,
                       progress=False)
    assert resumed.resumed_from_epoch == 1 and whole.resumed_from_epoch is None
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in whole.history]
    assert [h.val_accuracy for h in resumed.history] == [h.val_accuracy for h in whole.history]
    last = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True) for run in ("whole", "split")]
    assert last[0]["progress"]["updates"] == last[1]["progress"]["updates"] == 3 * 3  # 24 images, batches of 8
    for name, tensor in last[0]["net"].items():
        assert torch.equal(tensor, last[1]["net"][name]), name
    start = lite0().encoder.model.state_dict()
    assert not torch.equal(last[0]["net"]["encoder.model._conv_stem.weight"], start["_conv_stem.weight"])
    for saved in ("backbone.safetensors", "head.safetensors"):
        first, second = load_file(str(tmp_path / "whole" / saved)), load_file(str(tmp_path / "split" / saved))
        assert all(torch.equal(first[k], second[k]) for k in first), saved
    again = finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "whole", config=config)
    assert again.history == whole.history and again.resumed_from_epoch is None  # a finished folder is read back

    with pytest.raises(FinetuneError, match="other settings \\(lr\\)"):
        changed = FinetuneConfig(epochs=3, lr=1e-3, keep_checkpoints=True, **TINY)  # type: ignore[arg-type]
        with pytest.raises(Stop):
            finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "other", config=config,
                     progress=False, on_epoch=stop_after_second)
        finetune(tiny, lite0(), dataset="grocery-store", output=tmp_path / "other", config=changed, progress=False)


def test_a_finetuned_backbone_is_a_backbone_like_any_other(tiny: Catalog, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    name = "efficientnet_lite0@finetune:grocery-store"
    config = FinetuneConfig(epochs=2, eval_input_size=72, **TINY)  # type: ignore[arg-type]
    result = finetune(tiny, lite0(), dataset="grocery-store", output=default_output(name), config=config,
                      progress=False)
    assert result.name == name and result.folder == default_output(name)

    backbone = load_backbone(name)  # found in $SHELFSIGHT_CACHE_DIR/finetuned
    assert backbone.preprocess.input_size == 72 and get_spec(name).library == "efficientnet_lite"
    assert backbone.weights_id.startswith("file:") and backbone.weights_id != lite0().weights_id
    assert load_backbone(f"efficientnet_lite0@finetune:{result.folder}").weights_id == backbone.weights_id
    pretrained = embed_catalog(tiny, load_backbone("efficientnet_lite0", preprocess={"input_size": 72}),
                               num_workers=0, progress=False)
    tuned = embed_catalog(tiny, backbone, num_workers=0, progress=False)
    assert tuned.key != pretrained.key and not np.allclose(tuned.vectors, pretrained.vectors, atol=1e-3)

    # the saved head classifies the cached embeddings as the training loop's validation did
    weights = load_file(str(result.folder / "head.safetensors"))["weight"]
    record = json.loads((result.folder / "finetuned.json").read_text())
    rows = {item_id: row for row, item_id in enumerate(tuned.ids)}
    val = [i for i in tiny if i.split == "val"]
    predicted = predict_classes(weights, tuned.vectors[[rows[i.item_id] for i in val]])
    accuracy = float(np.mean([record["classes"][p] == i.label for p, i in zip(predicted, val, strict=True)]))
    assert abs(accuracy - result.best_val_accuracy) <= 1 / len(val) + 1e-9  # fused BN may flip a near tie
    assert record["costs"]["epochs"] == 2 and record["costs"]["train_images_per_s"] > 0
    assert record["training"]["world_size"] == 1 and record["train_input_size"] == SIZE

    for copy in ("a", "b"):  # the same name twice in one searched folder
        shutil.copytree(result.folder, tmp_path / "more" / copy)
    monkeypatch.setenv(FINETUNED_DIR_ENV, str(tmp_path / "more"))
    with pytest.raises(UnknownModelError, match="matches several fine-tuned backbones"):
        get_spec(name)
    with pytest.raises(UnknownModelError, match="shelfsight finetune --model efficientnet_lite0 --dataset sop"):
        get_spec("efficientnet_lite0@finetune:sop")


@pytest.mark.parametrize("loss", ["arcface", "proxy_anchor"])
def test_metric_learning_losses_learn_their_class_vectors(loss: str) -> None:
    backbone = load_backbone("timm:test_resnet", pretrained=False)
    config = FinetuneConfig(loss=loss)  # type: ignore[arg-type]
    with torch.no_grad():
        dim = backbone.encoder(torch.zeros(1, 3, 32, 32)).shape[1]
    net = FinetuneNet(backbone.encoder.train(), build_criterion(config, dim, 3))
    before = net.class_weights().detach().clone()
    optimizer, _ = build_backbone_optimizer(net, config)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * group["lr_scale"]
    pixels, labels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 3
    loss_value = net(pixels, labels)
    loss_value.backward()
    optimizer.step()
    assert loss_value.item() > 0 and net.class_weights().shape == (3, dim)
    assert not torch.equal(net.class_weights(), before)

    vectors = F.normalize(torch.randn(20, dim, generator=torch.Generator().manual_seed(1)), dim=1).numpy()
    weights = net.class_weights().detach().numpy()
    cosines = vectors @ (weights / np.linalg.norm(weights, axis=1, keepdims=True)).T
    assert np.array_equal(predict_classes(weights, vectors), cosines.argmax(axis=1))


def test_layer_decay_follows_the_backbone_layers() -> None:
    config = FinetuneConfig(layer_decay=0.5, head_lr_scale=10.0)
    net = FinetuneNet(lite0().encoder, build_criterion(config, 1280, 5))
    optimizer, layered = build_backbone_optimizer(net, config)
    assert layered
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    model = net.encoder.model
    # stem = layer 0, the 16 blocks = 1..16, the conv head = 17, the classifier on top = 18
    assert scale[id(model._conv_stem.weight)] == pytest.approx(0.5 ** 18)
    assert scale[id(model._blocks[15]._project_conv.weight)] == pytest.approx(0.5 ** 2)
    assert scale[id(model._conv_head.weight)] == pytest.approx(0.5)
    assert scale[id(net.criterion.weight)] == pytest.approx(10.0)

    plain = FeatureEncoder(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1)), "plain")
    optimizer, layered = build_backbone_optimizer(FinetuneNet(plain, build_criterion(config, 4, 2)), config)
    assert not layered and {g["lr_scale"] for g in optimizer.param_groups} == {1.0, 10.0}


def _manifest(catalog: Catalog, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([str(i.image_path), i.label, i.split] for i in catalog)
    return path


def test_two_process_ddp_run_trains(tiny: Catalog, tmp_path: Path) -> None:
    """torchrun, two gloo processes on the CPU: both train their half, replicas stay equal, rank 0 saves."""
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "shelfsight.cli", "finetune", "--model", "timm:test_resnet", "--random-init",
               "--dataset", str(_manifest(tiny, tmp_path / "tiny.csv")), "--output", str(output),
               "--epochs", "2", "--batch-size", "4", "--input-size", "32", "--workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((output / "finetuned.json").read_text())
    training = record["training"]
    assert training["world_size"] == 2
    checksums = training["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # DDP kept the replicas in step
    assert [h["images"] for h in training["history"]] == [24, 24]  # 12 per rank, counted over both
    start = load_backbone("timm:test_resnet", pretrained=False).encoder.model.state_dict()
    tuned = load_file(str(output / "backbone.safetensors"))
    assert any(not torch.equal(tuned[k], start[k]) for k in tuned if tuned[k].is_floating_point())
    assert not (output / "checkpoints").exists()  # removed once the model is saved
