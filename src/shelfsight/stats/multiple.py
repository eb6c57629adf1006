"""Multiple-comparison correction: a benchmark compares many cells, and some pass p < 0.05 by chance alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["holm"]


def holm(p_values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: compare each to alpha to control the family-wise error rate.

    Uniformly more powerful than Bonferroni and valid under any dependence between the tests (comparisons that
    share a model or a query set are dependent). The ``i``-th smallest of ``m`` p-values becomes
    ``max over j <= i of (m - j + 1) * p_(j)``, clipped at 1. NaN (a comparison that could not be made) stays NaN
    and does not count towards ``m``. The result has the input's shape."""
    p = np.asarray(p_values, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    flat = p.ravel()
    valid = np.flatnonzero(~np.isnan(flat))
    order = valid[np.argsort(flat[valid], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * flat[order]))
    out = np.full(flat.shape, np.nan)
    out[order] = adjusted
    return out.reshape(p.shape)
