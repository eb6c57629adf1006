"""Evaluation metrics of the benchmark protocol: retrieval (mMP@5, R@k, MAP@R, ...) and classification.

Retrieval metrics read one ``(Q, K)`` neighbour array searched once; see ``retrieval`` for the
conventions (excluded queries, leave-one-out, padding). Full-ranking AP, MAP@R and R-precision read each relevant
item's rank, counted from score blocks (``ranking``).
"""

from shelfsight.metrics.classification import ClassificationReport, classification_report
from shelfsight.metrics.openset import auroc, fpr_at_tpr, precision_threshold
from shelfsight.metrics.ranking import RelevantRanks, full_ranking_average_precision
from shelfsight.metrics.retrieval import (
    RetrievalReport,
    average_precision,
    average_precision_per_query,
    count_relevant,
    encode_labels,
    map_at_r,
    map_at_r_per_query,
    mmp_at_k,
    mmp_at_k_per_query,
    mrr,
    mrr_per_query,
    ndcg_at_k,
    ndcg_at_k_per_query,
    precision_at_k,
    precision_at_k_per_query,
    r_precision,
    r_precision_per_query,
    recall_at_k,
    recall_at_k_per_query,
    relevance,
    retrieval_report,
)

__all__ = [
    "ClassificationReport", "RelevantRanks", "RetrievalReport", "auroc", "average_precision",
    "average_precision_per_query", "classification_report", "count_relevant", "encode_labels", "fpr_at_tpr",
    "full_ranking_average_precision", "map_at_r", "precision_threshold",
    "map_at_r_per_query", "mmp_at_k", "mmp_at_k_per_query", "mrr", "mrr_per_query", "ndcg_at_k",
    "ndcg_at_k_per_query", "precision_at_k", "precision_at_k_per_query", "r_precision", "r_precision_per_query",
    "recall_at_k", "recall_at_k_per_query", "relevance", "retrieval_report",
]
