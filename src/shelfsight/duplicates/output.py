"""The files a duplicate search leaves: pairs and clusters as CSV, and one self-contained HTML page.

The page embeds downscaled thumbnails as data URIs (like the report), so it opens offline and can be
mailed to whoever cleans the catalogue.
"""

from __future__ import annotations

import csv
from html import escape
from pathlib import Path

from shelfsight.catalog.thumbnails import Thumbnails
from shelfsight.duplicates.clusters import DuplicateReport
from shelfsight.files import atomic_write

SHOWN_CLUSTERS = 200
"""The page shows the largest clusters; the CSVs hold all of them."""
THUMBNAIL = 120


def write_outputs(report: DuplicateReport, folder: str | Path) -> dict[str, Path]:
    """``pairs.csv``, ``clusters.csv`` and ``duplicates.html`` in ``folder``; their paths by name."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    paths = {"pairs": target / "pairs.csv", "clusters": target / "clusters.csv", "html": target / "duplicates.html"}
    write_pairs_csv(report, paths["pairs"])
    write_clusters_csv(report, paths["clusters"])
    page = render_html(report)
    atomic_write(paths["html"], lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return paths


def _cluster_of(report: DuplicateReport) -> dict[str, int]:
    return {item_id: cluster.number for cluster in report.clusters for item_id in cluster.ids}


def write_pairs_csv(report: DuplicateReport, path: Path) -> None:
    """One row per pair: cluster (empty when the two are in different clusters or none: complete linkage keeps a
    pair apart when it would join photos below the threshold), ids, paths, similarity (1 for exact copies), kind."""
    cluster = _cluster_of(report)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cluster", "id_a", "id_b", "path_a", "path_b", "similarity", "kind"])
        for pair in report.pairs:
            shared = cluster.get(pair.a) if cluster.get(pair.a) == cluster.get(pair.b) else None
            writer.writerow(["" if shared is None else shared, pair.a, pair.b, report.paths.get(pair.a, ""),
                             report.paths.get(pair.b, ""), f"{pair.similarity:.6f}", pair.kind])


def write_clusters_csv(report: DuplicateReport, path: Path) -> None:
    """One row per item of a cluster: cluster, size, id, path, label, the cluster's best and weakest similarity,
    and its weakest pair."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cluster", "size", "id", "path", "label", "max_similarity", "min_similarity", "exact",
                         "weakest_pair"])
        for cluster in report.clusters:
            for item_id in cluster.ids:
                writer.writerow([cluster.number, len(cluster.ids), item_id, report.paths.get(item_id, ""),
                                 report.labels.get(item_id, ""), f"{cluster.max_similarity:.6f}",
                                 f"{cluster.min_similarity:.6f}", cluster.exact, " ~ ".join(cluster.weakest)])


def render_html(report: DuplicateReport, shown: int = SHOWN_CLUSTERS) -> str:
    """The page: a summary line, then each cluster as a row of captioned thumbnails."""
    thumbs = Thumbnails(size=THUMBNAIL)
    threshold = "exact copies only" if report.threshold is None else f"cosine &ge; {report.threshold:.4f}"
    rows = []
    for cluster in report.clusters[:shown]:
        figures = "".join(
            f'<figure><img src="{thumbs.uri(report.paths.get(i, ""))}" alt="{escape(i)}">'
            f"<figcaption>{escape(i)}<br><small>{escape(report.labels.get(i, ''))}</small></figcaption></figure>"
            for i in cluster.ids)
        kind = "exact copy" if cluster.exact else "near-duplicate"
        rows.append(f'<section><h2>Cluster {cluster.number}: {len(cluster.ids)} items, {kind}, '
                    f"similarity {cluster.min_similarity:.4f} to {cluster.max_similarity:.4f} (weakest pair: "
                    f"{escape(' ~ '.join(cluster.weakest))})</h2><div class=row>{figures}</div></section>")
    more = (f"<p>{len(report.clusters) - shown} smaller clusters are in clusters.csv only.</p>"
            if len(report.clusters) > shown else "")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Duplicates in {escape(report.catalog)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>Duplicates in {escape(report.catalog)}</h1>"
            f"<p>{report.items:,} items; {len(report.pairs):,} pairs ({report.exact_pairs:,} exact); "
            f"{len(report.clusters):,} clusters holding {report.duplicated_items:,} items; {threshold}.</p>"
            + "".join(rows) + more + "</body></html>")


_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h2{font-size:1em;margin:.8em 0 .3em}"
          ".row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:130px;font-size:11px;word-break:break-all}"
          "img{width:120px;height:120px;object-fit:contain;background:#f3f3f3;border:1px solid #ccc}")
