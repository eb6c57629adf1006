#!/usr/bin/env python3
"""Structure check for a Python package: prints each offender on its own line, then a summary.

Checks, for every ``*.py`` file under the package directory given on the command line:

1. modules longer than ``--max-module-lines`` lines (default 400);
2. functions and methods longer than ``--max-function-lines`` lines (default 60), counted from the
   ``def`` line to the last line of the body (decorators excluded); a nested function counts within
   its parent and also on its own;
3. import cycles between modules of the package.  The graph is built from the imports that run at
   import time: module-level ``import``/``from ... import`` statements (also inside module-level
   ``if``/``try``/``with`` blocks and class bodies), relative ones included, and ``from pkg import name``
   points at ``pkg.name`` when that is a submodule.  Imports inside functions and under
   ``if TYPE_CHECKING:`` are ignored.  An import points at the module named, not at its parent
   packages (every submodule runs its parents' ``__init__`` first, so that edge would say nothing).
   Strongly connected components are found with Tarjan's algorithm and the elementary cycles in each
   with Johnson's; each cycle is printed once, starting at its alphabetically first module;
4. public classes (module-level, name not starting with ``_``) defined under the same name in more
   than one module; every place is printed.

Exit status: 1 when anything is found, 0 otherwise or with ``--warn-only``; 2 on a usage error.
Standard library only, so that it runs before (and without) the package's dependencies.

    python scripts/check_structure.py src/shelfsight [--max-module-lines N] [--max-function-lines M] [--warn-only]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_CYCLES_PER_GROUP = 20  # beyond this, a group of mutually importing modules is summarised in one line


@dataclass
class Module:
    name: str  # dotted, e.g. "shelfsight.bench.runner"
    path: Path
    is_package: bool  # an __init__.py
    tree: ast.Module
    n_lines: int


@dataclass
class Report:
    long_modules: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)
    duplicate_classes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.errors + self.long_modules + self.long_functions + self.cycles + self.duplicate_classes

    def summary(self) -> str:
        counts = [
            (len(self.long_modules), "long module"),
            (len(self.long_functions), "long function"),
            (len(self.cycles), "import cycle"),
            (len(self.duplicate_classes), "duplicated public class name"),
            (len(self.errors), "unparsable file"),
        ]
        parts = [f"{n} {label}{'' if n == 1 else 's'}" for n, label in counts if n or label != "unparsable file"]
        return "check_structure: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------- loading


def load_modules(root: Path, report: Report) -> dict[str, Module]:
    """Every ``*.py`` under ``root`` (the package directory), keyed by dotted module name."""
    package = root.name
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        parts = [package, *rel.with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text, filename=str(path))
        except SyntaxError as exc:
            report.errors.append(f"{path}:{exc.lineno or 0}: cannot parse: {exc.msg}")
            continue
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, tree, len(text.splitlines()))
    return modules


# --------------------------------------------------------------------------------------------- lengths


def check_module_lengths(modules: dict[str, Module], limit: int, report: Report) -> None:
    for module in modules.values():
        if module.n_lines > limit:
            report.long_modules.append(f"{module.path}: module has {module.n_lines} lines (max {limit})")


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function in ``node`` with its qualified name, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            qualname = f"{prefix}{child.name}"
            yield qualname, child
            yield from _functions(child, f"{qualname}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def check_function_lengths(modules: dict[str, Module], limit: int, report: Report) -> None:
    for module in modules.values():
        for qualname, func in _functions(module.tree, ""):
            # lineno is the `def` line (decorators are not part of it); end_lineno the body's last line.
            n_lines = (func.end_lineno or func.lineno) - func.lineno + 1
            if n_lines > limit:
                report.long_functions.append(
                    f"{module.path}:{func.lineno}: function {qualname} has {n_lines} lines (max {limit})"
                )


# --------------------------------------------------------------------------------------------- imports


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions, not TYPE_CHECKING-only)."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(stmt, ast.If):
            test = stmt.test
            if _is_type_checking(test):
                yield from _runtime_imports(stmt.orelse)
            elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_type_checking(test.operand):
                yield from _runtime_imports(stmt.body)
            else:
                yield from _runtime_imports(stmt.body)
                yield from _runtime_imports(stmt.orelse)
        elif isinstance(stmt, ast.ClassDef | ast.With | ast.AsyncWith):
            yield from _runtime_imports(stmt.body)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _runtime_imports(stmt.body)
            for handler in stmt.handlers:
                yield from _runtime_imports(handler.body)
            yield from _runtime_imports(stmt.orelse)
            yield from _runtime_imports(stmt.finalbody)
        elif isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
            yield from _runtime_imports(stmt.body)
            yield from _runtime_imports(stmt.orelse)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                yield from _runtime_imports(case.body)


def _resolve_from(module: Module, stmt: ast.ImportFrom) -> str | None:
    """The absolute dotted name that ``from X import ...`` reads from."""
    if stmt.level == 0:
        return stmt.module
    package_parts = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if stmt.level - 1 > len(package_parts):
        return None  # beyond the top-level package
    base = package_parts[: len(package_parts) - (stmt.level - 1)]
    if stmt.module:
        base = [*base, *stmt.module.split(".")]
    return ".".join(base) or None


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        targets: set[str] = set()
        for stmt in _runtime_imports(module.tree.body):
            if isinstance(stmt, ast.Import):
                targets.update(alias.name for alias in stmt.names if alias.name in modules)
                continue
            source = _resolve_from(module, stmt)
            if source is None:
                continue
            for alias in stmt.names:
                submodule = f"{source}.{alias.name}"
                if alias.name != "*" and submodule in modules:
                    targets.add(submodule)
                elif source in modules:
                    targets.add(source)
        targets.discard(module.name)
        graph[module.name] = targets
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit), deterministic order."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = lowlink[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    lowlink[node] = min(lowlink[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def elementary_cycles(graph: dict[str, set[str]], nodes: list[str], limit: int) -> tuple[list[list[str]], bool]:
    """Johnson's algorithm on the subgraph of ``nodes``; at most ``limit`` cycles, and whether it stopped early.

    Each cycle starts at its smallest node, so every cycle is produced exactly once.
    """
    cycles: list[list[str]] = []
    remaining = sorted(nodes)
    while remaining:
        start = remaining[0]
        allowed = set(remaining)
        sub = {n: sorted(s for s in graph[n] if s in allowed) for n in remaining}
        blocked: set[str] = {start}
        blocked_by: dict[str, set[str]] = defaultdict(set)
        closed: set[str] = set()
        path = [start]
        work: list[tuple[str, list[str]]] = [(start, list(reversed(sub[start])))]
        while work:
            node, successors = work[-1]
            if successors:
                succ = successors.pop()
                if succ == start:
                    cycles.append([*path, start])
                    closed.update(path)
                    if len(cycles) >= limit:
                        return cycles, True
                elif succ not in blocked:
                    path.append(succ)
                    work.append((succ, list(reversed(sub[succ]))))
                    closed.discard(succ)
                    blocked.add(succ)
                    continue
            if not successors:
                if node in closed:
                    pending = {node}
                    while pending:
                        n = pending.pop()
                        if n in blocked:
                            blocked.discard(n)
                            pending.update(blocked_by[n])
                            blocked_by[n].clear()
                else:
                    for succ in sub[node]:
                        blocked_by[succ].add(node)
                work.pop()
                path.pop()
        remaining = remaining[1:]
    return cycles, False


def check_import_cycles(modules: dict[str, Module], report: Report) -> None:
    graph = import_graph(modules)
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycles, truncated = elementary_cycles(graph, component, MAX_CYCLES_PER_GROUP)
        for cycle in sorted(cycles, key=lambda c: (len(c), c)):
            report.cycles.append("import cycle: " + " -> ".join(cycle))
        if truncated:
            report.cycles.append(
                f"import cycle: more than {MAX_CYCLES_PER_GROUP} cycles among these {len(component)} modules, "
                f"first {MAX_CYCLES_PER_GROUP} listed: " + ", ".join(component)
            )


# --------------------------------------------------------------------------------------------- classes


def _module_level_classes(body: list[ast.stmt]) -> Iterator[ast.ClassDef]:
    for stmt in body:
        if isinstance(stmt, ast.ClassDef):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _module_level_classes(stmt.body)
            yield from _module_level_classes(stmt.orelse)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _module_level_classes(stmt.body)
            for handler in stmt.handlers:
                yield from _module_level_classes(handler.body)
            yield from _module_level_classes(stmt.orelse)
            yield from _module_level_classes(stmt.finalbody)


def check_duplicate_classes(modules: dict[str, Module], report: Report) -> None:
    places: dict[str, dict[str, str]] = defaultdict(dict)  # class name -> module name -> "path:line"
    for module in modules.values():
        for cls in _module_level_classes(module.tree.body):
            if not cls.name.startswith("_"):
                places[cls.name].setdefault(module.name, f"{module.path}:{cls.lineno}")
    for name in sorted(places):
        where = places[name]
        if len(where) > 1:
            report.duplicate_classes.append(
                f"public class {name} defined in {len(where)} modules: " + ", ".join(where[m] for m in sorted(where))
            )


# --------------------------------------------------------------------------------------------- main


def check(root: Path, max_module_lines: int, max_function_lines: int) -> Report:
    report = Report()
    modules = load_modules(root, report)
    check_module_lengths(modules, max_module_lines, report)
    check_function_lengths(modules, max_function_lines, report)
    check_import_cycles(modules, report)
    check_duplicate_classes(modules, report)
    return report


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("package", type=Path, help="the package directory, e.g. src/shelfsight")
    parser.add_argument("--max-module-lines", type=_positive, default=400, help="longest module allowed (400)")
    parser.add_argument("--max-function-lines", type=_positive, default=60, help="longest function allowed (60)")
    parser.add_argument("--warn-only", action="store_true", help="print the offenders but exit 0")
    args = parser.parse_args(argv)
    if not args.package.is_dir():
        parser.error(f"{args.package} is not a directory")

    report = check(args.package, args.max_module_lines, args.max_function_lines)
    for line in report.lines():
        print(line)
    found = bool(report.lines())
    summary = report.summary()
    if not found:
        summary += ": no offenders"
    elif args.warn_only:
        summary += " (--warn-only: not failing)"
    print(summary)
    return 0 if args.warn_only or not found else 1


if __name__ == "__main__":
    sys.exit(main())
