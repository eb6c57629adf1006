"""Opening an index folder for serving: the checks and choices made once, at start, not per request."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from shelfsight.adapt import MLPHead, load_head
from shelfsight.backbones import Backbone
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
from shelfsight.serve.indexer import head_digest, open_collection
from shelfsight.serve.manifest import IndexLayout, ServiceManifest, normalised_identity

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


def open_head(manifest: ServiceManifest) -> tuple[MLPHead, list[str]] | None:
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
    head, classes, _ = load_head(folder)
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
    """The collection, also when a bare bulk load left it without attributes (then served read-only)."""
    return open_collection(layout, manifest, token=token, require_attributes=False)
