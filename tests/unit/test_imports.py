"""Which modules may speak gRPC: only the servicers (``*/servicer.py``), the server bootstrap (``server/``)
and the clients of other servers (``*/remote.py``, such as the remote transfer checks of attacks).

The modules are read as source and walked as syntax trees, never imported, so a core that imports grpc
inside a function, behind ``TYPE_CHECKING`` or through ``importlib`` is found as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nnprobe_services
import pytest

PACKAGE = Path(nnprobe_services.__file__).parent
#: Top-level names that are gRPC (the core library and its companion packages).
GRPC_ROOTS = {"grpc", "grpc_health", "grpc_reflection", "grpc_status"}


def allowed(path: Path) -> bool:
    relative = path.relative_to(PACKAGE)
    return relative.name in {"servicer.py", "remote.py"} or relative.parts[0] == "server"


def grpc_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, module) of every import of a gRPC package in ``source``, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in GRPC_ROOTS]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_every_package():
    packages = {p.relative_to(PACKAGE).parts[0] for p in MODULES if len(p.relative_to(PACKAGE).parts) > 1}
    assert {"server", "vision", "sequence", "attention"} <= packages
    assert any(p.name == "servicer.py" for p in MODULES) and len(MODULES) > 20


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import grpc", [(1, "grpc")]),
        ("import os, grpc.aio as aio", [(1, "grpc.aio")]),
        ("from grpc import StatusCode", [(1, "grpc")]),
        ("from grpc_status import rpc_status", [(1, "grpc_status")]),
        ("def f():\n    import grpc\n", [(2, "grpc")]),
        ("if TYPE_CHECKING:\n    from grpc.aio import ServicerContext\n", [(2, "grpc.aio")]),
        ("importlib.import_module('grpc')", [(1, "grpc")]),
        ("__import__('grpc_health.v1')", [(1, "grpc_health.v1")]),
        ("import grpcio_tools_helper\nfrom .grpc import x\nimport nnprobe.api.vision.v1", []),
    ],
)
def test_the_walk_finds_every_form_of_import(source, expected):
    assert grpc_imports(source) == expected


def test_only_servicers_and_the_server_bootstrap_import_grpc():
    offenders = {
        str(path.relative_to(PACKAGE)): grpc_imports(path.read_text(), str(path))
        for path in MODULES
        if not allowed(path)
    }
    offenders = {name: lines for name, lines in offenders.items() if lines}
    assert offenders == {}, f"modules outside the servicers and server/ import gRPC: {offenders}"


def test_the_servicers_do_import_grpc():
    """The rule has teeth: the walk does see the imports where they are allowed."""
    servicers = [p for p in MODULES if p.name == "servicer.py"]
    assert servicers and any(grpc_imports(p.read_text(), str(p)) for p in servicers)
