"""Statistics behind trustworthy benchmark numbers: confidence intervals, paired tests, multiple comparisons.

- ``bootstrap_interval`` / ``classification_interval``: how far a cell's number could move with another draw of
  queries (and seeds): a percentile bootstrap over queries (stratified by true class for macro scores), a two-level
  t interval when seeds vary. Their coverage is measured by simulation in ``tests/test_coverage.py``.
- ``paired_comparison`` / ``paired_classification``: whether two cells scored on the same queries differ.
- ``holm``: adjust a family of p-values before calling any of them significant.
"""

from shelfsight.stats.bootstrap import ClassificationMetric, Interval, bootstrap_interval, classification_interval
from shelfsight.stats.multiple import holm
from shelfsight.stats.paired import Comparison, paired_classification, paired_comparison

__all__ = [
    "ClassificationMetric", "Comparison", "Interval", "bootstrap_interval", "classification_interval", "holm",
    "paired_classification", "paired_comparison",
]
