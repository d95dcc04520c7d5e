"""PyTorch models captured into the receptive-field graph (``ir``), at a static input size.  ``torch.export``
first (non-strict, at the request's input size: Python that depends only on shapes, such as TensorFlow-style
"same" padding, is specialised away), ``torch.fx.symbolic_trace`` as the fallback (its graph is then lowered
to ATen by ``make_fx`` on the same static shape). Both give an ATen graph, whose nodes ``lower`` maps onto the
typed operations of ``ir`` through the registry of ``torch_lowerings``. Runs on the ``meta`` device: no
memory, no compute. Call it in a worker process (``frontends.trace_worker``): tracing patches process-global
state.

Node names follow torch.fx's: a node that ends a call of a ``torch.nn`` module is named by the module path
(``layer1_0_conv1``; ``layer1_0_relu_1`` for its second call), any other by its operation and a counter
(``add``, ``cat_14``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.frontends.torch_lowerings import lower_node
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode, Input, Operation, Split


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value.shape) if isinstance(value, torch.Tensor) else None


def _op_name(node: fx.Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d``; ``operator.getitem`` -> ``getitem``."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    if hasattr(target, "_schema"):
        name = target._schema.name.split("::")[-1]  # type: ignore[union-attr]
    return name


def _leaf_type(kind: Any) -> bool:
    text = (
        kind
        if isinstance(kind, str)
        else f"{getattr(kind, '__module__', '')}.{getattr(kind, '__name__', '')}"
    )
    return text.startswith(("torch.nn.", "torch.ao.nn.")) and not text.endswith(("Sequential", "ModuleList"))


def _stack(node: fx.Node) -> list[tuple[str, str, Any]]:
    """(key, path, class) of each module enclosing ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(str(key), str(path), kind) for key, (path, kind) in stack.items()]


def lower(gm: fx.GraphModule, model: str, frontend: str, final_stride: int | None) -> Capture:
    """Map an ATen graph (placeholder = the input image, parameters as get_attr) onto ``ir``."""
    nodes = [n for n in gm.graph.nodes]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Unsupported(
            f"model {model!r} takes {len(placeholders)} inputs, not one image", field="model.name"
        )
    shapes, data = _data_flow(nodes, placeholders[0])
    namer = _Namer(nodes)
    names: dict[str, str] = {}
    out: list[GraphNode] = []
    tuples: dict[str, tuple[str, fx.Node]] = {}
    for node in nodes:
        if node.name not in data:
            continue
        stack = _stack(node)
        operation: Operation
        if node.op == "placeholder":
            name, operation = node.name, Input(shapes[node.name][1])
        else:
            operation = lower_node(node, _op_name(node), shapes, tuples)
            name = namer.name(node, stack)
        namer.taken.add(name)
        names[node.name] = name
        inputs = tuple(names[i.name] for i in node.all_input_nodes if i.name in data)
        if isinstance(operation, Split):
            tuples[node.name] = (_op_name(node), node)
        module, modules = (stack[-1][1] if stack else ""), tuple(p for _, p, _ in stack)
        label = _label(node, stack)
        out.append(GraphNode(name, operation, inputs, shapes[node.name], label, module, modules, node.name))
    top = tuple(name for name, _ in gm.named_children() if not name.startswith("_"))
    size = shapes[placeholders[0].name]
    return Capture(model, tuple(out), (size[2], size[3]), frontend, final_stride, top)


def _data_flow(nodes: list[fx.Node], image: fx.Node) -> tuple[dict[str, Any], set[str]]:
    """Every node's output shape, and the nodes that depend on the image (marked ``rf_data`` too)."""
    data: set[str] = {image.name}
    shapes: dict[str, Any] = {}
    for node in nodes:
        shapes[node.name] = _shape(node.meta.get("val"))
        if node.op == "call_function" and any(i.name in data for i in node.all_input_nodes):
            data.add(node.name)
        node.meta["rf_data"] = node.name in data
    return shapes, data


class _Namer:
    """torch.fx's names: a node that ends a call of a ``torch.nn`` module by the module path, any other by
    its operation and a counter; never twice the same."""

    def __init__(self, nodes: list[fx.Node]) -> None:
        self.last_of_call = {key: node for node in nodes for key, _, _ in _stack(node)[-1:]}
        self.counters: dict[str, int] = {}
        self.taken: set[str] = set()

    def name(self, node: fx.Node, stack: list[tuple[str, str, Any]]) -> str:
        if stack and _leaf_type(stack[-1][2]) and self.last_of_call.get(stack[-1][0]) is node:
            call = re.search(r"@(\d+)$", stack[-1][0])
            name = stack[-1][1].replace(".", "_") + (f"_{call.group(1)}" if call else "")
        else:
            base = _op_name(node).rstrip("_") or "op"
            count = self.counters.get(base, 0)
            self.counters[base] = count + 1
            name = base if count == 0 else f"{base}_{count}"
        while name in self.taken:
            name += "_"
        return name


def _label(node: fx.Node, stack: list[tuple[str, str, Any]]) -> str:
    if stack and _leaf_type(stack[-1][2]):
        kind = stack[-1][2]
        return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    return _op_name(node).rstrip("_")


# -- capture -------------------------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the meta device for models built by name)."""
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    return first.device if first is not None else torch.device("meta")


def export_graph(model: nn.Module, size: tuple[int, int], channels: int) -> fx.GraphModule:
    """``torch.export`` at the static size, as a GraphModule of ATen ops with parameters as attributes."""
    example = torch.empty(1, channels, *size, device=_device(model))
    program = torch.export.export(model, (example,), strict=False)
    gm = program.module()
    for node in list(gm.graph.nodes):  # export's input guards hold no data flow
        if node.op == "call_module" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    return gm  # type: ignore[return-value]


def fx_graph(model: nn.Module, size: tuple[int, int], channels: int) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``, lowered to ATen by ``make_fx`` at the static size."""
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = fx.symbolic_trace(model)
    example = torch.empty(1, channels, *size, device=_device(model))
    lowered = make_fx(traced, pre_dispatch=True)(example)
    return lowered


FRONTENDS: list[tuple[str, Callable[[nn.Module, tuple[int, int], int], fx.GraphModule]]] = [
    ("torch.export", export_graph),
    ("torch.fx", fx_graph),
]


def capture(
    model: nn.Module, name: str, size: tuple[int, int], channels: int, final_stride: int | None
) -> tuple[Capture, fx.GraphModule]:
    """The receptive-field graph of ``model`` at ``size`` and the runnable ATen graph it came from.

    Raises ``Unsupported`` naming both front-ends' errors when neither captures the model."""
    errors = []
    for frontend, make in FRONTENDS:
        try:
            gm = make(model, size, channels)
        except Exception as error:  # capture runs arbitrary model code; any failure means "cannot capture"
            errors.append(f"{frontend}: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
            continue
        try:
            return lower(gm, name, frontend, final_stride), gm
        except Unsupported:
            raise
        except Exception as error:  # a graph this reader does not expect: say so, never fail inside
            raise Unsupported(
                f"the {frontend} graph of model {name!r} cannot be read: {type(error).__name__}: {error}",
                field="model.name",
            ) from None
    raise Unsupported(
        f"model {name!r} cannot be captured into a graph at {size[0]} x {size[1]} ({'; '.join(errors)})",
        field="model.name",
    )
