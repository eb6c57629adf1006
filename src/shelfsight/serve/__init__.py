"""Serving the chosen embedding: visual search and auto-tagging over a Milvus collection of a catalogue.

``build_index`` (``shelfsight index``) embeds a catalogue through the bench's cache into an index
folder; ``VisualSearchService`` answers searches, tags and catalogue changes over that folder;
``create_app`` wraps it in FastAPI with a web page (``shelfsight serve``). See docs/serving.md.
"""

from shelfsight.serve.app import ServeSettings, create_app
from shelfsight.serve.encoder import EncoderReport, OnnxEncoder, TorchEncoder, ensure_onnx, export_onnx
from shelfsight.serve.errors import ServeError
from shelfsight.serve.indexer import IndexReport, build_index
from shelfsight.serve.manifest import IndexLayout, ServiceManifest, read_manifest
from shelfsight.serve.opening import ServiceOptions
from shelfsight.serve.pipeline import Hit
from shelfsight.serve.server import run_server, serve_in_thread
from shelfsight.serve.service import Item, SearchOutcome, Tag, VisualSearchService

__all__ = [
    "EncoderReport", "Hit", "IndexLayout", "IndexReport", "Item", "OnnxEncoder", "SearchOutcome", "ServeError",
    "ServeSettings", "ServiceManifest", "ServiceOptions", "Tag", "TorchEncoder", "VisualSearchService", "build_index",
    "create_app", "ensure_onnx", "export_onnx", "read_manifest", "run_server", "serve_in_thread",
]
