"""The test tree's own rules: shared helpers live in ``tests/support``, so no test module imports another (a
test module is a list of tests, never a library); and ``tests/unit`` mirrors the packages it tests, each
folder naming a package of ``nnprobe_services`` (``sdk/`` holds the SDK's)."""

from __future__ import annotations

import ast
from pathlib import Path

import nnprobe_services

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = Path(nnprobe_services.__file__).parent
TEST_PACKAGES = ("tests.unit", "tests.service", "tests.system")


def test_imports(source: str) -> list[int]:
    """Lines of ``source`` that import a test module: one under tests/unit, service or system, a module named
    ``test_*``, or anything relative (test folders hold nothing else to import)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            if node.level:
                lines.append(node.lineno)
                continue
        else:
            continue
        if any(n.startswith(TEST_PACKAGES) or n.rsplit(".", 1)[-1].startswith("test_") for n in names):
            lines.append(node.lineno)
    return lines


test_imports.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_the_walk_finds_every_form_of_test_import():
    source = (
        "import tests.unit.test_a\nfrom tests.service import test_b\nfrom tests.system.test_c import x\n"
        "from . import helpers\nfrom tests.support.waiting import wait_for\nimport numpy\n"
    )
    assert test_imports(source) == [1, 2, 3, 4]


def test_no_test_module_imports_another():
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path.relative_to(TESTS).parts[0] == "support":
            continue
        lines = test_imports(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(TESTS))] = lines
    assert offenders == {}, (
        f"test modules that import test modules (shared code goes to tests/support): {offenders}"
    )


def test_unit_folders_mirror_the_packages():
    folders = sorted(p for p in (TESTS / "unit").rglob("*") if p.is_dir() and p.name != "__pycache__")
    assert len(folders) > 5  # the walk sees the tree
    outside = [
        str(f.relative_to(TESTS / "unit"))
        for f in folders
        if f.relative_to(TESTS / "unit").parts[0] != "sdk"
        and not (PACKAGE / f.relative_to(TESTS / "unit")).is_dir()
    ]
    assert outside == [], f"tests/unit folders without a package at the same path: {outside}"
