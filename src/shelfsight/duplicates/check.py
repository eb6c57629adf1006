"""The leakage part of ``shelfsight datasets check``: each protocol's queries with a duplicate in its gallery.

``catalog.check.check_dataset`` verifies the download (counts, files, labels) without any model; this adds what
needs the duplicate search above the catalogue: byte-identical copies always (when the images were decoded), and
near-duplicates too given a model (its embeddings at a given cosine, or its calibrated one for precision 0.99).
"""

from __future__ import annotations

from dataclasses import replace

from shelfsight.backbones import load_backbone
from shelfsight.catalog import Catalog, protocols_for
from shelfsight.catalog.check import CheckReport
from shelfsight.duplicates.hashing import content_hashes
from shelfsight.duplicates.leakage import ProtocolLeakage, protocol_leakage
from shelfsight.duplicates.run import resolve_threshold
from shelfsight.embeddings import embed_catalog


def with_leakage(report: CheckReport, *, model: str | None = None, threshold: float | None = None,
                 progress: bool = False) -> CheckReport:
    """``report`` with each protocol's leakage, measured on the catalogue it loaded; unchanged when nothing
    loaded, the images were not decoded (``--no-decode``: a presence check only) or the metadata has errors."""
    if report.catalog is None or not report.decoded or report.errors:
        return report
    return replace(report, leakage=dataset_leakage(report.name, report.catalog, model, threshold, progress))


def dataset_leakage(source: str, catalog: Catalog, model: str | None = None, threshold: float | None = None,
                    progress: bool = False) -> tuple[ProtocolLeakage, ...]:
    """Each protocol's queries with a duplicate in its gallery (exact; near too with a model)."""
    embeddings, cosine = None, None
    if model is not None:
        cosine = resolve_threshold(model, threshold, None).value
        embeddings = embed_catalog(catalog, load_backbone(model), progress=progress)
    hashes = content_hashes(catalog)
    return tuple(protocol_leakage(p, catalog, embeddings, cosine, hashes=hashes)
                 for p in protocols_for(source, catalog))
