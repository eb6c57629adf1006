"""PCA projections fitted on items disjoint from the evaluated queries (scikit-learn), shared by the methods
that use them.

Fitting on the gallery is what a deployment can do (the catalogue is known, tomorrow's query photos are not)
and keeps the test queries out of what the compression learnt. Where the gallery holds the queries (leave-one-out
protocols: SOP, Cars196, a user catalogue without splits) the fit set is the protocol's training items or the
other half of a cross-fit (``bench.strategies.compress_scoring.fit_plan``). Projected vectors are L2-normalised
again, so inner products stay cosine similarities and Milvus accepts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


class NotApplicable(ValueError):
    """A method that cannot apply to this embedding (PCA to more dimensions than it has, PQ that does not
    divide them): recorded as skipped, with the reason, not as a failure."""


@dataclass(frozen=True)
class Projection:
    """A fitted PCA (None: identity) and what fitting it cost."""

    pca: PCA | None
    fit_seconds: float = 0.0

    @property
    def dim(self) -> int | None:
        return None if self.pca is None else int(self.pca.n_components_)

    @property
    def parameter_bytes(self) -> int:
        """Bytes to keep the projection (components, mean, variances as float32): fixed, not per item."""
        if self.pca is None:
            return 0
        return 4 * (self.pca.components_.size + self.pca.mean_.size + self.pca.explained_variance_.size)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Projected and re-normalised float32 vectors (the identity keeps them as they are)."""
        if self.pca is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        projected = self.pca.transform(np.asarray(vectors, dtype=np.float32)).astype(np.float32)
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return np.ascontiguousarray(projected / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def fit_projection(fit: np.ndarray, dim: int | None, *, whiten: bool = False) -> Projection:
    """PCA of the ``fit`` vectors to ``dim`` components (None: no projection); full SVD, so deterministic."""
    if dim is None:
        return Projection(None)
    limit = min(fit.shape)
    if dim >= fit.shape[1] or dim > limit:
        raise NotApplicable(f"PCA to {dim} dimensions needs more than {dim} dimensions and at least {dim} items to "
                            f"fit on; the embedding has {fit.shape[1]} dimensions and the fit set {fit.shape[0]} "
                            "items")
    started = time.perf_counter()
    pca = PCA(n_components=dim, whiten=whiten, svd_solver="full").fit(np.asarray(fit, dtype=np.float32))
    return Projection(pca, time.perf_counter() - started)


class Projections:
    """Fitted projections by (fit set, dimension, whitening): fine and coarse protocols of a dataset share their
    gallery, and several methods share a PCA, so each is fitted once."""

    def __init__(self) -> None:
        self._fitted: dict[tuple[bytes, int | None, bool], Projection] = {}

    def get(self, fit_key: bytes, fit: np.ndarray, dim: int | None, whiten: bool) -> Projection:
        key = (fit_key, dim, whiten)
        if key not in self._fitted:
            self._fitted[key] = fit_projection(fit, dim, whiten=whiten)
        return self._fitted[key]
