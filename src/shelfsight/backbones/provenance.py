"""Which weights a hub load actually used: the files in the local caches, and their content digest.

A hub name (``vit_base_patch16_224.dino``, ``facebook/dinov2-base``) says what was asked for, not what
was loaded: a repository's ``main`` moves, a cache can hold an older snapshot. After a successful load,
the loaders locate the very file the library read, the way the library itself resolves it:

* Hugging Face repositories (timm, open_clip, transformers): ``try_to_load_from_cache`` in the
  library's own order of file names (safetensors before pickles), at the requested revision; the
  snapshot folder names the commit that was loaded.
* plain URLs (older timm and open_clip tags, torch.hub entry points): the file the download helper
  caches under ``torch.hub.get_dir()/checkpoints`` (or ``~/.cache/clip`` for open_clip); for torch.hub
  entry points, the calls to ``torch.hub.load_state_dict_from_url`` made during the load are recorded.

The weights id is then ``SOURCE:sha256:HEX`` (``HEX``: the first 32 hex digits of the SHA-256 of the
file, or of its shards' digests). Where no file can be located after a load, the id says so
(``unverified:hub:...``): a digest is never claimed that was not computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

COMMIT = re.compile(r"[0-9a-f]{40}")
"""A full git commit hash (Hugging Face and GitHub revisions)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where loaded weights came from (``hf:REPO@COMMIT``, ``url:URL``, ``torchhub:OWNER/REPO@REF``, ``file``)
    and the files that were read (empty when they could not be located)."""

    label: str
    files: tuple[Path, ...] = ()

    def weights_id(self) -> str | None:
        """``LABEL:sha256:HEX`` (``file:HEX`` for a local file or folder), or None without files."""
        if not self.files:
            return None
        digest = weights_digest(self.files)
        return f"file:{digest}" if self.label == "file" else f"{self.label}:sha256:{digest}"


def is_commit(revision: str | None) -> bool:
    return revision is not None and COMMIT.fullmatch(revision) is not None


# ── digests ──────────────────────────────────────────────────────────────────────────────────────


def weights_digest(files: Sequence[Path]) -> str:
    """First 32 hex digits of SHA-256: of the file (or folder) itself, or, for several files (shards),
    of their names and digests in the order given."""
    if len(files) == 1:
        return file_digest(files[0])
    combined = hashlib.sha256()
    for path in files:
        combined.update(f"{path.name}:{file_digest(path)}\n".encode())
    return combined.hexdigest()[:32]


def file_digest(path: Path) -> str:
    """SHA-256 (32 hex digits) of a file, or of a folder's files in sorted order; memoised per file version."""
    return _file_digest(str(path), *stat_key(path))


def stat_key(path: Path) -> tuple[int, int, int]:
    """What identifies one version of a file for the memo: size, modification time and inode (a file
    replaced by rename, as caches and atomic writers do, gets a new inode). A folder: its newest file."""
    if path.is_dir():
        versions = [stat_key(p) for p in path.rglob("*") if p.is_file()]
        return 0, max((v[1] for v in versions), default=0), hash(tuple(sorted(versions))) & 0xFFFFFFFF
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int = 0) -> str:
    digest = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


# ── the Hugging Face cache ───────────────────────────────────────────────────────────────────────


def hf_cached_file(repo: str, filenames: Sequence[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` present in the local Hugging Face cache at ``revision`` (default ``main``),
    as a library that tries them in this order would have read it; None when none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def snapshot_commit(path: Path) -> str | None:
    """The commit of a file inside a Hugging Face cache snapshot (``.../snapshots/COMMIT/FILE``)."""
    parts = path.parts
    for index in range(len(parts) - 2, 0, -1):
        if parts[index - 1] == "snapshots" and COMMIT.fullmatch(parts[index]):
            return parts[index]
    return None


def hf_source(repo: str, filenames: Sequence[str], revision: str | None = None) -> WeightsSource:
    path = hf_cached_file(repo, filenames, revision)
    return _hf_label(repo, [path] if path else [], revision)


def _hf_label(repo: str, files: Sequence[Path], revision: str | None) -> WeightsSource:
    commit = snapshot_commit(files[0]) if files else None
    return WeightsSource(label=f"hf:{repo}@{commit or revision or 'main'}", files=tuple(files))


def transformers_source(repo: str, revision: str | None = None) -> WeightsSource:
    """The weights transformers' ``from_pretrained`` reads from a cached repository: ``model.safetensors``,
    else the shards its index lists, else ``pytorch_model.bin`` (or its shards)."""
    import json

    from huggingface_hub import try_to_load_from_cache

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        found = hf_cached_file(repo, [single], revision)
        if found is not None:
            return _hf_label(repo, [found], revision)
        index_file = hf_cached_file(repo, [index], revision)
        if index_file is None:
            continue
        try:
            shards = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return WeightsSource(label=f"hf:{repo}@{revision or 'main'}")
        paths = [try_to_load_from_cache(repo, shard, revision=revision) for shard in shards]
        if shards and all(isinstance(p, str) for p in paths):
            return _hf_label(repo, [Path(str(p)) for p in paths], revision)
        return WeightsSource(label=f"hf:{repo}@{revision or 'main'}")
    return WeightsSource(label=f"hf:{repo}@{revision or 'main'}")


def safe_alternatives(filename: str, pairs: dict[str, str], suffixes: tuple[str, ...]) -> list[str]:
    """``filename``'s safetensors alternative, then ``filename``: the order timm and open_clip try them in.
    ``pairs`` maps a library's default pickle names to their safetensors names; other names ending in one
    of ``suffixes`` have the suffix replaced by ``.safetensors``."""
    if filename in pairs:
        return [pairs[filename], filename]
    if filename.endswith(suffixes):
        return [filename.rsplit(".", 1)[0] + ".safetensors", filename]
    return [filename]


# ── timm ─────────────────────────────────────────────────────────────────────────────────────────

_TIMM_PICKLES = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def timm_hub_location(pretrained_cfg: dict[str, Any]) -> tuple[str, str, Any]:
    """``(load_from, location, custom_load)`` as timm's ``load_pretrained`` resolves them."""
    location: Any
    try:
        from timm.models._builder import _resolve_pretrained_source

        load_from, location = _resolve_pretrained_source(pretrained_cfg)
    except ImportError:  # a timm without the helper: its documented precedence, hub before URL
        hub_id, url = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("url")
        load_from, location = ("hf-hub", hub_id) if hub_id else ("url", url) if url else ("", "")
        if hub_id and pretrained_cfg.get("hf_hub_filename"):
            location = (hub_id, pretrained_cfg["hf_hub_filename"])
    return load_from, location, pretrained_cfg.get("custom_load", False)


def timm_source(model: torch.nn.Module) -> WeightsSource | None:
    """The file timm's ``create_model(pretrained=True)`` read for ``model`` (from its ``pretrained_cfg``)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    load_from, location, custom_load = timm_hub_location(cfg)
    if load_from == "hf-hub":
        hub_id, filename = location if isinstance(location, (tuple, list)) else (location, None)
        repo, _, revision = str(hub_id).partition("@")
        if filename is None:
            names = ["model.safetensors", "pytorch_model.bin"]
        elif filename.endswith(".safetensors") or custom_load == "hf":
            names = [filename]
        else:
            names = safe_alternatives(filename, _TIMM_PICKLES, (".bin",))
        return hf_source(repo, names, revision or None)
    if load_from == "url":
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(str(location)).path)
        return WeightsSource(label=f"url:{location}", files=(path,) if path.is_file() else ())
    return None


# ── open_clip ────────────────────────────────────────────────────────────────────────────────────

_OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
_OPEN_CLIP_PICKLES = {_OPEN_CLIP_WEIGHTS: "open_clip_model.safetensors"}


def open_clip_source(checkpoint: str) -> WeightsSource | None:
    """The checkpoint file open_clip's ``create_model`` resolved for ``ARCH:TAG`` or ``hf-hub:ORG/NAME``."""
    if checkpoint.startswith("hf-hub:"):
        return hf_source(checkpoint[len("hf-hub:"):], ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    import open_clip

    arch, _, tag = checkpoint.partition(":")
    cfg = open_clip.get_pretrained_cfg(arch.replace("/", "-"), tag) or {}
    if cfg.get("file"):
        path = Path(cfg["file"])
        return WeightsSource(label="file", files=(path,) if path.exists() else ())
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:  # open_clip prefers the hub when huggingface_hub is installed (it is a dependency here)
        model_id, filename = os.path.split(hub)  # "ORG/NAME/" means the default file name
        return hf_source(model_id, safe_alternatives(filename or _OPEN_CLIP_WEIGHTS, _OPEN_CLIP_PICKLES,
                                                     (".bin", ".pth")))
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return WeightsSource(label=f"url:{url}", files=(path,) if path.is_file() else ())
    return None


# ── torch.hub ────────────────────────────────────────────────────────────────────────────────────

_REAL_LOAD_STATE_DICT_FROM_URL = torch.hub.load_state_dict_from_url
_SIGNATURE = inspect.signature(_REAL_LOAD_STATE_DICT_FROM_URL)
_RECORDING: list[list[Path]] = []
_HUB_LOCK = threading.RLock()


def _recording_load_state_dict_from_url(*args: Any, **kwargs: Any) -> Any:
    """``torch.hub.load_state_dict_from_url`` that also notes the cached file it read (while recording)."""
    result = _REAL_LOAD_STATE_DICT_FROM_URL(*args, **kwargs)
    if _RECORDING:
        arguments = _SIGNATURE.bind(*args, **kwargs).arguments
        folder = arguments.get("model_dir") or os.path.join(torch.hub.get_dir(), "checkpoints")
        name = arguments.get("file_name") or os.path.basename(urlparse(arguments["url"]).path)
        path = Path(folder) / name
        if path.is_file() and path not in _RECORDING[-1]:
            _RECORDING[-1].append(path)
    return result


@contextlib.contextmanager
def recording_hub_downloads() -> Iterator[list[Path]]:
    """Within the block, the state-dict files torch.hub entry points load through
    ``torch.hub.load_state_dict_from_url`` (the usual way hubconf files fetch weights) are listed.

    Entry points that download by other means are not seen: their weights stay unverified.
    """
    files: list[Path] = []
    with _HUB_LOCK:
        previous = torch.hub.load_state_dict_from_url
        torch.hub.load_state_dict_from_url = _recording_load_state_dict_from_url
        _RECORDING.append(files)
        try:
            yield files
        finally:
            _RECORDING.pop()
            torch.hub.load_state_dict_from_url = previous
