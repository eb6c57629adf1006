"""Embedding compression measured as a deployment would pay for it: bytes per item, index size, build time,
queries/s, and the retrieval quality kept.

A method (``methods.py``) is an optional PCA (``project.py``, scikit-learn) and a code: float, int8 scalar
quantisation or product quantisation (FAISS), sign bits with Hamming search and optional float re-ranking (FAISS
``IndexBinaryFlat``), or a Milvus index type that compresses (IVF_SQ8, HNSW_SQ; IVF_PQ on a server, where no
FAISS is involved; ``indexes.py`` checks with ``describe_index`` that it was built, and on a server that no row is
left unindexed). What is fitted (PCA, int8 ranges, PQ codebooks) learns from items disjoint
from the queries it is scored on (``fitting.py``: the gallery; on leave-one-out protocols the training split or a
cross-fit). ``measure.run_method`` builds, sizes, times and searches one method on one gallery. The bench
strategies ``compress`` and ``compress-toptune`` run every method of the config's ``compress:`` section on every
protocol.
"""

from shelfsight.compress.fitting import CROSS_FIT, GALLERY, TRAIN_SPLIT, FitPlan, Fold, fit_plan
from shelfsight.compress.indexes import MilvusPlace, make_index, sizes
from shelfsight.compress.measure import MethodRun, Side, run_method
from shelfsight.compress.methods import (
    ALL_METHODS,
    DEFAULT_METHODS,
    FLOAT,
    CompressConfig,
    CompressionMethod,
    parse_method,
)
from shelfsight.compress.project import NotApplicable, Projection, Projections, fit_projection

__all__ = [
    "ALL_METHODS", "CROSS_FIT", "DEFAULT_METHODS", "FLOAT", "GALLERY", "TRAIN_SPLIT", "CompressConfig",
    "CompressionMethod", "FitPlan", "Fold", "MethodRun", "MilvusPlace", "NotApplicable", "Projection", "Projections",
    "Side", "fit_plan", "fit_projection", "make_index", "parse_method", "run_method", "sizes",
]
