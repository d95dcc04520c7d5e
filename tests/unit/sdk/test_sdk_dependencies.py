"""The SDK and CLI import only what the ``nnprobe`` distribution declares: its dependencies (and what they
require) at module level; an extra's modules only inside functions, with the extra listed in
``nnprobe.cli.extras`` so the command line checks it before any RPC."""

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

from nnprobe.cli import extras

SDK = Path(__file__).resolve().parents[3] / "sdk"
#: Imported lazily with its own message (``nnprobe serve``): a separate distribution, not an extra.
SERVER_PACKAGE = "nnprobe_services"


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in, themselves included (as installed here)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in metadata.requires(name) or []:
            if "extra ==" not in requirement:
                todo.append(requirement_name(requirement))
    return seen


def modules_of(distributions: set[str]) -> set[str]:
    owners = metadata.packages_distributions()
    return {
        module
        for module, dists in owners.items()
        if any(d.lower().replace("_", "-") in distributions for d in dists)
    }


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every absolute import of ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    top_level = {id(node) for node in tree.body} | {
        id(child) for node in tree.body if isinstance(node, ast.If) for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], id(node) in top_level))
    return found


def test_every_import_is_declared_and_extras_are_lazy_and_checked():
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    required = closure({requirement_name(r) for r in project["dependencies"]})
    declared_extras = {
        extra: {requirement_name(r) for r in requirements}
        for extra, requirements in project.get("optional-dependencies", {}).items()
    }
    assert set(declared_extras) == set(extras.EXTRAS), "pyproject extras and nnprobe.cli.extras differ"
    extra_modules = {m: extra for extra, (modules, _) in extras.EXTRAS.items() for m in modules}
    for extra, names in declared_extras.items():
        assert set(extras.EXTRAS[extra][0]) <= modules_of(names), extra
    allowed = modules_of(required) | set(sys.stdlib_module_names) | {"nnprobe", "__future__"}
    problems = []
    for path in sorted((SDK / "nnprobe").rglob("*.py")):
        if "api" in path.relative_to(SDK / "nnprobe").parts:
            continue  # generated code imports only protobuf and grpc
        for module, at_top in imports(path):
            if module in extra_modules or module == SERVER_PACKAGE:
                if at_top:
                    problems.append(f"{path}: {module} (optional) imported at module level")
            elif module not in allowed:
                problems.append(f"{path}: {module} is neither a dependency nor an extra")
    assert not problems, "\n".join(problems)


def test_a_missing_extra_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    try:
        extras.require(["images"], "nnprobe attack")
    except extras.MissingExtra as error:
        message = str(error)
    else:
        raise AssertionError("no error for a missing extra")
    assert "\n" not in message and "pip install 'nnprobe[images]'" in message and "PIL" in message
