"""Executing the example notebooks and looking at them: a kernel per notebook (nbclient), the HTML page
nbconvert makes of one, and headless Chromium (Debian's ``chromium``) loading that page.

``displayed_text`` is what a reader sees of an output's text: a stream's carriage returns redraw the line
(tqdm's bar), as in Jupyter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: Hang guard for one cell (the slowest cell takes seconds); never a pass/fail threshold.
CELL_SECONDS = 600


def example_notebooks() -> list[Path]:
    """Every notebook of examples/."""
    return sorted(EXAMPLES.glob("*.ipynb"))


def execute(path: Path, workdir: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh python3 kernel started with ``env``, in ``workdir``; raises
    ``nbclient.exceptions.CellExecutionError`` on the first cell that fails."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)  # keyword arguments go to the kernel manager's start_kernel
    return notebook


def displayed_text(output: Any) -> str:
    """The text a reader sees of one output: a stream with each line cut at its last carriage return, or
    the ``text/plain`` of a result."""
    if output.get("output_type") == "stream":
        return "\n".join(line.rsplit("\r", 1)[-1] for line in output.get("text", "").split("\n"))
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    return str(output.get("data", {}).get("text/plain", ""))


def chromium() -> str | None:
    """The path of Debian's chromium (or chromium-browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_run(browser: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with ``args`` (no sandbox: tests run as root in containers)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def image_sources(html: str) -> list[str]:
    """The ``src`` of every ``<img>`` of a page."""
    return re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", html)
