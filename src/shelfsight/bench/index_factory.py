"""The vector index each cell's protocols are scored in, as the config's ``index:`` section says, and the
collection names that keep cells apart in one Milvus database."""

from __future__ import annotations

import re
from pathlib import Path

from shelfsight.bench.config import IndexConfig
from shelfsight.bench.evaluate import IndexFactory
from shelfsight.bench.results import Cell
from shelfsight.search import VectorIndex, open_index
from shelfsight.search.milvus_config import index_options

MILVUS_LITE_FILE = "milvus.db"
"""Milvus Lite's database, in the run folder."""


def index_factory(index: IndexConfig, run_dir: Path) -> IndexFactory:
    """``make(collection, dim)``: a fresh index of the configured backend (Milvus Lite in the run folder)."""

    def make(collection: str, dim: int) -> VectorIndex:
        if index.backend == "exact":
            return open_index("exact")
        if index.backend == "faiss":
            return open_index("faiss", dim=dim)
        common = {"collection": milvus_name(collection), "dim": dim, "index_type": index.type, "overwrite": True,
                  "build_timeout": index.build_timeout, **index_options(index.type, index.params, dim)}
        if index.backend == "milvus-lite":
            return open_index("milvus-lite", path=run_dir / MILVUS_LITE_FILE, **common)
        return open_index("milvus", uri=index.uri, token=index.token or "", **common)

    return make


def collection_name(cell: Cell) -> str:
    """Milvus collection names: letters, digits and underscores, starting with a letter."""
    return "c_" + milvus_name(cell.cell_id)[:180]


def milvus_name(name: str) -> str:
    """``name`` with every character a Milvus server refuses in a collection name made ``_``: strategies append
    protocol names, and a user catalogue's derived protocols are ``test-train``, ``query-gallery`` and
    ``leave-one-out`` (Milvus Lite accepts the hyphen; a 2.3 server refuses the collection)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)[:255]
