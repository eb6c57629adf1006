"""Making a bulk load servable: the index folder ``shelfsight serve`` needs, for a collection filled from shards.

``shelfsight bulk-index`` streams Parquet shards (id, vector) into a Milvus collection; the service needs more
than vectors: which model made them (to embed query photos the same way), where each item's image lies, and
a JSON ``attributes`` field to store added items in. With ``--index-dir`` and ``--model``, the bulk load
creates the collection with that field, fills it per row from the catalogue (image root and relative path,
coarse label, product id) and writes the folder's ``service.json``; ``shelfsight serve --index-dir`` (and
``--uri`` when the server moved) then serves it like any index.

The shards must come from ``--model`` with its default preprocessing (the embedding cache of an
``embed`` run of that model): only their dimension can be checked here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfsight.backbones import load_backbone
from shelfsight.catalog.types import Catalog
from shelfsight.serve.errors import ServeError
from shelfsight.serve.indexer import item_attributes, probe_dim  # the same rows and probe as `shelfsight index`
from shelfsight.serve.manifest import (
    CatalogueRecord,
    IndexLayout,
    MilvusTarget,
    ServiceManifest,
    normalised_identity,
    write_manifest,
)

AttributesFor = Callable[[Sequence[str]], list[dict[str, Any]]]


@dataclass
class ServedBulk:
    """An index folder being filled by a bulk load: its manifest and the attributes of each row."""

    layout: IndexLayout
    manifest: ServiceManifest
    attributes_for: AttributesFor
    catalog: Catalog | None

    def finish(self, inserted: int) -> Path:
        """Record the load in the manifest and write it (atomically)."""
        if self.catalog is not None:
            self.manifest.catalogues.append(CatalogueRecord(
                source=self.catalog.name, root=self.manifest.root_key(self.catalog.root.resolve()),
                items=len(self.catalog), added=inserted))
        return write_manifest(self.layout, self.manifest)


def served_bulk(index_dir: str | os.PathLike[str], *, model: str, dim: int, target: MilvusTarget,
                catalog: Catalog | None) -> ServedBulk:
    """The manifest for shards of ``dim``-d vectors from ``model`` in ``target``, and the rows' attributes."""
    backbone = load_backbone(model)
    identity = normalised_identity(backbone.cache_identity())
    model_dim = probe_dim(backbone)
    if model_dim != dim:
        raise ServeError(f"the shards hold {dim}-d vectors but {model} gives {model_dim}-d embeddings: pass the "
                         "--model that made the shards")
    layout = IndexLayout.at(index_dir)
    if layout.exists():
        raise ServeError(f"{layout.folder} already holds an index (service.json): bulk-load into a new --index-dir")
    layout.uploads.mkdir(parents=True, exist_ok=True)
    manifest = ServiceManifest(model=model, preprocess=backbone.preprocess.as_dict(), backbone=identity,
                               backbone_dim=dim, dim=dim, milvus=target)
    return ServedBulk(layout, manifest, _attributes_from(catalog, manifest), catalog)


def _attributes_from(catalog: Catalog | None, manifest: ServiceManifest) -> AttributesFor:
    """Each id's image location (relative to the catalogue root) and metadata, as ``shelfsight index`` stores them."""
    if catalog is None:
        return lambda ids: [{"root": None, "path": None, "metadata": {}} for _ in ids]
    root = catalog.root.resolve()
    key = manifest.root_key(root)
    items = {item.item_id: item for item in catalog}
    return lambda ids: [item_attributes(items[i], root, key) for i in ids]

