"""Score every compression method on every protocol of a cell: the work the ``compress`` strategies share.

Per protocol the gallery and queries come from the embeddings the strategy chose (frozen or top-tuned);
each method is fitted on items disjoint from the queries it is scored on (``compress.fit_plan``: the gallery,
else the protocol's training items, else a 2-fold cross-fit, so on leave-one-out protocols no query is ever
scored by a compression that learnt from it), searched with every query, and scored with the bench's metrics
at the ``compress.depth`` depth. Results go where the rest of shelfsight reads them:

- ``scores[protocol]["METHOD/METRIC"]``: mMP@k and R@k of each method (with per-query columns of the same
  names, so the results table gives them bootstrap intervals), ``METHOD/recall@k`` against exact float
  search of the uncompressed embedding, and the method's costs (``METHOD/bytes_per_item``...);
- ``details["compression"][protocol]``: one row per method (status, family, backend, what was built, what it
  was fitted on, the ratio of each metric to the ``float`` method's), which the report's compression section
  reads; ``details["compression_fit"][protocol]``: the fit plan (fit items and queries per fold). Under a
  cross-fit a method's costs are the mean over its folds (each fold builds the whole gallery).

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
from shelfsight.catalog import Catalog
from shelfsight.compress import (
    FLOAT,
    GALLERY,
    CompressConfig,
    CompressionMethod,
    FitPlan,
    MethodRun,
    MilvusPlace,
    NotApplicable,
    Projections,
    Side,
    fit_plan,
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


def methods_of(config: CompressConfig) -> list[CompressionMethod]:
    """The configured methods, the ``float`` reference first (added when missing: ratios are taken to it)."""
    methods = config.parsed()
    floats = [m for m in methods if m.name == FLOAT]
    return floats + [m for m in methods if m.name != FLOAT] if floats else [CompressionMethod(FLOAT), *methods]


def compress_protocols(inputs: StrategyInputs, protocols: list[tuple[RetrievalProtocol, Embeddings]],
                       config: CompressConfig) -> tuple[Scores, dict[str, Any], pd.DataFrame]:
    """Scores, the ``compression`` details and the per-query table of every method on every protocol."""
    methods = methods_of(config)
    place = (MilvusPlace(uri=config.uri, scope=str(inputs.workdir.resolve())) if config.uri
             else MilvusPlace(inputs.workdir / "milvus.db"))
    projections, runs = Projections(), _RunCache()
    scores: Scores = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    frames = []
    fits: dict[str, Any] = {}
    for protocol, embeddings in protocols:
        data = split_for(protocol, inputs.catalog, embeddings)
        plan = protocol_fit_plan(protocol, inputs.catalog, data, embeddings)
        whole, folds = _sides(data, protocol, embeddings, plan)
        reference = _exact(data, protocol, config.depth)
        ks = tuple(k for k in inputs.ks if k <= config.depth)
        prefix = f"{inputs.collection_prefix}_{protocol.name}"
        scored = [_score_method(method, _merged([runs.get(method, side, config, projections, place,
                                                          f"{prefix}_{method.name}")
                                                 for side in (folds if method.fits else [whole])], plan),
                                data, reference, ks, protocol.leave_one_out, plan) for method in methods]
        rows[protocol.name] = _with_ratios([row for row, _ in scored])
        fits[protocol.name] = plan.describe()
        scores[protocol.name] = {key: value for row, _ in scored for key, value in _flat(row).items()}
        frames.append(pd.DataFrame({"query": data.query_ids,
                                    **{k: v for _, per_query in scored for k, v in per_query.items()}})
                      .assign(protocol=protocol.name))
    details = {"compression": rows, "compression_fit": fits, "compress_settings": asdict(config)}
    return scores, details, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def protocol_fit_plan(protocol: RetrievalProtocol, catalog: Catalog, data: ProtocolSplit,
                      embeddings: Embeddings) -> FitPlan:
    """What each query's compression is fitted on (``compress.fit_plan``): the gallery, the protocol's
    embedded training items (class-disjoint protocols), or a cross-fit."""
    training = None
    if protocol.train is not None:
        items = {item.item_id: item for item in catalog}
        training = [i for i in embeddings.ids if i in items and protocol.train.includes(items[i])]
    return fit_plan(data.query_ids, data.gallery_ids, training)


def _sides(data: ProtocolSplit, protocol: RetrievalProtocol, embeddings: Embeddings,
           plan: FitPlan) -> tuple[Side, list[Side]]:
    """(every query against the gallery, fitted on the gallery: for methods that fit nothing; one side per fold of
    the plan: the whole gallery, the fold's queries and its fit set, which is the former for a gallery fit)."""
    exclude: list[str | None] | None = list(data.query_ids) if protocol.leave_one_out else None
    key = _digest(embeddings.key.encode(), "\n".join(data.gallery_ids).encode())
    whole = Side(list(data.gallery_ids), data.gallery_vectors, data.query_vectors, exclude, key)
    if plan.on == GALLERY:
        return whole, [whole]
    rows = {item_id: row for row, item_id in enumerate(embeddings.ids)}
    sides = []
    for fold in plan.folds:
        fit = embeddings.vectors[[rows[i] for i in fold.fit_ids]]
        sides.append(Side(list(data.gallery_ids), data.gallery_vectors, data.query_vectors[fold.query_rows],
                          None if exclude is None else [exclude[r] for r in fold.query_rows], key, fit=fit,
                          fit_key=_digest(embeddings.key.encode(), "\n".join(fold.fit_ids).encode())))
    return whole, sides


def _merged(runs: list[MethodRun | Exception], plan: FitPlan) -> MethodRun | Exception:
    """The folds' answers put back in query order, costs averaged over folds; the first failure if any failed."""
    failure = next((run for run in runs if isinstance(run, Exception)), None)
    if failure is not None:
        return failure
    done = [run for run in runs if isinstance(run, MethodRun)]
    if len(done) == 1:
        return done[0]
    n = sum(len(fold.query_rows) for fold in plan.folds)
    depth = done[0].answer.indices.shape[1]
    indices = np.full((n, depth), -1, dtype=np.int64)
    scores = np.full((n, depth), -np.inf, dtype=np.float32)
    ids: list[list[str]] = [[] for _ in range(n)]
    for fold, run in zip(plan.folds, done, strict=True):
        indices[fold.query_rows], scores[fold.query_rows] = run.answer.indices, run.answer.scores
        for row, found in zip(fold.query_rows, run.answer.ids, strict=True):
            ids[row] = found
    costs = {name: float(np.mean([run.costs[name] for run in done])) for name in done[0].costs}
    return MethodRun(done[0].method, SearchResult(indices=indices, scores=scores, ids=ids), costs, done[0].details)


class _RunCache:
    """Runs by (method, gallery, queries): protocols that differ only in relevance (Grocery Store's fine and
    coarse) search one index with the same queries, so each method is built and timed once for both."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, bytes], MethodRun | Exception] = {}

    def get(self, method: CompressionMethod, side: Side, config: CompressConfig, projections: Projections,
            place: MilvusPlace, collection: str) -> MethodRun | Exception:
        """The method's run, or the exception that stopped it (kept: the other methods still count)."""
        key = (method.name, side.key + side.fit_key + _digest(side.queries.tobytes(), str(side.exclude).encode()))
        if key not in self._runs:
            try:
                self._runs[key] = run_method(method, side, config=config, projections=projections, place=place,
                                             collection=collection)
            except Exception as error:  # noqa: BLE001 - one method failing leaves the others standing
                self._runs[key] = error
        return self._runs[key]


def _exact(data: ProtocolSplit, protocol: RetrievalProtocol, k: int) -> SearchResult:
    """Exact float search of the uncompressed embedding: what each method's recall is measured against."""
    exact = ExactIndex()
    exact.add(data.gallery_ids, data.gallery_vectors)
    return exact.search(data.query_vectors, k, exclude_ids=list(data.query_ids) if protocol.leave_one_out else None)


NOTHING_FITTED = "nothing fitted"


def _score_method(method: CompressionMethod, result: MethodRun | Exception, data: ProtocolSplit,
                  reference: SearchResult, ks: tuple[int, ...], same_set: bool, plan: FitPlan
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One method's table row and its per-query columns (none when it was skipped, refused or failed)."""
    row: dict[str, Any] = {"method": method.name, "family": method.family, "backend": method.backend,
                           "pca": method.pca, "whiten": method.whiten, "rerank": method.rerank,
                           "fitted_on": plan.on if method.fits else NOTHING_FITTED}
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
