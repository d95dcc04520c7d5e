"""PyTorch models captured into the receptive-field graph (``rf_ir``), at a static input size.

``torch.export`` first (non-strict, at the request's input size: Python that depends only on shapes, such as
TensorFlow-style "same" padding, is specialised away), ``torch.fx.symbolic_trace`` as the fallback (its graph
is then lowered to ATen by ``make_fx`` on the same static shape). Both give an ATen graph, which
``lower`` maps onto the engine's vocabulary. Runs on the ``meta`` device: no memory, no compute. Call it in a
worker process (``rf_trace_worker``): tracing patches process-global state.

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

from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported, Window
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode

ELEMENTWISE = {
    "relu", "relu_", "relu6", "silu", "silu_", "gelu", "gelu_", "sigmoid", "sigmoid_", "hardsigmoid",
    "hardsigmoid_", "hardswish", "hardswish_", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "clamp_max", "tanh", "tanh_", "elu", "elu_", "leaky_relu", "leaky_relu_", "mish",
    "mish_", "softplus", "selu", "celu", "prelu", "_prelu_kernel", "dropout", "dropout_",
    "feature_dropout", "alpha_dropout", "native_dropout", "clone", "contiguous", "_to_copy", "to", "alias",
    "detach", "lift_fresh_copy", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "reciprocal", "erf",
    "sign", "square", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "where", "maximum",
    "minimum", "expand", "expand_as", "type_as", "masked_fill", "fill_", "copy_", "rsub", "logical_not",
    "sin", "cos", "logsigmoid", "threshold",
}  # fmt: skip
RESHAPE = set(
    [
        "view",
        "reshape",
        "_unsafe_view",
        "flatten",
        "unflatten",
        "squeeze",
        "unsqueeze",
        "reshape_as",
        "view_as",
    ]
)
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "max", "min", "logsumexp"}


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def windows(
    kernel: Any, stride: Any, padding: Any, dilation: Any = 1, ceil_mode: bool = False
) -> tuple[Window, Window]:
    """(height, width) windows from PyTorch's arguments (``padding``: ints, or ``same``/``valid``)."""
    k, d = _pair(kernel), _pair(dilation)
    s = _pair(stride) if stride not in (None, (), []) else k
    if isinstance(padding, str):
        total = [d[i] * (k[i] - 1) if padding == "same" else 0 for i in range(2)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        p = _pair(padding)
        pads = [(p[0], p[0]), (p[1], p[1])]
    w = [Window(k[i], s[i], d[i], pads[i][0], pads[i][1], bool(ceil_mode)) for i in range(2)]
    return w[0], w[1]


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value.shape) if isinstance(value, torch.Tensor) else None


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _dims(value: Any, rank: int) -> tuple[int, ...]:
    values = [value] if isinstance(value, int) else list(value or range(rank))
    return tuple(sorted(int(v) % rank for v in values))


def _op_name(node: fx.Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d``; ``operator.getitem`` -> ``getitem``."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    if hasattr(target, "_schema"):
        name = target._schema.name.split("::")[-1]  # type: ignore[union-attr]
    return name


def _lower_node(node: fx.Node, shapes: dict[str, Any], tuples: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(op, attrs) of one ATen node with at least one data input."""
    args: Any = node.args
    name = _op_name(node)
    base = name.rstrip("_") if name not in ("relu_", "silu_") else name[:-1]
    x = args[0] if args else None
    rank = len(shapes[x.name]) if isinstance(x, fx.Node) and shapes.get(x.name) is not None else 4
    if name in ("conv2d", "convolution", "_convolution"):
        weight = shapes.get(args[1].name) if isinstance(args[1], fx.Node) else None
        if weight is None or len(weight) != 4:
            return "unsupported", {
                "why": f"{name} with a {len(weight or ())}-d weight (not a 2-d convolution)"
            }
        if name == "conv2d":
            stride, padding, dilation, groups = (
                _arg(node, 3, "stride", 1),
                _arg(node, 4, "padding", 0),
                _arg(node, 5, "dilation", 1),
                _arg(node, 6, "groups", 1),
            )
        else:
            if _arg(node, 6, "transposed", False):
                return "unsupported", {"why": "a transposed convolution"}
            stride, padding, dilation = args[3], args[4], args[5]
            groups = _arg(node, 8, "groups", 1)
        w = windows((weight[2], weight[3]), stride, padding, dilation)
        return "conv", {
            "windows": w,
            "out_channels": weight[0],
            "in_channels": weight[1] * int(groups),
            "groups": int(groups),
        }
    if name in ("max_pool2d", "max_pool2d_with_indices"):
        w = windows(
            args[1],
            _arg(node, 2, "stride", None),
            _arg(node, 3, "padding", 0),
            _arg(node, 4, "dilation", 1),
            _arg(node, 5, "ceil_mode", False),
        )
        return "pool", {"windows": w, "pool": "max"}
    if name == "avg_pool2d":
        w = windows(
            args[1],
            _arg(node, 2, "stride", None),
            _arg(node, 3, "padding", 0),
            1,
            _arg(node, 4, "ceil_mode"),
        )
        return "pool", {"windows": w, "pool": "avg"}
    if name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d"):
        size = args[1]
        pair = (size, size) if isinstance(size, int) or size is None else (size[0], size[-1])
        return "adaptive_pool", {"output_size": pair, "pool": "max" if "max" in name else "avg"}
    if name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d"):
        mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate"}.get(name)
        if mode is None:
            mode = _arg(node, 2, "mode", "constant") if name == "pad" else "constant"
        return "pad", {
            "pads": tuple(int(p) for p in args[1]),
            "mode": "zeros" if mode == "constant" else mode,
        }
    if name == "stack":
        tensors = args[0]
        first = shapes.get(tensors[0].name) if tensors else None
        return "stack", {"dim": int(_arg(node, 1, "dim", 0)) % (len(first or (0,) * 4) + 1)}
    if name == "linalg_vector_norm":
        dims = _dims(_arg(node, 2, "dim", None), rank)
        return "reduce", {"dims": dims, "keepdim": bool(_arg(node, 3, "keepdim", False)), "kind": name}
    if name in ("cat", "concat"):
        tensors = args[0]
        first = shapes.get(tensors[0].name) if tensors else None
        return "cat", {"dim": int(_arg(node, 1, "dim", 0)) % len(first or (0,) * 4)}
    if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
        return "tuple", {}
    if name == "getitem":
        return "getitem", {"index": int(args[1])}
    if name in ("slice", "narrow"):
        dim = int(_arg(node, 1, "dim", 0)) % rank
        n = shapes[x.name][dim]  # type: ignore[union-attr]
        if name == "narrow":
            start, end, step = int(args[2]), int(args[2]) + int(args[3]), 1
        else:
            start, end, step = _arg(node, 2, "start", 0), _arg(node, 3, "end", None), _arg(node, 4, "step", 1)
            start, end, _ = slice(start, end, step).indices(n)
        return "slice", {"dim": dim, "start": int(start), "end": int(end), "step": int(step)}
    if name in ("permute", "transpose", "t", "swapaxes"):
        if name == "permute":
            dims = tuple(int(d) % rank for d in args[1])
        else:
            a, b = (0, 1) if name == "t" else (int(args[1]) % rank, int(args[2]) % rank)
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
            dims = tuple(order)
        return "permute", {"dims": dims}
    if name in RESHAPE:
        return "reshape", {}
    if (base in REDUCE and name != "max") or (name == "max" and len(args) > 1):
        dims = _dims(_arg(node, 1, "dim", None), rank)
        return "reduce", {"dims": dims, "keepdim": bool(_arg(node, 2, "keepdim", False)), "kind": base}
    if name in ("linear", "matmul", "mm", "addmm", "bmm"):
        data_operands = [a for a in node.all_input_nodes if a.name in shapes and a.meta.get("rf_data")]
        if name == "linear" and len(data_operands) == 1:
            weight = shapes[args[1].name]  # type: ignore[union-attr]
            return "linear", {"in_features": weight[1], "out_features": weight[0]}
        return "unsupported", {"why": f"{name} of two computed tensors (attention)"}
    if name in ("layer_norm", "native_layer_norm"):
        ndim = len(args[1])
        return "norm", {"dims": tuple(range(rank - ndim, rank))}
    if name in ("group_norm", "native_group_norm", "instance_norm"):
        return "norm", {"dims": tuple(range(1, rank))}
    if name in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"):
        training = name == "_native_batch_norm_legit" or bool(_arg(node, 5, "training", False))
        if training and name != "_native_batch_norm_legit_no_training":
            return "norm", {"dims": (0, *range(2, rank))}
        return ("tuple", {}) if name.startswith("_native") else ("elementwise", {})
    if name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
        return "softmax", {"dim": int(args[1]) % rank}
    if name in ("upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_nearest2d.vec"):
        return "upsample", {}
    if name in ("pixel_shuffle", "pixel_unshuffle"):
        return name, {"factor": int(args[1])}
    if base in ELEMENTWISE or name in ELEMENTWISE:
        return "elementwise", {}
    return "unsupported", {"why": f"the operation {name}"}


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
    """Map an ATen graph (placeholder = the input image, parameters as get_attr) onto ``rf_ir``."""
    nodes = [n for n in gm.graph.nodes]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Unsupported(
            f"model {model!r} takes {len(placeholders)} inputs, not one image", field="model.name"
        )
    data: set[str] = {placeholders[0].name}
    shapes: dict[str, Any] = {}
    for node in nodes:
        value = node.meta.get("val")
        shapes[node.name] = _shape(value)
        if node.op == "call_function" and any(i.name in data for i in node.all_input_nodes):
            data.add(node.name)
        node.meta["rf_data"] = node.name in data
    last_of_call = {key: node for node in nodes for key, _, _ in _stack(node)[-1:]}
    names: dict[str, str] = {}
    counters: dict[str, int] = {}
    taken: set[str] = set()
    out: list[GraphNode] = []
    tuple_ops: dict[str, tuple[str, fx.Node]] = {}
    for node in nodes:
        if node.name not in data:
            continue
        stack = _stack(node)
        module = stack[-1][1] if stack else ""
        if node.op == "placeholder":
            name, op, attrs = node.name, "input", {"channels": shapes[node.name][1]}
        else:
            op, attrs = _lower_node(node, shapes, tuple_ops)
            if stack and _leaf_type(stack[-1][2]) and last_of_call.get(stack[-1][0]) is node:
                call = re.search(r"@(\d+)$", stack[-1][0])
                name = module.replace(".", "_") + (f"_{call.group(1)}" if call else "")
            else:
                base = _op_name(node).rstrip("_") or "op"
                count = counters.get(base, 0)
                counters[base] = count + 1
                name = base if count == 0 else f"{base}_{count}"
            while name in taken:
                name += "_"
        taken.add(name)
        names[node.name] = name
        inputs = tuple(names[i.name] for i in node.all_input_nodes if i.name in data)
        if op == "tuple":
            tuple_ops[node.name] = (_op_name(node), node)
        if op == "getitem":
            op, attrs = _getitem(node, shapes, tuple_ops)
        label = _label(node, stack)
        out.append(
            GraphNode(
                name,
                op,
                inputs,
                shapes[node.name],
                attrs,
                label,
                module,
                tuple(p for _, p, _ in stack),
                node.name,
            )
        )
    top = tuple(name for name, _ in gm.named_children() if not name.startswith("_"))
    size = shapes[placeholders[0].name]
    return Capture(model, tuple(out), (size[2], size[3]), frontend, final_stride, top)


def _getitem(node: fx.Node, shapes: dict[str, Any], tuple_ops: dict[str, tuple[str, fx.Node]]):
    """A piece of a split (a slice along its dimension) or the first result of a tuple-valued op."""
    args: Any = node.args
    source = args[0]
    index = int(args[1])  # type: ignore[arg-type]
    kind, producer = tuple_ops.get(source.name, ("", source))  # type: ignore[union-attr]
    if kind in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
        pargs: Any = producer.args
        x = pargs[0]
        in_shape = shapes[x.name]  # type: ignore[union-attr]
        dim = int(_arg(producer, 2, "dim", 0)) % len(in_shape)
        if kind == "unbind":
            dim = int(_arg(producer, 1, "dim", 0)) % len(in_shape)
            return "unsupported", {"why": "unbind (a select along a dimension)"}
        values = producer.meta.get("val")
        if not isinstance(values, (list, tuple)):
            return "unsupported", {"why": f"{kind} whose pieces have no recorded shapes"}
        sizes = [int(t.shape[dim]) for t in values]
        start = sum(sizes[:index])
        return "slice", {"dim": dim, "start": start, "end": start + sizes[index], "step": 1}
    if index == 0:
        return "elementwise", {}
    return "unsupported", {"why": f"result {index} of {kind or source}"}  # type: ignore[str-bytes-safe]


def _label(node: fx.Node, stack: list[tuple[str, str, Any]]) -> str:
    if stack and _leaf_type(stack[-1][2]):
        kind = stack[-1][2]
        return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    return _op_name(node).rstrip("_")


# -- capture ---------------------------------------------------------------------------------------------
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
