"""Serving a compressed index (``shelfsight index --compress``): the compressions Milvus can answer from.

A served compression is an optional PCA (``pcaD``, fitted by the bench's own
:func:`~shelfsight.compress.fit_projection` on the indexed catalogue's vectors, kept beside ``service.json`` as
``projection.npz``) and an optional int8 code (``sq8``: Milvus's IVF_SQ8 or HNSW_SQ index on the stored
vectors). The service applies the same projection and re-normalisation to every query vector, so answers are
those of the bench's ``pcaD-milvus:IVF_SQ8`` on the same catalogue.

Binary codes and product quantisation are refused: Milvus Lite 3.2.2 builds no binary index (``BIN_FLAT`` is an
unknown index type) and refuses ``IVF_PQ``; the bench measures them through FAISS, which the service does not run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from threadpoolctl import ThreadpoolController

from shelfsight.compress import CompressConfig, NotApplicable, Projection, fit_projection, parse_method
from shelfsight.compress.indexes import milvus_options
from shelfsight.files import atomic_write
from shelfsight.serve.errors import ServeError
from shelfsight.serve.manifest import CompressionRecord, IndexLayout

PROJECTION_NAME = "projection.npz"
SUPPORTED = "sq8, pcaD, pcaD-sq8 (pcaD-int8 and milvus:IVF_SQ8 / milvus:HNSW_SQ are read as sq8), or none"
NONE_NAMES = ("none", "float")
SQ8_TYPES = {"FLAT": "IVF_SQ8", "IVF_FLAT": "IVF_SQ8", "IVF_SQ8": "IVF_SQ8", "HNSW": "HNSW_SQ", "HNSW_SQ": "HNSW_SQ"}
"""The int8 Milvus index type for each ``--index-type``: IVF lists unless an HNSW graph was asked for."""


@dataclass(frozen=True)
class ServedCompression:
    """A parsed ``--compress`` value: PCA dimensions (None: none), whitening, int8 codes, a forced Milvus type."""

    pca: int | None = None
    whiten: bool = False
    sq8: bool = False
    milvus_type: str | None = None
    """IVF_SQ8 or HNSW_SQ when spelled ``milvus:TYPE``; None lets ``--index-type`` choose."""

    @property
    def name(self) -> str:
        """Canonical spelling recorded in the manifest: ``pca64``, ``sq8``, ``pca64-sq8``."""
        parts = [f"pca{self.pca}{'w' if self.whiten else ''}"] if self.pca is not None else []
        return "-".join(parts + (["sq8"] if self.sq8 else [])) or "none"

    def index_type(self, requested: str) -> str:
        """The Milvus index type to build: an int8 one for sq8, the requested one otherwise."""
        requested = requested.upper()
        if not self.sq8:
            return requested
        if self.milvus_type is not None:
            return self.milvus_type
        if requested not in SQ8_TYPES:
            raise ServeError(f"--compress {self.name} builds IVF_SQ8 (from --index-type FLAT or IVF_FLAT) or HNSW_SQ "
                             f"(from HNSW); --index-type {requested} has no int8 variant in Milvus Lite")
        return SQ8_TYPES[requested]

    def bytes_per_item(self, dim: int) -> int:
        """Bytes of one stored code in the index: 1 per dimension for int8, 4 for float32."""
        return dim if self.sq8 else 4 * dim


def parse_compression(text: str | None, index_type: str = "FLAT") -> ServedCompression:
    """``pca256-sq8`` -> ServedCompression(256, sq8=True); anything Milvus cannot serve is a ServeError saying why.

    An ``--index-type`` of IVF_SQ8 or HNSW_SQ without ``--compress`` is sq8 too, so the manifest says so.
    """
    spelled = (text or "none").strip().lower()
    if spelled in NONE_NAMES:
        return ServedCompression(sq8=index_type.upper() in ("IVF_SQ8", "HNSW_SQ"))
    tokens = ["int8" if token == "sq8" else token for token in spelled.split("-")]
    try:
        method = parse_method("-".join(tokens))
    except ValueError as error:
        raise ServeError(f"--compress {text}: {error}; a served index supports {SUPPORTED}") from None
    if method.codec in ("binary", "pq") or method.milvus not in (None, "IVF_SQ8", "HNSW_SQ"):
        raise ServeError(f"--compress {text}: a served index supports {SUPPORTED}. Milvus Lite 3.2.2 has no binary "
                         "index (BIN_FLAT is an unknown index type) and refuses IVF_PQ, so sign-bit and product "
                         "codes are measured by the bench through FAISS only")
    sq8 = method.codec in ("int8", "milvus") or index_type.upper() in ("IVF_SQ8", "HNSW_SQ")
    return ServedCompression(pca=method.pca, whiten=method.whiten, sq8=sq8, milvus_type=method.milvus)


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for PCA work, as the bench measures it: on a busy 2-core machine OpenBLAS's two
    threads wait on each other, and a 2,936 x 1,280 fit took 30 s against 0.9 s on one thread, projecting 16
    queries 23 ms against 0.5 ms. The limit is process-wide, so one holder at a time (two overlapping holders
    would restore each other's values); the controller is built once (scanning libraries costs milliseconds)."""
    with _BLAS_LOCK, _controller().limit(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def serving_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the whole life of a serving process (``shelfsight serve``; restored on exit).

    Its BLAS work is small matrix products per request: Milvus Lite's brute-force inner products (one per
    micro-batch) and PCA projections. OpenBLAS's second thread saves no wall time there but busy-waits for
    work after each product, on the core that ONNX Runtime and the other requests need: under 8 concurrent
    searches (``benchmarks/serve_load.py``) it burned a quarter of the process's CPU, and one thread cut the
    service's CPU per request by about 30 % (48 -> 33 ms on the 2-core build machine) with the same answers.
    :func:`one_blas_thread` inside it sets and restores the same limit."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def milvus_params(index_type: str, dim: int, n_items: int) -> dict[str, int]:
    """The bench's parameters for an int8 Milvus index (``nlist`` from the first catalogue's size); {} otherwise."""
    if index_type not in ("IVF_SQ8", "HNSW_SQ"):
        return {}
    options = milvus_options(index_type, dim, n_items, CompressConfig())
    keep = ("nlist", "nprobe") if index_type == "IVF_SQ8" else ("m", "ef")
    return {key: options[key] for key in keep}


def fit_and_save(layout: IndexLayout, compression: ServedCompression, rows: np.ndarray) -> CompressionRecord:
    """Fit the projection on the catalogue's vectors (the bench's PCA), store it, and describe it for the manifest."""
    source_dim = int(rows.shape[1])
    path = layout.folder / PROJECTION_NAME
    if compression.pca is None:
        path.unlink(missing_ok=True)
        return _record(compression, source_dim, source_dim, None)
    try:
        with one_blas_thread():
            projection = fit_projection(rows, compression.pca, whiten=compression.whiten)
    except NotApplicable as error:
        raise ServeError(f"--compress {compression.name}: {error}; index more items or choose fewer dimensions") \
            from None
    pca = projection.pca
    assert pca is not None
    layout.folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda target: _save(target, pca))
    return _record(compression, source_dim, compression.pca, _digest(path))


def _save(target: Path, pca: PCA) -> None:
    with open(target, "wb") as handle:
        np.savez(handle, components=pca.components_, mean=pca.mean_, explained_variance=pca.explained_variance_,
                 whiten=np.array(bool(pca.whiten)))


def _record(compression: ServedCompression, source_dim: int, dim: int, digest: str | None) -> CompressionRecord:
    return CompressionRecord(method=compression.name, pca=compression.pca, whiten=compression.whiten,
                             sq8=compression.sq8, source_dim=source_dim, dim=dim,
                             projection=PROJECTION_NAME if digest else None, projection_digest=digest,
                             bytes_per_item=compression.bytes_per_item(dim))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def load_projection(layout: IndexLayout, record: CompressionRecord | None) -> Projection:
    """The stored projection as the bench's :class:`Projection` (identity without one), checked by digest."""
    if record is None or record.projection is None:
        return Projection(None)
    path = layout.folder / record.projection
    if not path.is_file() or _digest(path) != record.projection_digest:
        raise ServeError(f"the projection {path} recorded in the index is missing or changed since indexing: the "
                         "stored vectors cannot be matched; rebuild with `shelfsight index --overwrite`")
    with np.load(path) as stored:
        pca = PCA(n_components=int(stored["components"].shape[0]), whiten=bool(stored["whiten"]))
        pca.components_, pca.mean_ = stored["components"], stored["mean"]
        pca.explained_variance_ = stored["explained_variance"]
    pca.n_components_, pca.n_features_in_ = int(pca.components_.shape[0]), int(pca.components_.shape[1])
    return Projection(pca)


def recorded_method(record: CompressionRecord | None, index_type: str) -> str:
    """A folder's compression by name (one built with ``--index-type IVF_SQ8`` before ``--compress`` is sq8)."""
    return record.method if record is not None else "sq8" if index_type in ("IVF_SQ8", "HNSW_SQ") else "none"


def check_same(record: CompressionRecord | None, wanted: ServedCompression, where: str, index_type: str) -> None:
    """Refuse extending a folder with another compression: its stored vectors live in another space."""
    have = recorded_method(record, index_type)
    if have != wanted.name:
        raise ServeError(f"{where} was indexed with --compress {have}, not {wanted.name}: its stored vectors are in "
                         f"another space. Pass --compress {have} (or leave --compress out), or --overwrite to rebuild")
