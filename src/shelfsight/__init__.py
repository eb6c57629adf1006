"""shelfsight: which image embedding for your catalogue, how to adapt it, and serving it.

The public API a notebook user calls; the CLI and the service call the same functions.
"""

from shelfsight.backbones import Backbone, BackboneSpec, get_spec, list_specs, load_backbone
from shelfsight.catalog import Catalog, CatalogItem, load_catalog
from shelfsight.embeddings import Embeddings, embed_catalog
from shelfsight.errors import ShelfsightError

__version__ = "0.1.0"

__all__ = [
    "Backbone", "BackboneSpec", "Catalog", "CatalogItem", "Embeddings", "ShelfsightError", "embed_catalog",
    "get_spec", "list_specs", "load_backbone", "load_catalog",
]
