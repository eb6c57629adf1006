"""The fields of a shelfsight Milvus collection: its schema, the checks on what is written to them, and the
filter expressions over them.

pymilvus's ``delete(ids=...)``/``get(ids=...)`` and its query iterator paste string keys between quotes
unescaped; ids, labels and splits with quotes would break (or widen) the expression, so every filter is
built by :func:`quote`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shelfsight.search.base import check_finite
from shelfsight.search.milvus_config import MilvusIndexError

ID_MAX_LENGTH = 1024
LABEL_MAX_LENGTH = 1024
SPLIT_MAX_LENGTH = 256
VECTOR_FIELD = "vector"
ATTRIBUTES_FIELD = "attributes"
FIELDS = ("id", VECTOR_FIELD, "label", "split", "position")
Records = dict[str, dict[str, Any]]
"""Stored records by item id: ``label``, ``split``, ``position`` (and ``attributes``)."""


def collection_schema(dim: int, *, attributes: bool) -> Any:
    """``id`` (primary key), ``vector``, ``label``, ``split``, ``position`` and, with ``attributes``, a JSON field."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_LENGTH)
    schema.add_field("split", DataType.VARCHAR, max_length=SPLIT_MAX_LENGTH)
    schema.add_field("position", DataType.INT64)
    if attributes:
        schema.add_field(ATTRIBUTES_FIELD, DataType.JSON)
    return schema


def quote(value: str) -> str:
    """A Milvus expression string literal for ``value`` (backslash escapes, as Milvus and Milvus Lite parse them)."""
    bad = next((c for c in value if ord(c) < 32 and c not in "\n\r\t"), None)
    if bad is not None:
        raise ValueError(f"{value[:80]!r} holds control character {bad!r}, which a filter cannot express")
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def filter_expression(*, label: str | None = None, split: str | None = None) -> str:
    """Exact-match filter on label and/or split ("" when neither is given)."""
    terms = [f"{field} == {quote(value)}" for field, value in (("label", label), ("split", split)) if value is not None]
    return " and ".join(terms)


def id_filter(ids: Sequence[str]) -> str:
    """``id in [...]`` over the given ids, each quoted."""
    return f"id in [{', '.join(quote(i) for i in ids)}]"


def text_column(values: Sequence[str] | None, rows: int, name: str, max_length: int) -> list[str]:
    """One string per row (``""`` when no values are given), each at most ``max_length`` bytes of UTF-8."""
    if values is None:
        return [""] * rows
    column = [str(v) for v in values]
    if len(column) != rows:
        raise ValueError(f"{name} has {len(column)} entries for {rows} ids")
    too_long = next((v for v in column if len(v.encode()) > max_length), None)
    if too_long is not None:
        raise ValueError(f"{name} value {too_long[:80]!r} is longer than {max_length} bytes")
    return column


def check_new_ids(ids: Sequence[str], stored: set[str]) -> None:
    """Refuse ids repeated in ``ids`` or already ``stored``, empty, or longer than the key field."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen or item_id in stored:
            raise ValueError(f"duplicate id {item_id!r}: ids must be unique in an index")
        if not item_id or len(item_id.encode()) > ID_MAX_LENGTH:
            raise ValueError(f"id {item_id[:80]!r} must be 1 to {ID_MAX_LENGTH} bytes of UTF-8")
        seen.add(item_id)



def checked_vectors(vectors: np.ndarray, dim: int, rows: int | None, *, what: str, unit: bool = True,
                    ids: Sequence[str] | None = None) -> np.ndarray:
    """Shape, finiteness (``check_finite``: ``ids`` name stored vectors, rows name queries) and, for stored
    vectors, unit norm: scores are cosines only for unit vectors."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim or (rows is not None and len(array) != rows):
        expected = f"({rows if rows is not None else 'Q'}, {dim})"
        raise ValueError(f"expected {what} of shape {expected}, got {array.shape}")
    check_finite(array, ids)
    norms = np.linalg.norm(array, axis=1)
    if unit and len(array) and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{what} must be L2-normalised (norms range {norms.min():.4g}..{norms.max():.4g})")
    return array


def attribute_column(attributes: Sequence[Mapping[str, Any]] | None, rows: int, has_attributes: bool,
                     collection: str, where: str) -> list[dict[str, Any]] | None:
    """The attributes field's values for ``rows`` new rows ({} each when none are given); None without the field."""
    if attributes is None:
        return [{} for _ in range(rows)] if has_attributes else None
    if not has_attributes:
        raise MilvusIndexError(f"collection {collection!r} in {where} has no attributes field: create it with "
                               "attributes=True to store per-item attributes")
    column = [dict(values) for values in attributes]
    if len(column) != rows:
        raise ValueError(f"attributes has {len(column)} entries for {rows} ids")
    return column
