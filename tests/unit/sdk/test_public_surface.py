"""The SDK's one public surface: every result type exported from ``nnprobe``, no aliases, one progress
callback, the client-default sentinel public, and asyncio clients with the sync clients' methods."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable

import nnprobe
import nnprobe.aio
import pytest
from nnprobe.progress import Progress, ProgressCallback

PAIRS = [
    (nnprobe.VisionClient, nnprobe.aio.VisionClient),
    (nnprobe.SequenceClient, nnprobe.aio.SequenceClient),
    (nnprobe.AttentionClient, nnprobe.aio.AttentionClient),
]
CLIENTS = [client for pair in PAIRS for client in pair]


def sdk_modules() -> list[str]:
    """Every module of the SDK but the generated code, the command line and the clients' internals."""
    names = [m.name for m in pkgutil.walk_packages(nnprobe.__path__, "nnprobe.")]
    return [n for n in names if not n.startswith(("nnprobe.api", "nnprobe.cli")) and "._" not in n]


def public_methods(client: type) -> dict[str, Callable]:
    return {
        name: inspect.getattr_static(client, name)
        for name in dir(client)
        if not name.startswith("_") and inspect.isfunction(getattr(client, name))
    }


def test_every_result_type_is_exported_from_the_top_level_package():
    dataclasses_found = {}
    for name in sdk_modules():
        for attribute, value in vars(importlib.import_module(name)).items():
            if dataclasses.is_dataclass(value) and value.__module__ == name and not attribute.startswith("_"):
                dataclasses_found[attribute] = value
    assert len(dataclasses_found) > 30
    missing = sorted(set(dataclasses_found) - set(nnprobe.__all__))
    assert not missing, f"dataclasses not exported from nnprobe: {missing}"
    assert all(getattr(nnprobe, name) is cls for name, cls in dataclasses_found.items())
    assert sorted(nnprobe.__all__) == sorted(set(nnprobe.__all__))
    assert all(hasattr(nnprobe, name) for name in nnprobe.__all__)


def test_the_client_default_sentinel_is_public():
    assert repr(nnprobe.USE_CLIENT_DEFAULT) == "USE_CLIENT_DEFAULT"
    assert isinstance(nnprobe.USE_CLIENT_DEFAULT, nnprobe.UseClientDefault)
    for client in CLIENTS:
        for name, method in public_methods(client).items():
            timeout = inspect.signature(method).parameters.get("timeout")
            # Watching and waiting have no deadline by default; health checks answer within 5 s.
            if timeout is not None and not name.startswith(("watch", "wait", "health")):
                assert timeout.default is nnprobe.USE_CLIENT_DEFAULT, f"{client.__name__}.{name}"


def forwards_to(method: Callable, others: set[str]) -> str | None:
    """The method that ``method``'s body only calls and returns (a thin forwarding wrapper), else None."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.Return | ast.Expr):
        return None
    call = body[0].value
    if isinstance(call, ast.Await):
        call = call.value
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in others:
        return call.func.attr
    return None


def test_the_walk_finds_an_alias_and_a_forwarding_wrapper():
    class Client:
        def primary(self, x):
            """The method."""
            return x

        alias = primary

        def wrapper(self, x):
            """Another name."""
            return self.primary(x)

    methods = public_methods(Client)
    assert methods["alias"] is methods["primary"]
    assert forwards_to(methods["wrapper"], set(methods) - {"wrapper"}) == "primary"
    assert forwards_to(methods["primary"], set(methods) - {"primary"}) is None


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_no_method_is_an_alias_or_a_forwarding_wrapper(client):
    methods = public_methods(client)
    functions = [inspect.unwrap(m) for m in methods.values()]
    assert len({id(f) for f in functions}) == len(functions), "two names share one function"
    for name, method in methods.items():
        assert forwards_to(method, set(methods) - {name}) is None, f"{client.__name__}.{name} forwards"


def callback_parameters(method: Callable) -> dict[str, object]:
    """Parameters of ``method`` whose annotation names a callable, with their evaluated annotation."""
    found = {}
    for name, parameter in inspect.signature(method).parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str) and ("Callable" in annotation or "Callback" in annotation):
            found[name] = eval(annotation, inspect.unwrap(method).__globals__)
        elif name == "progress" and annotation in ("bool", bool):
            continue  # the switch of the progress bar, not a callback
        elif name.startswith("on_") or name in ("progress", "callback"):
            found[name] = annotation
    return found


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_streamed_call_takes_one_callback_named_and_typed_the_same(client):
    with_callback = set()
    for name, method in public_methods(client).items():
        callbacks = callback_parameters(method)
        assert set(callbacks) <= {"on_progress"}, f"{client.__name__}.{name}: {sorted(callbacks)}"
        if callbacks:
            assert callbacks["on_progress"] == ProgressCallback | None
            assert inspect.signature(method).parameters["on_progress"].default is None
            # ... and the switch of its progress bar, on by default
            switch = inspect.signature(method).parameters["progress"]
            assert switch.annotation in ("bool", bool) and switch.default is True, f"{client.__name__}.{name}"
            with_callback.add(name)
    expected = {
        "VisionClient": {"attack", "upload_model"},
        "SequenceClient": {"analyze_gradients", "compare_truncation", "upload_model", "wait_job"},
        "AttentionClient": {"upload_model"},
    }
    assert with_callback == expected[client.__name__]
    assert ProgressCallback == Callable[[Progress], None]


def comparable(parameter: inspect.Parameter) -> tuple:
    return (parameter.name, parameter.kind, parameter.default, parameter.annotation)


@pytest.mark.parametrize(("sync", "asynchronous"), PAIRS, ids=lambda c: c.__name__)
def test_the_asyncio_clients_mirror_the_sync_clients(sync, asynchronous):
    sync_methods, async_methods = public_methods(sync), public_methods(asynchronous)
    assert sorted(sync_methods) == sorted(async_methods)
    for name, method in sync_methods.items():
        twin = async_methods[name]
        sync_parameters = [comparable(p) for p in inspect.signature(method).parameters.values()]
        async_parameters = [comparable(p) for p in inspect.signature(twin).parameters.values()]
        assert sync_parameters == async_parameters, name
        # Streams become async iterators; a job handle becomes its asyncio twin (its methods coroutines).
        expected_return = str(inspect.signature(method).return_annotation).replace(
            "Iterator[", "AsyncIterator["
        )
        expected_return = re.sub(r"\b(\w*Handle)\b", r"Async\1", expected_return)
        assert str(inspect.signature(twin).return_annotation) == expected_return, name
        assert inspect.isasyncgenfunction(twin) == inspect.isgeneratorfunction(method), name
        if not expected_return.endswith("Handle"):  # making a handle by id needs no call (``job``)
            assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
        assert twin.__doc__, name
    assert (sync.SERVICE, sync.FULL_NAME) == (asynchronous.SERVICE, asynchronous.FULL_NAME)
