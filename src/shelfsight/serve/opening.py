"""Opening an index folder for serving: the checks and choices made once, at start, not per request."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from shelfsight.backbones import Backbone
from shelfsight.search import milvus_lite
from shelfsight.search.milvus import MilvusIndex
from shelfsight.serve.decode import DEFAULT_DECODE_CONCURRENCY, DEFAULT_DECODE_PIXELS
from shelfsight.serve.encoder import (
    Encoder,
    EncoderChoice,
    EncoderReport,
    OnnxEncoder,
    TorchEncoder,
    choose_encoder,
    ensure_onnx,
    probe_pixels,
)
from shelfsight.serve.errors import ServeError
from shelfsight.serve.indexer import ServedHead, head_digest, load_served_head, open_collection
from shelfsight.serve.manifest import IndexLayout, ServiceManifest, normalised_identity, read_manifest

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ServiceOptions:
    """How requests are bounded and batched (``shelfsight serve`` options)."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_decode_pixels: int = DEFAULT_DECODE_PIXELS
    """Decoded pixels allowed per image (after the JPEG draft); more is a 422 before decoding."""
    decode_concurrency: int = DEFAULT_DECODE_CONCURRENCY
    max_batch: int = 16
    """Most photos per encoder call and lookups per Milvus search; 1 turns micro-batching off."""
    max_wait_ms: float = 5.0
    """Longest a batch waits for requests still decoding their photo."""
    batch_in_flight: int = 4
    """Most photos of one ``/search/batch`` request queued at once in each stage (encoder, Milvus): the rest wait
    their turn, so single searches join the same encoder calls instead of waiting behind the whole batch."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < (0 if name == "max_wait_ms" else 1):
                raise ValueError(f"{name} must be positive, got {value}")


def check_weights(layout: IndexLayout, manifest: ServiceManifest, backbone: Backbone) -> None:
    """Refuse weights other than those the vectors were made with."""
    if normalised_identity(backbone.cache_identity()) != manifest.backbone:
        raise ServeError(f"the weights of {manifest.model} changed since {layout.folder} was indexed "
                         f"({manifest.backbone.get('weights')} then, {backbone.weights_id} now): the stored "
                         "vectors are not comparable; rebuild with `shelfsight index --overwrite`")


def open_head(manifest: ServiceManifest) -> tuple[ServedHead, list[str]] | None:
    """The recorded head and its classes, checked against the manifest; None without one."""
    if manifest.head is None:
        return None
    folder = Path(manifest.head)
    if not folder.is_dir():
        raise ServeError(f"the head {folder} recorded in the index is missing: restore it, or re-run `shelfsight "
                         "index` on this folder with --head pointing at its new place")
    if manifest.vectors == "head" and head_digest(folder) != manifest.head_digest:
        raise ServeError(f"the head {folder} changed since the index stored its top-tuned vectors: rebuild with "
                         "`shelfsight index --overwrite`")
    head, classes = load_served_head(folder)
    if head.in_dim != manifest.backbone_dim:
        raise ServeError(f"the head {folder} takes {head.in_dim}-d inputs but {manifest.model} gives "
                         f"{manifest.backbone_dim}-d embeddings")
    return head, classes


def open_encoder(layout: IndexLayout, backbone: Backbone, choice: EncoderChoice) -> tuple[Encoder, EncoderReport]:
    """PyTorch, ONNX Runtime, or under ``auto`` the faster of the two that agree."""
    torch_encoder = TorchEncoder(backbone)
    onnx_encoder = None
    note = ""
    if choice != "torch":
        try:
            path, _ = ensure_onnx(backbone, layout.onnx)
            onnx_encoder = OnnxEncoder(path)
        except (ServeError, OSError) as error:
            if choice == "onnx":
                raise ServeError(f"cannot serve through ONNX Runtime: {error}") from error
            note = f"ONNX unavailable ({error}); "
    chosen, report = choose_encoder(torch_encoder, onnx_encoder, probe_pixels(backbone.preprocess), choice=choice)
    return chosen, EncoderReport(**{**asdict(report), "note": note + report.note}) if note else report


def open_served_collection(layout: IndexLayout, manifest: ServiceManifest, *, token: str) -> MilvusIndex:
    """The collection, also when a bare bulk load left it without attributes (then served read-only).

    Searches read at ``Session`` consistency: the service's own writes at once, another process's (``index
    --sync`` beside a running service) within the server's time tick. ``Strong`` would make a server wait for
    the next tick on every search (~200 ms on Milvus 2.3.5, measured)."""
    return open_collection(layout, manifest, token=token, require_attributes=False, consistency="Session")


LITE_LOCK = "LOCK"
"""The file Milvus Lite holds an exclusive ``flock`` on while a process has the database open."""


def check_not_locked(layout: IndexLayout, manifest: ServiceManifest) -> None:
    """Refuse, in one line naming the holder, a Milvus Lite index another process has open. Milvus Lite opens a
    database in one process only; the second one would otherwise load the model, then fail deep in pymilvus with
    a long traceback. Tried before anything loads; a database this process already serves is shared, not refused."""
    if manifest.milvus.uri is not None or sys.platform == "win32":
        return
    key = milvus_lite.lite_path(layout.milvus_lite)
    lock = Path(key) / LITE_LOCK
    if key in milvus_lite._LITE_USERS or not lock.is_file():
        return
    import fcntl

    descriptor = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the descriptor below
    except BlockingIOError:
        raise ServeError(f"{layout.folder} is open in {lock_holder(lock)}: stop it first (one process at a time "
                         "may open an index)") from None
    finally:
        os.close(descriptor)


def lock_holder(lock: Path) -> str:
    """``process PID (command)`` holding an ``flock`` on ``lock``, from Linux's /proc/locks; else "another
    process"."""
    status = lock.stat()
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    holders = [(fields[5] == device, fields[4]) for fields in map(str.split, table)
               if len(fields) >= 6 and fields[1] == "FLOCK" and "->" not in fields
               and fields[5].rsplit(":", 1)[-1] == str(status.st_ino)]  # some filesystems show another device
    if not holders:
        return "another process"
    pid = max(holders)[1]
    return f"process {pid}{_command(pid)}"


def _command(pid: str) -> str:
    """`` (shelfsight serve)``: the program and its command, when this machine shows them (an interpreter and
    ``-m`` are left out)."""
    try:
        words = [Path(word).name for word in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                 .split("\0") if word]
    except OSError:
        return ""
    if words and words[0].startswith("python"):
        words = [word for word in words[1:] if word != "-m"]
    shown = " ".join(words[:2])
    return f" ({shown[:40]})" if shown else ""


def check_index_free(index_dir: str | os.PathLike[str], uri: str | None = None) -> None:
    """What :meth:`VisualSearchService.open` checks first (a readable index folder, not held by another process),
    for a command to say before it announces anything."""
    layout = IndexLayout.at(index_dir)
    manifest = read_manifest(layout)
    if uri is not None:
        manifest = manifest.model_copy(update={"milvus": manifest.milvus.model_copy(update={"uri": uri})})
    check_not_locked(layout, manifest)
