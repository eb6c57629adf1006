"""Compression methods spelled as short names, and the settings a bench's ``compress:`` section holds.

A method is a projection (optional) followed by a code, read left to right:

    float            the float32 vector itself, searched exactly (the reference every ratio is taken to)
    pca256           scikit-learn PCA to 256 dimensions, fitted away from the queries (gallery), re-normalised
    pca256w          the same, whitened (each component scaled to unit variance) before re-normalising
    int8             FAISS scalar quantiser: one byte per dimension (per-dimension ranges from the gallery)
    pq32             FAISS product quantiser: 32 sub-vectors x 8 bits = 32 bytes per item
    binary           sign bits, Hamming search (FAISS IndexBinaryFlat)
    binary-rerank4   Hamming top 4k re-scored with the float vectors, best k kept
    milvus:IVF_SQ8   a Milvus index type that compresses (IVF_SQ8, HNSW_SQ; IVF_PQ on servers)

Projection and code combine: ``pca256-int8``, ``pca128-binary-rerank4``, ``pca256-milvus:HNSW_SQ``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shelfsight.search.milvus_config import INDEX_TYPES

FLOAT = "float"
CODECS = ("float", "int8", "binary", "pq", "milvus")
ALL_METHODS: tuple[str, ...] = (
    "float", "pca512", "pca256", "pca128", "pca64", "pca256w", "int8", "pca256-int8", "pca128-int8", "pq64", "pq32",
    "binary", "binary-rerank4", "pca256-binary-rerank4", "milvus:IVF_SQ8", "milvus:HNSW_SQ", "milvus:IVF_PQ",
)
"""Every method family at a few sizes (``benchmarks/compression.py``): about 2.5 minutes per cell on Grocery
Store (2,936 gallery photos, 2,485 queries) on a busy 2-core CPU, half of it Milvus Lite's searches and PQ."""
DEFAULT_METHODS: tuple[str, ...] = (
    "float", "pca256", "pca128", "int8", "pca256-int8", "pca128-int8", "binary", "binary-rerank4", "pq32",
    "milvus:IVF_SQ8",
)
"""One or two sizes of each family and one Milvus type: about 35 s per Grocery Store cell on the same CPU."""

_PCA = re.compile(r"pca(\d+)(w?)")
_PQ = re.compile(r"pq(\d+)")
_RERANK = re.compile(r"rerank(\d+)")


@dataclass(frozen=True)
class CompressionMethod:
    """One parsed method: projection (``pca``, ``whiten``), code (``codec`` and its size), re-ranking."""

    name: str
    pca: int | None = None
    whiten: bool = False
    codec: str = FLOAT
    pq_m: int = 0
    rerank: int = 0
    milvus: str | None = None
    """The Milvus index type when ``codec`` is ``milvus``."""

    @property
    def family(self) -> str:
        """The code, with re-ranking named: groups methods in tables and plots."""
        code = f"milvus:{self.milvus}" if self.milvus else self.codec
        return f"{code}+rerank" if self.rerank else code

    @property
    def fits(self) -> bool:
        """Whether it learns from data (PCA, int8 ranges, PQ codebooks, Milvus's index); float and sign bits do not."""
        return self.pca is not None or self.codec in ("int8", "pq", "milvus")

    @property
    def backend(self) -> str:
        """What searches it, for the table: FAISS for the codes of this package, else Milvus."""
        if self.milvus:
            return f"Milvus {self.milvus}"
        return {"float": "FAISS IndexFlatIP", "int8": "FAISS IndexScalarQuantizer (SQ8)", "pq": "FAISS IndexPQ",
                "binary": "FAISS IndexBinaryFlat (Hamming)"}[self.codec]


def parse_method(text: str) -> CompressionMethod:
    """``pca256-int8`` -> CompressionMethod(pca=256, codec="int8"); a mistake names the grammar."""
    pca, whiten, codec, pq_m, rerank, milvus = None, False, FLOAT, 0, 0, None
    for token in str(text).strip().split("-"):
        if (match := _PCA.fullmatch(token)) and pca is None and codec == FLOAT:
            pca, whiten = int(match.group(1)), bool(match.group(2))
        elif token in ("int8", "binary", "float") and codec == FLOAT:
            codec = token
        elif (match := _PQ.fullmatch(token)) and codec == FLOAT:
            codec, pq_m = "pq", int(match.group(1))
        elif token.startswith("milvus:") and codec == FLOAT:
            codec, milvus = "milvus", token.split(":", 1)[1].upper()
        elif (match := _RERANK.fullmatch(token)) and codec == "binary" and not rerank:
            rerank = int(match.group(1))
        else:
            raise ValueError(f"compression method {text!r}: cannot read {token!r}; write [pcaD[w]-]CODE[-rerankR] "
                             "with CODE one of float, int8, pqM, binary, milvus:TYPE (rerankR after binary), "
                             "e.g. pca256-int8, binary-rerank4, milvus:IVF_SQ8")
    if milvus is not None and milvus not in INDEX_TYPES:
        raise ValueError(f"compression method {text!r}: shelfsight builds the Milvus index types "
                         f"{', '.join(INDEX_TYPES)}; Milvus Lite 3.2.2 knows neither SCANN nor IVF_RABITQ")
    if (pca is not None and pca < 1) or (codec == "pq" and pq_m < 1) or (rerank and rerank < 2):
        raise ValueError(f"compression method {text!r}: PCA dimensions and PQ sub-vectors must be >= 1, "
                         "a re-ranking factor >= 2")
    return CompressionMethod(_canonical(pca, whiten, codec, pq_m, rerank, milvus), pca, whiten, codec, pq_m,
                             rerank, milvus)


def _canonical(pca: int | None, whiten: bool, codec: str, pq_m: int, rerank: int, milvus: str | None) -> str:
    parts = [f"pca{pca}{'w' if whiten else ''}"] if pca is not None else []
    code = {"pq": f"pq{pq_m}", "milvus": f"milvus:{milvus}"}.get(codec, codec)
    if code != FLOAT or not parts:
        parts.append(code)
    if rerank:
        parts.append(f"rerank{rerank}")
    return "-".join(parts)


@dataclass(frozen=True)
class CompressConfig:
    """The ``compress:`` section of a bench config: the methods, the search depth scored, how throughput is
    measured, and the IVF / HNSW parameters of the Milvus index types (``nlist`` 0: the square root of the
    gallery size)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    depth: int = 10
    """Neighbours searched and scored (mMP@5, R@1..R@depth, recall@depth against exact float search); not the
    bench's ``retrieval.k``, the depth its other cells fetch."""
    batch1_queries: int = 100
    """Queries searched one at a time for the batch-1 throughput (the first ones of each protocol)."""
    nlist: int = 0
    nprobe: int = 16
    hnsw_m: int = 16
    ef: int = 64
    uri: str | None = None
    """A Milvus server for the ``milvus:`` methods (as ``index.uri``); default Milvus Lite in the cell's work folder."""
    threads: int = 1
    """FAISS and BLAS threads while building and searching: 1 gives per-core figures that hold on a shared CPU
    (where OpenMP threads wait on each other); 0 leaves the libraries' defaults (every core)."""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("compress.methods is empty: name at least one method, e.g. [float, pca256-int8]")
        names = [parse_method(m).name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"compress.methods names a method twice: {names}")
        for name in ("depth", "batch1_queries", "nprobe", "hnsw_m", "ef"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"compress.{name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"compress.threads must be >= 0 (0: FAISS's default), got {self.threads}")
        if self.nlist < 0:
            raise ValueError(f"compress.nlist must be >= 0 (0: square root of the gallery size), got {self.nlist}")

    def parsed(self) -> list[CompressionMethod]:
        return [parse_method(m) for m in self.methods]
