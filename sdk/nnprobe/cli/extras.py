"""Optional dependencies of the command line, each an extra of the ``nnprobe`` distribution.

A command states which extras its arguments need (``needs(args) -> extras``); ``nnprobe.cli.main`` checks
them before the command runs, so a missing package is reported in one line, with what to install, before
any RPC is made.
"""

from __future__ import annotations

import importlib.util

#: extra -> (the modules it provides, what it is for). Keep in step with sdk/pyproject.toml.
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "images": (("PIL",), "Pillow, to compose and save images"),
    "onnx": (("onnx",), "the onnx package, to send an ONNX model's graph without its weights' values"),
    "pandas": (("pandas",), "pandas, for results as DataFrames (to_pandas)"),
    "notebook": (("tqdm", "IPython"), "tqdm and IPython, for progress bars and live curves in a notebook"),
}


class MissingExtra(OSError):
    """An optional dependency a command needs is not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    modules, _ = EXTRAS[extra]
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extras: list[str] | tuple[str, ...], command: str) -> None:
    """Raise ``MissingExtra`` naming the first extra of ``extras`` whose modules are missing."""
    for extra in extras:
        absent = missing(extra)
        if absent:
            _, purpose = EXTRAS[extra]
            raise MissingExtra(
                f"{command} needs {purpose} ({', '.join(absent)} is not installed): "
                f"pip install 'nnprobe[{extra}]'"
            )
