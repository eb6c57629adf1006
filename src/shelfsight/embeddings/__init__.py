"""Embeddings: batched, cached (per photo, by content), resumable extraction of L2-normalised float32 vectors."""

from shelfsight.embeddings.cache import SkippedItem, VectorStore, cache_key
from shelfsight.embeddings.extract import Embeddings, embed_catalog, resolve_device
from shelfsight.embeddings.runtimes import RUNTIMES, RuntimeChoice

__all__ = ["RUNTIMES", "Embeddings", "RuntimeChoice", "SkippedItem", "VectorStore", "cache_key", "embed_catalog",
           "resolve_device"]
