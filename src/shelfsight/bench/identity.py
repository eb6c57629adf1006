"""A cell's identity: the digest of every input that decides its numbers.

A stored cell is reused only when its key equals the key of the cell the config asks for now, so a
changed ``toptune.trials``, ``retrieval.k``, index type, preprocessing, weights file or photo can
never leave an old number in the table under the new config's name. The inputs are kept in the
cell's record too, so a rerun says *what* changed, not only that something did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

IDENTITY_VERSION = 2
"""Raised when the way cells are scored changes, so every stored cell is recomputed once."""


def digest(inputs: Mapping[str, Any]) -> str:
    """SHA-256 (first 20 hex) of the canonical JSON of ``inputs``."""
    payload = json.dumps({"version": IDENTITY_VERSION, **inputs}, sort_keys=True, separators=(",", ":"),
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def flatten(inputs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"toptune": {"trials": 8}}`` -> ``{"toptune.trials": 8}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in inputs.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    """The inputs that differ, e.g. ``strategy.settings.trials 8 -> 6``; at most ``limit`` named."""
    before, after = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, _ABSENT) != after.get(k, _ABSENT))
    if not changed:
        return "scoring changed (shelfsight version)"
    shown = [f"{k} {_short(before.get(k, _ABSENT))} -> {_short(after.get(k, _ABSENT))}" for k in changed[:limit]]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(shown) + more


class _Absent:
    def __repr__(self) -> str:
        return "(none)"


_ABSENT = _Absent()


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."
