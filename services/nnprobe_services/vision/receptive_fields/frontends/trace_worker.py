"""Models captured (``torch_capture``: torch.export, torch.fx) in a child process, never in the server
process.

Tracing patches process-global state while it runs (``torch.fx.symbolic_trace`` patches
``torch.nn.Module.__call__`` and ``__getattr__``; export installs dispatch modes): two traces at once, or a
trace next to any forward pass on another thread, break each other, and a trace that fails can leave a patch
installed for every later forward pass of the process. So one spawned worker process (a
``ProcessPoolExecutor`` with a single worker, created on first use) builds each model on the meta device and
captures it, and the server process caches the result per (model name, input size).

The result is the receptive-field graph (``ir.Capture``, plain data) and the runnable ATen graph, which
comes back as plain data (its nodes, and the attributes they use) and is rebuilt here with
``fx.Graph.create_node``: unpickling a ``GraphModule`` itself would re-trace its generated code in this
process.
Errors the worker raises (``UnknownName``, ``Unsupported``) come back as the same exceptions.
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
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from nnprobe_services.errors import ResourceExhausted, Unavailable
from nnprobe_services.vision.receptive_fields.arithmetic import FieldError, Unsupported
from nnprobe_services.vision.receptive_fields.ir import Capture

#: Captured models kept per process (a graph on the meta device costs tens of kilobytes).
CACHE_SIZE = 32
#: Most seconds one capture may take; a longer one (options such as ``depth=100000``) stops the worker.
CAPTURE_SECONDS = 120.0
#: What ``captured`` returns: the receptive-field graph and the runnable ATen graph (on the meta device).
Captured = tuple[Capture, fx.GraphModule]


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
        if isinstance(target, torch._ops.OpOverload):  # aten.conv2d.default: found again by its names
            packet = target.overloadpacket
            return _Global(f"torch.ops.{target.namespace}", f"{packet.__name__}.{target._overloadname}")
        module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
        if module and name and getattr(sys.modules.get(module), name, None) is target:
            return _Global(module, name)
        return target

    def load(self) -> Any:
        if self.module.startswith("torch.ops."):
            return operator.attrgetter(f"{self.module.removeprefix('torch.ops.')}.{self.name}")(torch.ops)
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


@dataclass(frozen=True)
class Program:
    """A ``torch.export`` archive of the model repository, as a worker key: ``stamp`` (the file's inode,
    size and modification time) makes a replaced file a new key; ``max_nodes``/``max_bytes`` are the
    repository's limits, checked again before it is loaded (``artifacts.load_pt2``)."""

    label: str
    path: str
    stamp: tuple[int, int, int]
    max_nodes: int
    max_bytes: int


def _program_module(program: Program, size: tuple[int, int]) -> torch.nn.Module:
    """The module of the archive, after the repository's safety checks; ``InvalidSpec`` on ``input_size``
    when its program was exported for other image sizes."""
    from pathlib import Path

    from nnprobe_services.errors import InvalidArgument
    from nnprobe_services.repository import artifacts
    from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec

    try:
        exported = artifacts.load_pt2(
            Path(program.path), max_nodes=program.max_nodes, max_bytes=program.max_bytes, field="model.name"
        )
    except InvalidArgument as error:
        raise Unsupported(f"model {program.label!r}: {error.message}", field="model.name") from None
    images = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name not in _state(exported)]
    value = images[0].meta.get("val") if len(images) == 1 else None
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) and value.dim() == 4 else None
    if shape is not None:
        for axis, exported_side, wanted in zip(("height", "width"), shape[2:], size, strict=True):
            if isinstance(exported_side, int) and exported_side != wanted:
                raise InvalidSpec(
                    f"model {program.label!r} was exported for inputs of {axis} {exported_side}, not "
                    f"{wanted}; its program takes no other {axis}",
                    field="input_size",
                )
    return exported.module()


def _state(exported: torch.export.ExportedProgram) -> set[str]:
    """The placeholders of ``exported`` that hold parameters, buffers and constants."""
    signature = exported.graph_signature
    return {
        spec.arg.name
        for spec in signature.input_specs
        if spec.kind != torch.export.graph_signature.InputKind.USER_INPUT
    }


def capture_in_child(key: tuple[Any, ...]) -> tuple[Capture, TracedGraph]:
    """Runs in the worker process: build model ``name`` on the meta device with its constructor options
    (the key's third item, when there is one), or load a repository ``Program``; capture it at ``size``."""
    from nnprobe_services.vision.receptive_fields import catalogue
    from nnprobe_services.vision.receptive_fields.frontends import torch_capture

    source, size, *rest = key
    if isinstance(source, Program):
        name = source.label
        capture, gm = torch_capture.capture(_program_module(source, size), name, size, 3, None)
    else:
        name = source
        model = catalogue.build(name, "meta", rest[0] if rest else ())
        capture, gm = torch_capture.capture(
            model, name, size, catalogue.input_channels(model), catalogue.final_stride(model)
        )
    traced = flatten(gm)
    try:
        pickle.dumps(traced)
    except Exception as error:  # a model holding objects that cannot travel between processes
        raise Unsupported(
            f"the captured graph of model {name!r} cannot be passed between processes: "
            f"{type(error).__name__}: {error}",
            field="model.name",
        ) from None
    return capture, traced


# -- the worker and the cache ---------------------------------------------------------------------------
_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_cache: OrderedDict[Any, Any] = OrderedDict()
_pending: dict[Any, Future] = {}
#: What the worker runs (replaceable in tests; it must be importable in the child).
_task: Callable[[Any], Any] = capture_in_child


def _new_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _submit(name: Any) -> tuple[ProcessPoolExecutor, Future]:
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


def _stop(pool: ProcessPoolExecutor) -> None:
    """Forget ``pool`` and end its worker now (the next request starts a new one)."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # None once shut down
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _trace_remote(name: Any) -> Any:
    pool, future = _submit(name)
    try:
        traced = future.result(timeout=CAPTURE_SECONDS)
    except TimeoutError:
        _stop(pool)
        options = isinstance(name, tuple) and len(name) > 2
        raise ResourceExhausted(
            f"capturing {_label(name)} took more than {CAPTURE_SECONDS:g} s and was stopped; "
            + ("choose smaller model options" if options else "choose a smaller input size or model"),
            field="model.options" if options else "model.name",
        ) from None
    except (BrokenProcessPool, CancelledError):  # it died, or was stopped while this one waited
        _stop(pool)
        raise TracerUnavailable(
            f"the model tracing process stopped unexpectedly while tracing {_label(name)}; "
            f"the next request starts a new one",
            field="model.name",
        ) from None
    if isinstance(traced, tuple) and len(traced) == 2 and isinstance(traced[1], TracedGraph):
        return traced[0], rebuild(traced[1])
    return traced


def _label(key: Any) -> str:
    """The model a worker key names, as messages quote it: ``'resnet50' at 224 x 224``."""
    if not isinstance(key, tuple) or len(key) < 2:
        return "a model"
    source, size = key[0], key[1]
    name = source.label if isinstance(source, Program) else str(source)
    return f"'{name[:80]}' at {size[0]} x {size[1]}"


def _fresh(error: FieldError) -> FieldError:
    """A new exception like ``error``, so that concurrent callers never share one traceback."""
    return type(error)(error.message, field=error.field)


def captured(name: str, size: tuple[int, int], options: tuple[tuple[str, str], ...] = ()) -> Captured:
    """The capture of model ``name`` built with constructor ``options`` (``model_options.ModelOptions``,
    part of the cache key) at input ``size`` and its runnable graph on the meta device, shared: never run
    the graph with real data, and ``copy.deepcopy`` it before changing it. Raises
    ``UnknownName``/``InvalidSpec``/``Unsupported`` (cached too), or ``TracerUnavailable`` when the worker
    died. Concurrent first requests for a model, options and size capture it once."""
    at = (int(size[0]), int(size[1]))
    return traced((name, at, tuple(options)) if options else (name, at))


def captured_program(program: Program, size: tuple[int, int]) -> Captured:
    """``captured`` for a ``torch.export`` archive of the model repository."""
    return traced((program, (int(size[0]), int(size[1]))))


def traced(name: Any) -> Any:
    """What the worker returns for ``name`` (a key of ``_task``), cached; see ``captured``."""
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
        result: Any = _trace_remote(name)
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
    """Drop model ``name`` at every size (every model when None) from the cache; the next request captures
    it again."""
    with _lock:
        for key in list(_cache):
            if name is None or key == name or (isinstance(key, tuple) and key[0] == name):
                del _cache[key]


atexit.register(shutdown)
