"""The embedding compression frontier on Grocery Store: quality kept against bytes per item and speed.

Runs a bench (``compress`` and ``compress-toptune`` on efficientnet_lite0 and lite2 at 224 px, protocols
``fine`` and ``coarse``; the top-tuned heads are trained into the ``toptune`` cells' work folders, as a bench
with ``toptune`` would, and each cell's ``float`` method is the uncompressed reference) and prints, per model,
embedding and protocol, every method's mMP@5 and R@1 retained (ratio to the float embedding) against its
bytes per item, with its index size, build time, queries/s and recall against exact float search; then the
two figures the compression issue asks for (binary + re-ranking, PCA-256 + int8) stated explicitly.

    SHELFSIGHT_DATA_DIR=/path/to/datasets .venv/bin/python benchmarks/compression.py [--run-dir runs/compression]

A rerun reuses every cell whose inputs are unchanged (the embeddings come from the cache); the report of
the run (``shelfsight report RUN``) has the frontier plot and the memory-budget recommendation.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from shelfsight.bench import load_config, run_bench
from shelfsight.bench.results import ResultStore
from shelfsight.compress import ALL_METHODS

MODELS = ("efficientnet_lite0", "efficientnet_lite2")
PROTOCOLS = ("fine", "coarse")
HEADLINES = ("binary-rerank4", "pca256-int8")


def config(trials: int) -> dict[str, Any]:
    return {
        "name": "compression", "models": list(MODELS), "datasets": ["grocery-store"],
        "strategies": ["compress", "compress-toptune"],
        "toptune": {"trials": trials, "trial_epochs": 30, "trial_repeats": 1, "final_max_epochs": 1000,
                    "patience": 20},
        "index": {"backend": "milvus-lite", "type": "FLAT"}, "retrieval": {"k": 100, "ks": [1, 5, 10]},
        "tracking": {"enabled": False}, "compress": {"methods": list(ALL_METHODS)},
    }


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per (model, embedding, protocol, method) of the run's compress cells."""
    found = []
    for cell in ResultStore(run_dir).load_all():
        if cell.status != "ok" or "compression" not in cell.details:
            continue
        for protocol, methods in cell.details["compression"].items():
            for row in methods:
                found.append({"model": cell.cell.model, "embedding": cell.details.get("compressed", ""),
                              "protocol": protocol, **row})
    return found


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _kept(row: dict[str, Any] | None, metric: str) -> str:
    """``0.588 (102%)``: the method's metric and its ratio to the float embedding's."""
    if row is None or row.get("status") != "ok":
        return "-"
    return f"{row['metrics'][metric]:.3f} ({100 * row['retained'][metric]:.1f}%)"


def table(found: list[dict[str, Any]]) -> str:
    """Per model and embedding, one row per method: bytes per item, mMP@5 and R@1 with the share of the float
    embedding's kept on each protocol, recall against exact float search and the costs (first protocol's
    index: ``fine`` and ``coarse`` share their gallery and queries, so one index serves both)."""
    by_key = {(r["model"], r["embedding"], r["protocol"], r["method"]): r for r in found}
    out = []
    for model, embedding in sorted({(r["model"], r["embedding"]) for r in found}):
        out += [f"### {model} · {embedding}", "",
                "| method | bytes/item | " + " | ".join(f"{p} mMP@5 (kept) | {p} R@1 (kept)" for p in PROTOCOLS)
                + " | recall@10 | index KB | build s | q/s batch 1 | q/s batched |", "|" + " --- |" * 11]
        methods = dict.fromkeys(r["method"] for r in found if (r["model"], r["embedding"]) == (model, embedding))
        for method in methods:
            rows = [by_key.get((model, embedding, p, method)) for p in PROTOCOLS]
            first = rows[0] or {}
            if first.get("status") != "ok":
                out.append(f"| {method} | {first.get('status', '?')}: {str(first.get('reason', ''))[:100]} |"
                           + " |" * 9)
                continue
            costs = first["costs"]
            cells = [text for row in rows for text in (_kept(row, "mMP@5"), _kept(row, "R@1"))]
            out.append(f"| {method} | {costs['bytes_per_item']:,.0f} | " + " | ".join(cells) + " | "
                       f"{_number(first['metrics'].get('recall@10'))} | {_number(costs['index_bytes'] / 1e3, 0)} | "
                       f"{_number(costs['build_seconds'], 2)} | {_number(costs['qps_batch1'], 0)} | "
                       f"{_number(costs['qps_batched'], 0)} |")
        out.append("")
    return "\n".join(out)


def headlines(found: list[dict[str, Any]]) -> str:
    """The two figures stated explicitly, per model, embedding and protocol."""
    out = []
    for method in HEADLINES:
        for row in found:
            if row["method"] == method and row.get("status") == "ok" and row["protocol"] in PROTOCOLS:
                kept = row["retained"]
                out.append(f"{method}: {row['model']} {row['embedding']} {row['protocol']}: "
                           f"{row['costs']['bytes_per_item']:.0f} bytes/item keeps {100 * kept['mMP@5']:.1f}% of "
                           f"mMP@5 and {100 * kept['R@1']:.1f}% of R@1")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/compression"))
    parser.add_argument("--trials", type=int, default=8, help="top-tuning trials (the demo's budget)")
    parser.add_argument("--recompute", nargs="*", default=[], help="cell id patterns to compute again")
    args = parser.parse_args()
    summary = run_bench(load_config(config(args.trials)), args.run_dir, progress=True, recompute=args.recompute)
    if summary.failed:
        print(f"failed cells: {summary.failed}")
    found = rows(args.run_dir)
    print(table(found))
    print()
    print(headlines(found))


if __name__ == "__main__":
    main()
