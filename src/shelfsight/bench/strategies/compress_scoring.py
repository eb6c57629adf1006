"""Score every compression method on every protocol of a cell: the work the ``compress`` strategies share.

Per protocol the gallery and queries come from the embeddings the strategy chose (frozen or top-tuned);
each method is built on the gallery only, searched with every query, and scored with the bench's metrics
at the ``compress.k`` depth. Results go where the rest of shelfsight reads them:

- ``scores[protocol]["METHOD/METRIC"]``: mMP@k and R@k of each method (with per-query columns of the same
  names, so the results table gives them bootstrap intervals), ``METHOD/recall@k`` against exact float
  search of the uncompressed embedding, and the method's costs (``METHOD/bytes_per_item``...);
- ``details["compression"][protocol]``: one row per method (status, family, backend, what was built, the
  ratio of each metric to the ``float`` method's), which the report's compression section reads.

A method that cannot apply (PCA wider than the embedding) is ``skipped``, one the index refuses (IVF_PQ on
Milvus Lite) is ``refused``: both with the reason, and the cell goes on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from shelfsight.bench.evaluate import ProtocolSplit, split_for
from shelfsight.bench.strategies.base import Scores, StrategyInputs
from shelfsight.compress import (
    FLOAT,
    CompressConfig,
    CompressionMethod,
    MethodRun,
    MilvusPlace,
    NotApplicable,
    Projections,
    Side,
    run_method,
)
from shelfsight.embeddings import Embeddings
from shelfsight.errors import ShelfsightError
from shelfsight.metrics import retrieval_report
from shelfsight.protocols import RetrievalProtocol
from shelfsight.search import ExactIndex, SearchResult, recall_against_exact

SEPARATOR = "/"
"""Between a method and a metric or cost: ``pca256-int8/mMP@5``."""
COST_COLUMNS = ("bytes_per_item", "rerank_bytes_per_item", "index_bytes", "memory_bytes", "disk_bytes",
                "fixed_bytes", "fixed_bytes_projection", "build_seconds", "qps_batch1", "qps_batched", "dim", "items")
"""Every method's cost columns, in the table's order (NaN where unknown, e.g. Milvus Lite's memory)."""


def compress_config(inputs: StrategyInputs, name: str) -> CompressConfig:
    """The ``compress:`` section as the strategy's settings carried it (lists back to tuples)."""
    options: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
               for key, value in inputs.options.get(name, {}).get("compress", {}).items()}
    return CompressConfig(**options)


def methods_of(config: CompressConfig) -> list[CompressionMethod]:
    """The configured methods, the ``float`` reference first (added when missing: ratios are taken to it)."""
    methods = config.parsed()
    floats = [m for m in methods if m.name == FLOAT]
    return floats + [m for m in methods if m.name != FLOAT] if floats else [CompressionMethod(FLOAT), *methods]


def compress_protocols(inputs: StrategyInputs, protocols: list[tuple[RetrievalProtocol, Embeddings]],
                       config: CompressConfig) -> tuple[Scores, dict[str, Any], pd.DataFrame]:
    """Scores, the ``compression`` details and the per-query table of every method on every protocol."""
    methods = methods_of(config)
    place = MilvusPlace(uri=config.milvus_uri) if config.milvus_uri else MilvusPlace(inputs.workdir / "milvus.db")
    projections, runs = Projections(), _RunCache()
    scores: Scores = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    frames = []
    for protocol, embeddings in protocols:
        data = split_for(protocol, inputs.catalog, embeddings)
        side = _side(data, protocol, embeddings)
        reference = _exact(data, side, config.k)
        ks = tuple(k for k in inputs.ks if k <= config.k)
        prefix = f"{inputs.collection_prefix}_{protocol.name}"
        scored = [_score_method(method, runs.get(method, side, config, projections, place, f"{prefix}_{method.name}"),
                                data, reference, ks, protocol.leave_one_out) for method in methods]
        rows[protocol.name] = _with_ratios([row for row, _ in scored])
        scores[protocol.name] = {key: value for row, _ in scored for key, value in _flat(row).items()}
        frames.append(pd.DataFrame({"query": data.query_ids,
                                    **{k: v for _, per_query in scored for k, v in per_query.items()}})
                      .assign(protocol=protocol.name))
    details = {"compression": rows, "compress_settings": asdict(config)}
    return scores, details, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class _RunCache:
    """Runs by (method, gallery, queries): protocols that differ only in relevance (Grocery Store's fine and
    coarse) search one index with the same queries, so each method is built and timed once for both."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, bytes], MethodRun | Exception] = {}

    def get(self, method: CompressionMethod, side: Side, config: CompressConfig, projections: Projections,
            place: MilvusPlace, collection: str) -> MethodRun | Exception:
        """The method's run, or the exception that stopped it (kept: the other methods still count)."""
        key = (method.name, side.key + _digest(side.queries.tobytes(), str(side.exclude).encode()))
        if key not in self._runs:
            try:
                self._runs[key] = run_method(method, side, config=config, projections=projections, place=place,
                                             collection=collection)
            except Exception as error:  # noqa: BLE001 - one method failing leaves the others standing
                self._runs[key] = error
        return self._runs[key]


def _side(data: ProtocolSplit, protocol: RetrievalProtocol, embeddings: Embeddings) -> Side:
    exclude: list[str | None] | None = list(data.query_ids) if protocol.leave_one_out else None
    key = _digest(embeddings.key.encode(), "\n".join(data.gallery_ids).encode())
    return Side(list(data.gallery_ids), data.gallery_vectors, data.query_vectors, exclude, key)


def _exact(data: ProtocolSplit, side: Side, k: int) -> SearchResult:
    """Exact float search of the uncompressed embedding: what each method's recall is measured against."""
    exact = ExactIndex()
    exact.add(data.gallery_ids, data.gallery_vectors)
    return exact.search(data.query_vectors, k, exclude_ids=side.exclude)


def _score_method(method: CompressionMethod, result: MethodRun | Exception, data: ProtocolSplit,
                  reference: SearchResult, ks: tuple[int, ...], same_set: bool
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One method's table row and its per-query columns (none when it was skipped, refused or failed)."""
    row: dict[str, Any] = {"method": method.name, "family": method.family, "backend": method.backend,
                           "pca": method.pca, "whiten": method.whiten, "rerank": method.rerank}
    if isinstance(result, Exception):
        return {**row, "status": _status(result), "reason": _reason(result)}, {}
    report = retrieval_report(data.query_keys, data.gallery_keys, result.answer.indices, same_set=same_set, ks=ks)
    kept = {name: values for name, values in report.per_query.items()
            if name.split("@")[0] in ("mMP", "R") and name in {f"{m}@{k}" for m in ("mMP", "R") for k in ks}}
    depth = reference.indices.shape[1]
    metrics = {name: float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
               for name, values in kept.items()}
    metrics[f"recall@{depth}"] = recall_against_exact(result.answer, reference)
    row.update(status="ok", metrics=metrics, costs=result.costs, **result.details)
    return row, {f"{method.name}{SEPARATOR}{name}": values for name, values in kept.items()}


def _status(error: Exception) -> str:
    """``skipped``: cannot apply to this embedding; ``refused``: the index cannot build it; else ``failed``."""
    if isinstance(error, NotApplicable):
        return "skipped"
    return "refused" if isinstance(error, ShelfsightError) else "failed"


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, NotApplicable | ShelfsightError) else f"{type(error).__name__}: {error}"


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ok row gains ``retained``: its metrics over the ``float`` row's (the quality kept)."""
    reference: dict[str, float] = next((r.get("metrics", {}) for r in rows if r["method"] == FLOAT), {})
    for row in rows:
        if row.get("status") == "ok":
            row["retained"] = {name: value / reference[name] if reference.get(name) else math.nan
                               for name, value in row["metrics"].items() if not name.startswith("recall@")}
    return rows


def _flat(row: dict[str, Any]) -> dict[str, float]:
    """A row's metrics and costs as ``METHOD/NAME`` scores."""
    values = {**row.get("metrics", {}), **row.get("costs", {})}
    return {f"{row['method']}{SEPARATOR}{name}": float(value) for name, value in values.items()}


def _digest(*parts: bytes) -> bytes:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.digest()
