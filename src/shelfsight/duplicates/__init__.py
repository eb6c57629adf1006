"""Duplicate listings and leakage between splits, on the embeddings shelfsight already computes.

Exact duplicates are the same bytes (a content digest); near-duplicates are embeddings whose cosine
similarity reaches a threshold calibrated on real photos and their edited copies (``calibrate``), against
the perceptual hashes of ``imagehash`` as the baseline (calibrations for the offline backbones ship in
``calibrations/``). Pairs group into complete-linkage clusters (``find_duplicates``);
a protocol leaks when its queries have duplicates in its gallery (``protocol_leakage``).
"""

from shelfsight.duplicates.calibration import (
    SHIPPED,
    CalibrationError,
    CalibrationSettings,
    calibrate,
    calibrate_and_store,
    calibrated_threshold,
    default_path,
    find_calibration,
    load_calibration,
    save_calibration,
    shippable,
    shipped_path,
)
from shelfsight.duplicates.clusters import Cluster, DuplicateReport, clusters_of, find_duplicates
from shelfsight.duplicates.hashing import content_hash, content_hashes
from shelfsight.duplicates.leakage import ProtocolLeakage, protocol_leakage
from shelfsight.duplicates.near import Pair, cross_pairs, self_pairs
from shelfsight.duplicates.output import write_outputs
from shelfsight.duplicates.transforms import TRANSFORMS, Transform

__all__ = [
    "SHIPPED", "TRANSFORMS", "CalibrationError", "CalibrationSettings", "Cluster", "DuplicateReport", "Pair",
    "ProtocolLeakage", "Transform", "calibrate", "calibrate_and_store", "calibrated_threshold", "clusters_of",
    "content_hash", "content_hashes", "cross_pairs", "default_path", "find_calibration", "find_duplicates",
    "load_calibration", "protocol_leakage", "save_calibration", "self_pairs", "shippable", "shipped_path",
    "write_outputs",
]
