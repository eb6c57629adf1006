"""Embeddings: batched, cached, resumable extraction of L2-normalised float32 vectors."""

from shelfsight.embeddings.cache import EmbeddingCache, SkippedItem, cache_key
from shelfsight.embeddings.extract import Embeddings, embed_catalog, resolve_device

__all__ = ["EmbeddingCache", "Embeddings", "SkippedItem", "cache_key", "embed_catalog", "resolve_device"]
