"""A cell's identity: the digest of every input that decides its numbers.

A stored cell is reused only when its key equals the key of the cell the config asks for now, so a
changed ``toptune.trials``, ``retrieval.k``, index type, preprocessing, weights file, label, split or photo
can never leave an old number in the table under the new config's name. The inputs are kept in the cell's
record too, so a rerun says *what* changed, not only that something did.

The code that turns embeddings into a cell's numbers is an input too, as :data:`SCORING_VERSION`: a test
(``tests/test_identity.py``) digests that code (:data:`SCORING_MODULES`) and fails when it changes while the
version and :data:`SCORING_DIGEST` stay as they were.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCORING_VERSION = 4
"""Raise it when code of :data:`SCORING_MODULES` changes what a cell stores: it is an input of every cell key,
so each stored cell is recomputed once, and the reason says ``scoring_version 3 -> 4``."""

SCORING_DIGEST = "59ed6d7e4b023885561ed2e64a281895c0dcebf1f25d3bbc56d8dd6136d73350"
""":func:`scoring_code_digest` of the code at :data:`SCORING_VERSION`; write the new value with
``python scripts/scoring_digest.py --write`` after raising the version."""

SCORING_MODULES = (
    "metrics/*.py",  # the metric functions
    "protocols.py",  # which items are queries, gallery and relevant
    "adapt/splits.py",  # the classification partition and the label-budget subsets
    "search/exact.py",  # exact neighbours: the deep metrics and the recall reference
    "bench/evaluate.py",  # one protocol scored from an index's answer
    "bench/leakage.py",  # class-disjoint refusal and the `dedupe` query exclusion
    "duplicates/leakage.py", "duplicates/near.py", "duplicates/hashing.py",  # which queries leak
    "bench/strategies/*.py",  # each strategy's run: how its cell classifies and scores
    "compress/*.py", "search/faiss_codec.py", "search/faiss_binary.py",  # compressed retrieval and its costs
)
"""The modules between a cell's embeddings (and tuned models) and the numbers its JSON stores, as globs under
the package. Not here, on purpose: ``stats/``, ``bench/aggregate.py``, ``bench/compare.py`` and the label-budget
tests, which every run recomputes from the stored per-query scores (a change there reaches every table with no
stale cell); extraction, keyed by the embedding cache; training, keyed by the strategy settings and the
work folders' own keys."""

_HEX = re.compile(r"[0-9a-f]{16,64}")


def digest(inputs: Mapping[str, Any]) -> str:
    """SHA-256 (first 20 hex) of the canonical JSON of ``inputs``."""
    payload = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":"), default=str)
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
    """The inputs that differ, e.g. ``strategy.settings.trials 8 -> 6`` or ``dataset.labels changed`` (a
    digest on both sides); at most ``limit`` named."""
    before, after = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, _ABSENT) != after.get(k, _ABSENT))
    if not changed:
        return "the same inputs under another key (stored by a shelfsight whose bench.identity.digest differed)"
    shown = [_one_change(k, before.get(k, _ABSENT), after.get(k, _ABSENT)) for k in changed[:limit]]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(shown) + more


def _one_change(name: str, before: Any, after: Any) -> str:
    if isinstance(before, str) and isinstance(after, str) and _HEX.fullmatch(before) and _HEX.fullmatch(after):
        return f"{name} changed"
    return f"{name} {_short(before)} -> {_short(after)}"


class _Absent:
    def __repr__(self) -> str:
        return "(none)"


_ABSENT = _Absent()


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------- scoring code
def scoring_files(root: Path | None = None) -> list[Path]:
    """The files of :data:`SCORING_MODULES` under ``root`` (default: the installed package), sorted; a
    pattern that matches nothing is an error, so a renamed module cannot drop out unseen."""
    base = root if root is not None else Path(__file__).resolve().parents[1]
    files: set[Path] = set()
    for pattern in SCORING_MODULES:
        found = sorted(base.glob(pattern))
        if not found:
            raise FileNotFoundError(f"SCORING_MODULES pattern {pattern!r} matches no file under {base}: "
                                    "update SCORING_MODULES in bench/identity.py")
        files.update(found)
    return sorted(files, key=lambda path: path.relative_to(base).as_posix())


def scoring_code_digest(root: Path | None = None) -> str:
    """SHA-256 of the scoring modules' syntax trees with docstrings, comments, type annotations and layout
    left out, so that only a change a number can see moves it."""
    base = root if root is not None else Path(__file__).resolve().parents[1]
    hasher = hashlib.sha256()
    for path in scoring_files(base):
        tree = _Normalise().visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        hasher.update(f"{path.relative_to(base).as_posix()}\0{ast.dump(tree, include_attributes=False)}\n".encode())
    return hasher.hexdigest()


class _Normalise(ast.NodeTransformer):
    """Drops what cannot change a number: docstrings (of modules, classes, functions and attributes: any
    statement that is a bare string) and type annotations; comments and layout never reach the tree."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        node.annotation = ast.Constant(None)
        return self.generic_visit(node)
