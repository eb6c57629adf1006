"""The architecture held by import-linter (.importlinter, run by `make lint`): the contracts pass on the tree, a
planted violation fails them, the docs draw the same layers, and strategy names live in their own modules."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shelfsight.bench import strategies

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / ".importlinter"
LINT = Path(sys.executable).with_name("lint-imports")


def lint(source_root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the ``shelfsight`` package found under ``source_root``, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", str(CONTRACTS)], cwd=source_root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package to plant violations in; its root goes first on the path."""
    shutil.copytree(ROOT / "src" / "shelfsight", tmp_path / "shelfsight",
                    ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "static", "calibrations"))
    return tmp_path


def test_the_tree_keeps_every_contract(package_copy: Path) -> None:
    result = lint(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def plant(package_copy: Path, module: str, code: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Append ``code`` to ``module`` of the copy; the lint's result and the contracts it says are broken."""
    planted = package_copy / "shelfsight" / module
    planted.write_text(planted.read_text() + code)
    result = lint(package_copy)
    assert result.returncode == 1, result.stdout
    return result, [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]


def test_a_metrics_module_importing_the_cli_breaks_the_lint(package_copy: Path) -> None:
    result, broken = plant(package_copy, "metrics/retrieval.py", "\nimport shelfsight.cli  # planted\n")
    assert any("Nothing imports the command line" in line for line in broken), result.stdout
    assert any("Layers" in line for line in broken) and any("Metrics and statistics" in line for line in broken)
    assert "shelfsight.metrics.retrieval -> shelfsight.cli" in result.stdout


def test_an_import_inside_a_function_that_closes_a_cycle_breaks_the_lint(package_copy: Path) -> None:
    result, broken = plant(package_copy, "bench/results.py",
                           "\n\ndef _planted() -> None:\n    from shelfsight.bench import runner\n")
    assert "No cycles between sibling modules or packages, at any depth BROKEN" in broken, result.stdout
    assert "The bench reads one way, from the runner down to results BROKEN" in broken
    assert "No cycles are allowed in shelfsight.bench" in result.stdout


def test_the_docs_draw_the_layers_the_linter_checks() -> None:
    config = configparser.ConfigParser()
    config.read(CONTRACTS)
    checked = [line.strip() for line in config["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]
    docs = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn = docs.split("<!-- layers -->")[1].split("```")[1].splitlines()
    assert [line.strip() for line in drawn if line.strip()] == checked


def _own_module(name: str) -> Path:
    return Path(sys.modules[strategies.get(name).run.__module__].__file__ or "")


SCANNED = ("bench", "report", "cli", "zero_config.py", "demo.py")
"""Where strategies are read (``adapt`` below them has its own ``toptune`` and ``finetune`` functions)."""


def _exempt(node: ast.Constant, parent: ast.AST) -> bool:
    """Command names in ``app.command(...)`` are not strategy references (nor are ``__all__``'s Python names)."""
    return isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "command"


def _as_field_name(node: ast.Constant, parent: ast.AST) -> bool:
    """``pretrained`` is also a model entry's field and ``whiten`` a compression method's flag: as a dict key, a
    subscript or ``.get`` argument such a word names the field, not the strategy."""
    if isinstance(parent, ast.Dict):
        return node in parent.keys
    if isinstance(parent, ast.Subscript):
        return parent.slice is node
    return isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "get"


def test_no_strategy_name_is_spelled_outside_its_own_module() -> None:
    names = set(strategies.names())
    field_too = {strategies.baseline().name, "whiten"} & names
    offenders = []
    package = ROOT / "src" / "shelfsight"
    paths = [package / part for part in SCANNED]
    for path in sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        exported = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                    for c in ast.walk(node.value)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names):
                continue
            if path == _own_module(node.value) or id(node) in exported or _exempt(node, parents[node]):
                continue
            if node.value in field_too and _as_field_name(node, parents[node]):
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)


def test_the_name_check_can_fail(tmp_path: Path) -> None:
    """The check above sees a name compared outside its module (so its silence means something)."""
    tree = ast.parse('if kind == "toptune":\n    pass\nrow = {"pretrained": True}\n')
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in set(strategies.names())
             and not (n.value == strategies.baseline().name and _as_field_name(n, parents[n]))]
    assert found == ["toptune"]
