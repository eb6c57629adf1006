"""Fine-tuned backbones on disk: a folder that turns back into a backbone like any other.

    FOLDER/finetuned.json        what it is: the base spec, the preprocessing it was tuned for, the
                                 dataset and its classes, the training config, costs and history
    FOLDER/backbone.safetensors  the encoder's weights (the library model inside ``FeatureEncoder``)
    FOLDER/head.safetensors      the cosine classifier: one unit vector per class, in ``classes`` order
    FOLDER/config.json           transformers models only: the architecture, so no hub is needed

``finetuned.json`` is written last, so a folder with it is complete. A fine-tuned backbone is named
``BASE@finetune:DATASET`` (looked up, in order, in folders registered with ``register_finetuned_dir``,
the ``os.pathsep``-separated folders of ``$SHELFSIGHT_FINETUNED_DIR``, then ``CACHE/finetuned``), or
``BASE@finetune:PATH`` for a folder anywhere. Its cache identity is the digest of
``backbone.safetensors``, so its embeddings never mix with the pre-trained model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shelfsight import paths
from shelfsight.backbones.loaders import DUAL, FeatureEncoder, load_model
from shelfsight.backbones.spec import BackboneSpec, Preprocess
from shelfsight.backbones.text import has_text_features
from shelfsight.errors import ModelUnavailableError, UnknownModelError
from shelfsight.files import atomic_write

MARK = "@finetune:"
RECORD = "finetuned.json"
BACKBONE_WEIGHTS = "backbone.safetensors"
HEAD_WEIGHTS = "head.safetensors"
TRANSFORMERS_CONFIG = "config.json"
FORMAT = "shelfsight-finetuned-backbone"
FINETUNED_DIR_ENV = "SHELFSIGHT_FINETUNED_DIR"

_REGISTERED_DIRS: list[Path] = []


def finetuned_name(base: str, dataset: str) -> str:
    """``efficientnet_lite0@finetune:grocery-store``."""
    return f"{base}{MARK}{dataset}"


def is_finetuned_name(name: str) -> bool:
    return MARK in name


def slug(name: str) -> str:
    """A folder name for a fine-tuned model name (``@`` and ``:`` are awkward in paths)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name.replace(MARK, "__finetune__")).strip("-")


def register_finetuned_dir(path: str | os.PathLike[str]) -> None:
    """Search ``path`` (and its sub-folders, two levels deep) first when resolving ``BASE@finetune:DATASET``."""
    folder = Path(path).expanduser().resolve()
    if folder not in _REGISTERED_DIRS:
        _REGISTERED_DIRS.insert(0, folder)


def finetuned_dirs() -> list[Path]:
    """Where ``BASE@finetune:DATASET`` is looked up, in order."""
    env = [Path(p).expanduser().resolve() for p in os.environ.get(FINETUNED_DIR_ENV, "").split(os.pathsep) if p]
    return [*_REGISTERED_DIRS, *env, paths.cache_dir() / "finetuned"]


def default_output(name: str) -> Path:
    """Where ``shelfsight finetune`` saves a model by default, so that its name resolves."""
    return paths.cache_dir() / "finetuned" / slug(name)


def find_finetuned(name: str) -> Path:
    """The folder of a fine-tuned backbone name; ambiguity and absence are errors that say what to do."""
    base, _, target = name.partition(MARK)
    if not base or not target:
        raise UnknownModelError(f"{name!r}: expected BASE{MARK}DATASET or BASE{MARK}PATH")
    as_path = Path(target).expanduser()
    if (as_path / RECORD).is_file():
        return as_path.resolve()
    if os.sep in target or target.startswith((".", "~")):  # meant as a path, not a dataset name
        raise UnknownModelError(f"{name!r}: {as_path} is not a fine-tuned backbone folder (no {RECORD} in it).")
    searched = finetuned_dirs()
    for root in searched:
        matches = [folder for folder in _candidates(root) if _record_name(folder) == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(str(m) for m in matches)
            raise UnknownModelError(f"{name!r} matches several fine-tuned backbones under {root}: {listed}. "
                                    f"Name one folder: {base}{MARK}PATH.")
    where = ", ".join(str(r) for r in searched)
    raise UnknownModelError(
        f"No fine-tuned backbone {name!r} in {where}. Fine-tune one with `shelfsight finetune --model {base} "
        f"--dataset {target}`, set {FINETUNED_DIR_ENV} to the folder that holds it, or name its folder: "
        f"{base}{MARK}PATH."
    )


def _candidates(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    records = [*root.glob(f"*/{RECORD}"), *root.glob(f"*/*/{RECORD}")]
    return sorted(record.parent.resolve() for record in records)


def _record_name(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / RECORD).read_text(encoding="utf-8")).get("name"))
    except (OSError, ValueError):
        return None


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``finetuned.json``, checked for format and the files it promises."""
    source = Path(folder)
    path = source / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailableError(f"{source}: not a fine-tuned backbone (no {RECORD}); training may not have "
                                    "finished: run it again to resume.") from None
    except ValueError as exc:
        raise ModelUnavailableError(f"{path}: not valid JSON ({exc}).") from None
    if record.get("format") != FORMAT:
        raise ModelUnavailableError(f"{path}: format {record.get('format')!r} is not {FORMAT!r}.")
    for name in (BACKBONE_WEIGHTS, HEAD_WEIGHTS):
        if not (source / name).is_file():
            raise ModelUnavailableError(f"{source}: {name} is missing; fine-tune again to rewrite the folder.")
    return dict(record)


def spec_to_dict(spec: BackboneSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(data: Mapping[str, Any]) -> BackboneSpec:
    fields = dict(data)
    preprocess = dict(fields.pop("preprocess", None) or {})
    for key in ("mean", "std"):
        if key in preprocess:
            preprocess[key] = tuple(float(v) for v in preprocess[key])
    return BackboneSpec(preprocess=Preprocess(**preprocess), **fields)


def finetuned_spec(name: str) -> BackboneSpec:
    """The spec of ``BASE@finetune:DATASET|PATH``: the base network, the tuned preprocessing, the folder."""
    folder = find_finetuned(name)
    record = read_record(folder)
    base = spec_from_dict(record["base"])
    preprocess = spec_from_dict({**record["base"], "preprocess": record["preprocess"]}).preprocess
    return dataclasses.replace(
        base, name=name, preprocess=preprocess, finetuned=str(folder), in_paper=False,
        description=f"{base.name} fine-tuned on {record.get('dataset')} ({len(record.get('classes', []))} classes)",
    )


def load_finetuned_encoder(spec: BackboneSpec) -> FeatureEncoder:
    """Build the base architecture without its pretrained weights (no download), then load the tuned ones."""
    if spec.finetuned is None:
        raise ValueError(f"{spec.name} is not a fine-tuned backbone")
    folder = Path(spec.finetuned)
    if spec.library == "transformers":
        import transformers

        model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(folder))
        encoder = FeatureEncoder(model, DUAL if has_text_features(model) else "transformers")
    else:
        encoder = load_model(spec, pretrained=False)
    try:
        encoder.model.load_state_dict(load_file(str(folder / BACKBONE_WEIGHTS)), strict=True)
    except RuntimeError as exc:
        raise ModelUnavailableError(f"{folder / BACKBONE_WEIGHTS}: weights do not fit {spec.library} "
                                    f"{spec.checkpoint!r}: {str(exc).splitlines()[0]}") from exc
    encoder.eval()
    return encoder


def write_finetuned(folder: str | os.PathLike[str], *, encoder: FeatureEncoder, class_weights: torch.Tensor,
                    record: Mapping[str, Any]) -> Path:
    """Write the weights, the head and (last, atomically) the record; returns the folder."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    _atomic(target / BACKBONE_WEIGHTS, lambda path: save_file(state, str(path)))
    head = {"weight": class_weights.detach().float().cpu().contiguous()}
    _atomic(target / HEAD_WEIGHTS, lambda path: save_file(head, str(path)))
    config = getattr(encoder.model, "config", None)
    if encoder.mode == "transformers" and config is not None:
        _atomic(target / TRANSFORMERS_CONFIG, lambda path: path.write_text(config.to_json_string(), encoding="utf-8"))
    text = json.dumps({**record, "format": FORMAT, "version": 1}, indent=2, sort_keys=True, default=str) + "\n"
    _atomic(target / RECORD, lambda path: path.write_text(text, encoding="utf-8"))
    return target


def load_class_weights(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str]]:
    """The cosine classifier of a fine-tuned folder: unit class vectors (C, D) and the class names."""
    record = read_record(folder)
    weight = load_file(str(Path(folder) / HEAD_WEIGHTS))["weight"]
    classes = list(record["classes"])
    if weight.shape[0] != len(classes):
        raise ModelUnavailableError(f"{folder}: {HEAD_WEIGHTS} has {weight.shape[0]} classes, {RECORD} "
                                    f"names {len(classes)}.")
    return weight, classes


def _atomic(path: Path, write: Any) -> None:
    atomic_write(path, write)  # 0644: a shared model stays readable by its other users
