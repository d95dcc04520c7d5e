"""Size limits of hand-written code: a module holds one idea (at most 400 lines) and a function fits on a
screen (at most 60 lines, from its ``def`` to its last line, decorators and docstring included).

Usage: ``python scripts/check_sizes.py [PATH ...]`` (default: the repository's source folders). Prints each
violation as ``path:line: message`` and exits 1 when there is one. Generated code (``nnprobe/api``) and tests
are not checked.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sdk/nnprobe", "services/nnprobe_services", "scripts", "bench", "demo", "deploy")
GENERATED = ("sdk/nnprobe/api",)


def python_files(paths: list[Path]) -> Iterator[Path]:
    """Every ``.py`` file under ``paths``, generated code left out."""
    for base in paths:
        for path in sorted([base] if base.is_file() else base.rglob("*.py")):
            relative = path.resolve().relative_to(ROOT).as_posix()
            if not relative.startswith(GENERATED):
                yield path


def violations(path: Path) -> Iterator[str]:
    """The size violations of one file, as ``path:line: message``."""
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        yield f"{path}:1: module of {lines} lines (limit {MAX_MODULE_LINES}): split it by idea"
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > MAX_FUNCTION_LINES:
                yield (
                    f"{path}:{node.lineno}: function {node.name!r} of {length} lines "
                    f"(limit {MAX_FUNCTION_LINES})"
                )


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [ROOT / s for s in SOURCES]
    found = [v for f in python_files(paths) for v in violations(f)]
    print("\n".join(found) if found else "sizes: every module and function within its limit")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
