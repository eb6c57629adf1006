#!/usr/bin/env python3
"""Structure check for a Python package: prints each offender on its own line, then a summary.

Checks, for every ``*.py`` file under the package directory given on the command line:

1. modules longer than ``--max-module-lines`` lines (default 400);
2. functions and methods longer than ``--max-function-lines`` lines (default 60), counted from the
   ``def`` line to the last line of the body (decorators excluded); a nested function counts within
   its parent and also on its own;
3. public classes (module-level, name not starting with ``_``) defined under the same name in more
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
    duplicate_classes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.errors + self.long_modules + self.long_functions + self.duplicate_classes

    def summary(self) -> str:
        counts = [
            (len(self.long_modules), "long module"),
            (len(self.long_functions), "long function"),
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
