"""The example notebooks are kept without outputs and are exactly what scripts/make_notebooks.py writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

from tests.support.notebooks import example_notebooks

ROOT = Path(__file__).resolve().parents[2]


def test_the_notebooks_are_written_by_their_script():
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    for path in example_notebooks():
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_there_are_notebooks_to_check():
    assert len(example_notebooks()) >= 7
