"""What a request may store or ask for, checked before anything is stored: ids, labels, categories, metadata.

Every refusal is an :class:`~shelfsight.serve.errors.InvalidItemError` (422) naming the field and what
to do. The rules, and why:

- **Text is strict UTF-8** without control characters (U+0000..U+001F, U+007F..U+009F): a lone surrogate
  cannot be encoded to the store, and a control character breaks filters, logs and the page.
- **Ids have no path-like segments** (``.``, ``..``, empty: leading, trailing or doubled ``/``): a browser
  normalises ``/items/a/../b/image`` to another path, so such an id's ``image_url`` could not work. Nor do they
  end in a reserved suffix (``/image``, ``/similar``): ``GET /items/{id}`` would reach the image or similar-items
  route instead. Checked at ingest, through the API and by ``shelfsight index`` (a refused catalogue id is
  skipped with the reason). :func:`image_url` encodes the slashes of ids that already hold one (stored before).
- **Metadata** is a JSON object of at most ``MAX_METADATA_BYTES``, ``MAX_DEPTH`` levels, ``MAX_KEYS`` keys
  and ``MAX_NODES`` values in all; integers within +-(2**53 - 1) (exact in JavaScript and in the store's
  int64; refused by their digit count before Python parses them, so a 5,000-digit integer is a 422 like a
  17-digit one, not Python's int-parsing error), finite numbers only (``NaN``/``Infinity`` are not JSON).
  Checked before storing, so a stored item can always be read back.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from shelfsight.search.milvus import ID_MAX_LENGTH, LABEL_MAX_LENGTH
from shelfsight.serve.errors import InvalidItemError

MAX_METADATA_BYTES = 16 * 1024
MAX_DEPTH = 8
MAX_KEYS = 256
MAX_NODES = 4096
MAX_SAFE_INTEGER = 2**53 - 1
RESERVED_SUFFIXES = ("/image", "/similar")
"""Id endings that the item routes claim: ``GET /items/ID/image`` is the image of ``ID``, not an item ``ID/image``."""
_TEXT_CONTROLS_ALLOWED = frozenset("\t\n\r")
"""Control characters allowed inside metadata string values (multi-line descriptions); never in ids, labels or keys."""


def control_character(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first C0/C1 control character of ``text`` not in ``allowed``, or None."""
    return next((c for c in text if (ord(c) < 32 or 127 <= ord(c) < 160) and c not in allowed), None)


def check_text(value: str, field: str, *, max_bytes: int, allowed: frozenset[str] = frozenset()) -> str:
    """``value`` if it is valid UTF-8 of at most ``max_bytes`` bytes without control characters."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidItemError(f"{field} is not valid UTF-8 (it holds a lone surrogate); send UTF-8 text") from None
    bad = control_character(value, allowed)
    if bad is not None:
        raise InvalidItemError(f"{field} holds the control character U+{ord(bad):04X}; remove it")
    if size > max_bytes:
        raise InvalidItemError(f"{field} is {size:,} bytes of UTF-8, more than the {max_bytes:,} allowed")
    return value


def check_item_id(item_id: str) -> str:
    """A new item's id: 1 to ``ID_MAX_LENGTH`` bytes of UTF-8, no control characters, no path-like segments."""
    if not item_id:
        raise InvalidItemError("id is empty; give each item a unique id")
    check_text(item_id, "id", max_bytes=ID_MAX_LENGTH)
    if any(segment in ("", ".", "..") for segment in item_id.split("/")):
        raise InvalidItemError(f"id {item_id[:80]!r} has an empty, '.' or '..' segment between slashes, which a "
                               "browser would rewrite in its image URL; use another id")
    if item_id.endswith(RESERVED_SUFFIXES):
        raise InvalidItemError(f"id {item_id[-80:]!r} ends in {item_id[item_id.rindex('/'):]!r}, which the item "
                               "routes reserve (GET /items/ID/image is ID's image), so the item could not be read; "
                               "use another id")
    return item_id


def check_label(value: str | None, field: str) -> str | None:
    return None if value is None else check_text(value, field, max_bytes=LABEL_MAX_LENGTH)


def path_id(item_id: str, raw_path: bytes | None) -> str:
    """An id read from a URL path: refused when the percent-encoding was not UTF-8 (the server replaced it
    with U+FFFD) or when it holds control characters."""
    if "\ufffd" in item_id and raw_path is not None:
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidItemError("the item id in the URL is not percent-encoded UTF-8") from None
    bad = control_character(item_id)
    if bad is not None:
        raise InvalidItemError(f"the item id in the URL holds the control character U+{ord(bad):04X}")
    return item_id


def query_label(value: str | None, field: str, query_string: bytes | None) -> str | None:
    """A label read from the query string: refused when its percent-encoding was not UTF-8 (replaced by U+FFFD)
    or when it holds control characters."""
    if value is not None and "\ufffd" in value and query_string is not None:
        try:
            unquote_to_bytes(query_string).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidItemError(f"{field} in the query string is not percent-encoded UTF-8") from None
    return check_label(value, field)


def item_path(item_id: str) -> str:
    """The id as a URL path: slashes kept for readability, unless a segment is empty, '.' or '..' (a browser
    would rewrite those), then encoded as %2F so the id is one segment."""
    safe = "" if any(segment in ("", ".", "..") for segment in item_id.split("/")) else "/"
    return quote(item_id, safe=safe)


def image_url(item_id: str) -> str:
    return f"/items/{item_path(item_id)}/image"


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """The ``metadata`` form field as a checked JSON object (None when absent or blank)."""
    if text is None or not text.strip():
        return None
    check_text(text, "metadata", max_bytes=MAX_METADATA_BYTES, allowed=_TEXT_CONTROLS_ALLOWED)
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_int=_safe_int)
    except json.JSONDecodeError as error:
        raise InvalidItemError(f"metadata is not valid JSON: {error.msg} at character {error.pos}") from None
    except RecursionError:
        raise InvalidItemError(f"metadata nests too deeply (at most {MAX_DEPTH} levels)") from None
    if not isinstance(value, dict):
        raise InvalidItemError("metadata must be a JSON object, e.g. {\"price\": 1.5}")
    check_metadata(value)
    return value


def _safe_int(digits: str) -> int:
    """An integer literal, refused by its length before ``int`` parses it: more than 16 digits is beyond 2**53
    (and past 4,300 Python itself would refuse it, as a ValueError, not a 422)."""
    if len(digits.lstrip("-")) > len(str(MAX_SAFE_INTEGER)):
        raise InvalidItemError(f"metadata holds a {len(digits.lstrip('-')):,}-digit integer, beyond +-(2**53 - 1); "
                               "send it as a string")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise InvalidItemError(f"metadata holds {name}, which is not JSON: send a finite number or null")


def check_metadata(value: dict[str, Any]) -> None:
    """Depth, key and value counts, number ranges and text of a metadata object, walked without recursion."""
    keys = nodes = 0
    stack: list[tuple[Any, int, str]] = [(value, 1, "metadata")]
    while stack:
        node, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise InvalidItemError(f"metadata holds more than {MAX_NODES} values; store less")
        if isinstance(node, dict | list) and depth > MAX_DEPTH:
            raise InvalidItemError(f"metadata nests more than {MAX_DEPTH} levels deep (at {where}); flatten it")
        if isinstance(node, dict):
            keys += len(node)
            if keys > MAX_KEYS:
                raise InvalidItemError(f"metadata holds more than {MAX_KEYS} keys; store less")
            for key, child in node.items():
                check_text(key, f"metadata key {key[:40]!r}", max_bytes=MAX_METADATA_BYTES)
                stack.append((child, depth + 1, f"{where}.{key[:40]}"))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(node))
        else:
            _check_scalar(node, where)


def _check_scalar(node: Any, where: str) -> None:
    if isinstance(node, bool) or node is None:
        return
    if isinstance(node, int):
        if abs(node) > MAX_SAFE_INTEGER:
            raise InvalidItemError(f"{where} is an integer beyond +-(2**53 - 1); send it as a string")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise InvalidItemError(f"{where} is not a finite number")
    elif isinstance(node, str):
        check_text(node, where, max_bytes=MAX_METADATA_BYTES, allowed=_TEXT_CONTROLS_ALLOWED)
    else:
        raise InvalidItemError(f"{where} has type {type(node).__name__}, which JSON cannot hold")
