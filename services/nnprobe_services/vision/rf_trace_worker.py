"""Models traced into torch.fx graphs in a child process, never in the server process.

``torch.fx.symbolic_trace`` patches process-global state while it runs (``torch.nn.Module.__call__`` and
``__getattr__``): two traces at once, or a trace next to any forward pass on another thread, break each other,
and a trace that fails can leave the patch installed for every later forward pass of the process. So one
spawned worker process (a ``ProcessPoolExecutor`` with a single worker, created on first use) builds each
model on the meta device and traces it, and the server process caches the result per model name.

The graph comes back as plain data (its nodes, and the submodules and attributes they use) and is rebuilt
here with ``fx.Graph.create_node``: unpickling a ``GraphModule`` itself would re-trace its generated code in
this process. Errors the worker raises (``UnknownName``, ``Unsupported``) come back as the same exceptions.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import operator
import pickle
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from nnprobe_services.errors import Unavailable
from nnprobe_services.vision.receptive_field import FieldError, Unsupported

#: Traced models kept per process (a graph on the meta device costs tens of kilobytes).
CACHE_SIZE = 16


class TracerUnavailable(Unavailable):
    """The tracing process stopped while it worked (UNAVAILABLE: the next request starts a new one)."""


@dataclass(frozen=True)
class _Ref:
    """A reference to an earlier node, by name, inside a node's arguments."""

    name: str


@dataclass(frozen=True)
class _Global:
    """A function by module and name, for functions that do not pickle (``F.max_pool2d`` is a local
    closure of ``boolean_dispatch``); the graph compares targets by identity, so the same object returns."""

    module: str
    name: str

    @staticmethod
    def of(target: Any) -> Any:
        module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
        if module and name and getattr(sys.modules.get(module), name, None) is target:
            return _Global(module, name)
        return target

    def load(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)


@dataclass(frozen=True)
class NodeRecord:
    """One graph node as plain data. ``module_stack``: ``nn_module_stack`` as (path, class name) pairs."""

    op: str
    name: str
    target: Any
    args: Any
    kwargs: Any
    module_stack: dict[str, tuple[str, str]] | None


@dataclass(frozen=True)
class TracedGraph:
    """A traced model as plain data: its nodes in order and the objects its modules and attributes name."""

    nodes: list[NodeRecord]
    attributes: dict[str, Any]
    class_name: str


def _ref(node: fx.Node) -> Any:
    return _Ref(node.name)


def flatten(gm: fx.GraphModule) -> TracedGraph:
    """``gm`` as plain data that pickles without its generated code."""
    records = []
    attributes: dict[str, Any] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        records.append(
            NodeRecord(
                node.op,
                node.name,
                _Global.of(node.target) if node.op == "call_function" else node.target,
                fx.node.map_arg(node.args, _ref),
                fx.node.map_arg(node.kwargs, _ref),
                {
                    key: (str(path), getattr(kind, "__qualname__", str(kind)))
                    for key, (path, kind) in stack.items()
                }
                if stack
                else None,
            )
        )
        if node.op in ("call_module", "get_attr"):
            attributes[str(node.target)] = operator.attrgetter(str(node.target))(gm)
    return TracedGraph(records, attributes, type(gm).__name__)


def rebuild(traced: TracedGraph) -> fx.GraphModule:
    """The ``GraphModule`` of ``flatten``'s output, built node by node (no tracing), in eval mode."""
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}

    def resolve(value: Any) -> Any:
        return nodes[value.name] if isinstance(value, _Ref) else value

    for record in traced.nodes:
        node = graph.create_node(
            record.op,
            record.target.load() if isinstance(record.target, _Global) else record.target,
            fx.node.map_aggregate(record.args, resolve),
            fx.node.map_aggregate(record.kwargs, resolve),
            name=record.name,
        )
        if node.name != record.name:  # pragma: no cover - the names were made by the same rules
            raise Unsupported(f"node {record.name!r} was renamed to {node.name!r} on the way back")
        if record.module_stack:
            node.meta["nn_module_stack"] = dict(record.module_stack)
        nodes[record.name] = node
    return fx.GraphModule(traced.attributes, graph, class_name=traced.class_name).eval()


def trace_in_child(name: str) -> TracedGraph:
    """Runs in the worker process: build ``name`` on the meta device, trace it, flatten it."""
    from nnprobe_services.vision import rf_graph

    traced = flatten(rf_graph.trace(rf_graph.build(name, "meta"), name))
    try:
        pickle.dumps(traced)
    except Exception as error:  # a model holding objects that cannot travel between processes
        raise Unsupported(
            f"the traced graph of model {name!r} cannot be passed between processes: "
            f"{type(error).__name__}: {error}",
            field="model.name",
        ) from None
    return traced


# -- the worker and the cache ---------------------------------------------------------------------------
_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_cache: OrderedDict[str, fx.GraphModule | FieldError] = OrderedDict()
_pending: dict[str, Future] = {}
#: What the worker runs (replaceable in tests; it must be importable in the child).
_task: Callable[[str], TracedGraph] = trace_in_child


def _new_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _submit(name: str) -> tuple[ProcessPoolExecutor, Future]:
    """Hand ``name`` to the worker, starting it (again) when there is none or it has died."""
    global _pool
    with _lock:
        for _ in range(2):
            if _pool is None:
                _pool = _new_pool()
            try:
                return _pool, _pool.submit(_task, name)
            except BrokenProcessPool:  # it died since the last request
                _pool.shutdown(wait=False, cancel_futures=True)
                _pool = None
    raise TracerUnavailable("the model tracing process cannot be started", field="model.name")


def _trace_remote(name: str) -> fx.GraphModule:
    pool, future = _submit(name)
    try:
        traced = future.result()
    except BrokenProcessPool:
        global _pool
        with _lock:
            if _pool is pool:
                _pool = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise TracerUnavailable(
            f"the model tracing process stopped unexpectedly while tracing {name!r}; "
            f"the next request starts a new one",
            field="model.name",
        ) from None
    return rebuild(traced)


def _fresh(error: FieldError) -> FieldError:
    """A new exception like ``error``, so that concurrent callers never share one traceback."""
    return type(error)(error.message, field=error.field)


def traced(name: str) -> fx.GraphModule:
    """The traced graph of model ``name`` on the meta device, shared: never run it with real data, and
    ``copy.deepcopy`` it before changing it. Raises ``UnknownName``/``Unsupported`` (cached too), or
    ``TracerUnavailable`` when the worker died. Concurrent first requests for a name trace it once."""
    with _lock:
        hit = _cache.get(name)
        if hit is not None:
            _cache.move_to_end(name)
            if isinstance(hit, FieldError):
                raise _fresh(hit)
            return hit
        waiting = _pending.get(name)
        owner = waiting is None
        if waiting is None:
            waiting = _pending[name] = Future()
    if not owner:
        try:
            return waiting.result()
        except FieldError as error:
            raise _fresh(error) from None
    try:
        result: fx.GraphModule | FieldError = _trace_remote(name)
    except FieldError as error:
        result = error
    except BaseException as error:
        with _lock:
            del _pending[name]
        waiting.set_exception(error)
        raise
    with _lock:
        del _pending[name]
        _cache[name] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    if isinstance(result, FieldError):
        waiting.set_exception(result)
        raise _fresh(result)
    waiting.set_result(result)
    return result


def shutdown() -> None:
    """Stop the worker process (at exit; tests). A later request starts a new one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def forget(name: str | None = None) -> None:
    """Drop ``name`` (every model when None) from the cache; the next request traces it again."""
    with _lock:
        if name is None:
            _cache.clear()
        else:
            _cache.pop(name, None)


atexit.register(shutdown)
