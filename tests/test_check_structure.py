"""scripts/check_structure.py on throwaway packages: each kind of offender is reported, exit codes follow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_structure.py"


def run(package: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(package), *options], capture_output=True, text=True, timeout=60
    )


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def function_lines(name: str, n_lines: int, indent: str = "") -> str:
    """A function of exactly ``n_lines`` lines from its `def` to the end of its body."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(n_lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return None\n"


def messy_package(tmp_path: Path) -> Path:
    long_function = (
        "import functools\n\n\n"
        "@functools.lru_cache\n"  # decorators are not counted: the function is 70 lines, not 72
        "@functools.wraps(print)\n" + function_lines("too_long", 70) + "\n\n" + function_lines("just_right", 60)
    )
    nested = "def outer():\n" + function_lines("inner", 62, indent="    ") + "    return inner\n"
    return write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "long_function.py": long_function,
            "nested.py": nested,
            "big.py": "".join(f"X{i} = {i}\n" for i in range(450)),
            "b.py": "import pkg.a\n\nVALUE = 1\n",  # cycles are import-linter's (.importlinter): not counted here
            "a.py": "from . import b\n",
            "d.py": "class Widget:\n    pass\n\n\nclass _Private:\n    pass\n",
            "sub/__init__.py": "",
            "sub/e.py": "class Widget:\n    pass\n\n\nclass _Private:\n    pass\n",
        },
    )


def test_every_offender_is_reported_once_and_fails(tmp_path: Path) -> None:
    package = messy_package(tmp_path)
    result = run(package)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr

    def matching(*needles: str) -> list[str]:
        return [line for line in lines if all(needle in line for needle in needles)]

    assert len(matching("long_function.py:6:", "function too_long has 70 lines (max 60)")) == 1
    assert not matching("just_right")
    # a nested function counts within its parent and on its own
    assert len(matching("nested.py:1:", "function outer has 64 lines")) == 1
    assert len(matching("nested.py:2:", "function outer.<locals>.inner has 62 lines")) == 1
    assert matching("big.py") == [f"{package / 'big.py'}: module has 450 lines (max 400)"]
    assert not matching("cycle") and not matching("pkg.a")
    widget = matching("public class Widget")
    assert len(widget) == 1
    assert str(package / "d.py") + ":1" in widget[0] and str(package / "sub" / "e.py") + ":1" in widget[0]
    assert not matching("_Private")
    summary = "check_structure: 1 long module, 3 long functions, 1 duplicated public class name"
    assert lines[-1] == summary
    assert len(lines) == 6  # five offenders and the summary


def test_warn_only_prints_the_same_and_exits_zero(tmp_path: Path) -> None:
    package = messy_package(tmp_path)
    strict, lenient = run(package), run(package, "--warn-only")
    assert lenient.returncode == 0
    assert lenient.stdout.splitlines()[:-1] == strict.stdout.splitlines()[:-1]
    assert "--warn-only" in lenient.stdout.splitlines()[-1]


def test_limits_are_options(tmp_path: Path) -> None:
    package = messy_package(tmp_path)
    result = run(package, "--max-module-lines", "450", "--max-function-lines", "70")
    assert "big.py" not in result.stdout and "too_long" not in result.stdout and "outer" not in result.stdout
    assert result.returncode == 1  # the duplicated class remains
    assert run(package, "--max-function-lines", "0").returncode == 2


def test_clean_package_passes(tmp_path: Path) -> None:
    package = write(
        tmp_path / "tidy",
        {
            "__init__.py": "from tidy.core import Thing\n",
            "core.py": "class Thing:\n    pass\n",
            "util.py": "from .core import Thing\n\n\ndef make() -> Thing:\n    return Thing()\n",
        },
    )
    result = run(package)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        "check_structure: 0 long modules, 0 long functions, 0 duplicated public class names: "
        "no offenders"
    ]
