"""Embedding compression measured as a deployment would pay for it: bytes per item, index size, build time,
queries/s, and the retrieval quality kept.

A method (``methods.py``) is an optional PCA fitted on the gallery only (``project.py``, scikit-learn) and a
code: float, int8 scalar quantisation or product quantisation (FAISS), sign bits with Hamming search and
optional float re-ranking (FAISS ``IndexBinaryFlat``), or a Milvus index type that compresses (IVF_SQ8,
HNSW_SQ; ``indexes.py`` checks with ``describe_index`` that it was built). ``measure.run_method`` builds,
sizes, times and searches one method on one gallery. The bench strategies ``compress`` and
``compress-toptune`` run every method of the config's ``compress:`` section on every protocol.
"""

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
    "ALL_METHODS", "DEFAULT_METHODS", "FLOAT", "CompressConfig", "CompressionMethod", "MethodRun", "MilvusPlace",
    "NotApplicable", "Projection", "Projections", "Side", "fit_projection", "make_index", "parse_method",
    "run_method", "sizes",
]
