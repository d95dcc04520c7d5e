"""Models traced into graphs (torch.fx) and the receptive field of every node of the graph.

Models are built with random weights (never downloaded) on the ``meta`` device for the arithmetic: tracing
and shape propagation then cost no memory and no compute. Each node is mapped to a sliding window (conv,
pooling), a point-wise operation, a merge of branches, or something without a finite spatial field. The
shapes the trace produces are checked against the arithmetic at every node.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

from nnprobe_services.vision import rf_trace_worker
from nnprobe_services.vision.receptive_field import (
    FieldError,
    InvalidSpec,
    LayerField,
    UnknownName,
    Unsupported,
    Window,
    apply,
    describe,
    input_axis,
    merge,
)

#: torchvision models: constructor keyword arguments and the default input size.
TORCHVISION: dict[str, tuple[dict[str, Any], int]] = {
    "alexnet": ({}, 224),
    "vgg11": ({}, 224),
    "vgg13": ({}, 224),
    "vgg16": ({}, 224),
    "vgg19": ({}, 224),
    "resnet18": ({}, 224),
    "resnet34": ({}, 224),
    "resnet50": ({}, 224),
    "resnet101": ({}, 224),
    "resnet152": ({}, 224),
    "mobilenet_v2": ({}, 224),
    "densenet121": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 299),
}
#: The stages of the ResNet paper (conv2_x ... conv5_x) by the modules that end them. Stage conv1 needs no
#: alias: the module ``conv1`` is that stage's convolution, and the ReLU after it has the same field.
RESNET_STAGES = {"conv2": "layer1", "conv3": "layer2", "conv4": "layer3", "conv5": "layer4"}

POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.PReLU,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
POINTWISE_FUNCTIONS: set[Any] = {
    F.relu,
    F.relu_,
    F.relu6,
    F.hardtanh,
    F.silu,
    F.gelu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.sigmoid,
    F.dropout,
    F.batch_norm,
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "clamp", "float", "to"}
ARITHMETIC = {
    operator.add: "add",
    operator.iadd: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    operator.sub: "sub",
    operator.truediv: "div",
    torch.add: "add",
    torch.mul: "mul",
    torch.sub: "sub",
}
ARITHMETIC_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub", "div": "div"}


@dataclass(frozen=True)
class Op:
    """What one node does, for the arithmetic.

    ``category``: ``input``, ``window`` (conv/pool: ``windows`` set), ``adaptive`` (``output_size`` set),
    ``pointwise``, ``merge``, ``flatten`` (leaves the spatial layout) or ``unsupported``.
    """

    category: str
    kind: str = "other"
    label: str = ""
    windows: tuple[Window, Window] | None = None
    output_size: tuple[int | None, int | None] | None = None
    pool: str = ""  # "max" or "avg" for pooling nodes

    def describe(self) -> str:
        if self.windows is not None:
            return describe(self.kind, *self.windows, label=self.label)
        return self.label


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _window_pair(kernel, stride, padding, dilation, ceil_mode) -> tuple[Window, Window]:
    k, s, d = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(dilation)
    if isinstance(padding, str):  # nn.Conv2d's "same" (stride 1 only) or "valid"
        pads = [(0, 0), (0, 0)]
        if padding == "same":
            total = [d[i] * (k[i] - 1) for i in range(2)]
            pads = [(t // 2, t - t // 2) for t in total]
    else:
        p = _pair(padding)
        pads = [(p[0], p[0]), (p[1], p[1])]
    return tuple(  # type: ignore[return-value]
        Window(k[i], s[i], d[i], pads[i][0], pads[i][1], bool(ceil_mode)) for i in range(2)
    )


def _arguments(node: fx.Node, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    values = dict(defaults)
    values.update(zip(names, node.args, strict=False))
    values.update(node.kwargs)
    return values


def _module_op(module: nn.Module) -> Op:
    name = type(module).__name__
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
        w = _window_pair(module.kernel_size, module.stride, module.padding, module.dilation, False)
        return Op("window", "conv", name, windows=w)
    if isinstance(module, nn.MaxPool2d) and type(module).forward is nn.MaxPool2d.forward:
        m = module
        w = _window_pair(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        return Op("window", "pool", name, windows=w, pool="max")
    if isinstance(module, nn.AvgPool2d) and type(module).forward is nn.AvgPool2d.forward:
        a = module
        return Op(
            "window", "pool", name, windows=_window_pair(a.kernel_size, a.stride, a.padding, 1, a.ceil_mode)
        )
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size
        pair = (size, size) if isinstance(size, int) or size is None else (size[0], size[1])
        pool = "max" if isinstance(module, nn.AdaptiveMaxPool2d) else "avg"
        return Op("adaptive", "pool", name, output_size=pair, pool=pool)
    if isinstance(module, POINTWISE_MODULES):
        return Op("pointwise", "other", name)
    if isinstance(module, (nn.Flatten, nn.Linear)):
        return Op("flatten", "other", name)
    return Op("unsupported", "other", f"module {name}")


def _function_op(node: fx.Node, tensor_inputs: int) -> Op:
    target = node.target
    if target is F.max_pool2d or target is F.avg_pool2d:
        is_max = target is F.max_pool2d
        names = ["input", "kernel_size", "stride", "padding"]
        names += ["dilation", "ceil_mode"] if is_max else ["ceil_mode"]
        a = _arguments(node, names, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
        w = _window_pair(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        label = "max_pool2d" if is_max else "avg_pool2d"
        return Op("window", "pool", label, windows=w, pool="max" if is_max else "avg")
    if target is F.adaptive_avg_pool2d or target is F.adaptive_max_pool2d:
        size = _arguments(node, ["input", "output_size"], {})["output_size"]
        pair = (size, size) if isinstance(size, int) or size is None else (size[0], size[1])
        pool = "avg" if target is F.adaptive_avg_pool2d else "max"
        return Op("adaptive", "pool", getattr(target, "__name__", str(target)), output_size=pair, pool=pool)
    if target is torch.cat or target is torch.concat:
        dim = _arguments(node, ["tensors", "dim"], {"dim": 0})["dim"]
        if dim in (1, -3):
            return Op("merge", "merge", "cat")
        return Op("unsupported", "other", f"torch.cat along dimension {dim}")
    if target in ARITHMETIC:
        return Op(
            "merge" if tensor_inputs > 1 else "pointwise",
            "merge" if tensor_inputs > 1 else "other",
            ARITHMETIC[target],
        )
    if target in POINTWISE_FUNCTIONS:
        return Op("pointwise", "other", getattr(target, "__name__", str(target)))
    if target is torch.flatten:
        return Op("flatten", "other", "flatten")
    return Op("unsupported", "other", f"function {getattr(target, '__name__', str(target))}")


def _method_op(node: fx.Node, tensor_inputs: int) -> Op:
    name = str(node.target)
    if name in ARITHMETIC_METHODS:
        merged = tensor_inputs > 1
        return Op(
            "merge" if merged else "pointwise", "merge" if merged else "other", ARITHMETIC_METHODS[name]
        )
    if name in POINTWISE_METHODS:
        return Op("pointwise", "other", name)
    if name == "mean":
        dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if (
            keep
            and dims is not None
            and {d % 4 for d in ([dims] if isinstance(dims, int) else dims)} == {2, 3}
        ):
            return Op("adaptive", "pool", "mean over height and width", output_size=(1, 1), pool="avg")
    if name in ("flatten", "view", "reshape", "mean", "size", "dim"):
        return Op("flatten", "other", name)
    return Op("unsupported", "other", f"method Tensor.{name}")


def data_inputs(node: fx.Node) -> list[fx.Node]:
    """The inputs of ``node`` that carry data (parameters and buffers fetched by get_attr do not)."""
    return [i for i in node.all_input_nodes if i.op != "get_attr"]


def classify(node: fx.Node, gm: fx.GraphModule) -> Op:
    """Map one graph node to an ``Op``."""
    tensor_inputs = len(data_inputs(node))
    if node.op == "placeholder":
        return Op("input", "input", "input image")
    if node.op == "get_attr":
        return Op("constant", "other", f"parameter {node.target}")
    if node.op == "call_module":
        return _module_op(gm.get_submodule(str(node.target)))
    if node.op == "call_function":
        return _function_op(node, tensor_inputs)
    if node.op == "call_method":
        return _method_op(node, tensor_inputs)
    return Op("unsupported", "other", f"{node.op} {node.target}")


def module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


# -- models ------------------------------------------------------------------------------------------
def available_models() -> list[str]:
    return list(TORCHVISION)


def _timm_name(name: str) -> str | None:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency of the services
        return None
    bare = name.removeprefix("timm/")
    return bare if timm.is_model(bare) else None


def build(name: str, device: torch.device | str = "meta") -> nn.Module:
    """The model ``name`` with random weights on ``device``, in eval mode. Raises ``UnknownName``."""
    with torch.device(device):
        if name in TORCHVISION:
            model = getattr(torchvision.models, name)(weights=None, **TORCHVISION[name][0])
        elif (timm_name := _timm_name(name)) is not None:
            import timm

            model = timm.create_model(timm_name, pretrained=False)
        else:
            raise UnknownName(
                f"unknown model {name!r}; available: {', '.join(TORCHVISION)}, or any timm model by name "
                f"(timm.list_models(), optionally prefixed 'timm/')",
                field="model.name",
            )
    return model.eval()


def default_input_size(name: str) -> int:
    if name in TORCHVISION:
        return TORCHVISION[name][1]
    timm_name = _timm_name(name)
    if timm_name is not None:
        import timm

        size = timm.get_pretrained_cfg_value(timm_name, "input_size")
        if size:
            return int(size[-1])
    return 224


def trace(model: nn.Module, name: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # tracing runs arbitrary model code; any failure means "cannot trace"
        raise Unsupported(
            f"model {name!r} cannot be traced into a graph by torch.fx: {type(error).__name__}: {error}",
            field="model.name",
        ) from None


class _TracedGraphs:
    """``traced_meta(name)``: the traced graph of ``name`` on the meta device, shared between requests: never
    run it with real data, and ``copy.deepcopy`` it before changing it. Traced in a child process (see
    ``rf_trace_worker``); ``traced_meta.cache_clear()`` forgets every model, as with ``functools`` caches."""

    def __call__(self, name: str) -> fx.GraphModule:
        return rf_trace_worker.traced(name)

    def cache_clear(self) -> None:
        rf_trace_worker.forget()


traced_meta = _TracedGraphs()


def input_channels(gm: fx.GraphModule) -> int:
    for module in gm.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


# -- analysis ----------------------------------------------------------------------------------------
@dataclass
class GraphField:
    """The outcome of analysing a traced model."""

    fields: list[LayerField]  # ancestors of the end point and the end point, topological order
    end_point: str
    resolve: Callable[[str, str], str]  # (name, request field) -> layer name in ``fields``


class _FieldInterpreter(fx.Interpreter):
    """Runs the meta graph, computing each node's field and checking it against the traced shape.

    Problems (an unmappable operation, misaligned branches, a window larger than its input) are recorded
    per node and raised only when the node lies on the way to the end point.
    """

    def __init__(self, gm: fx.GraphModule, origin: Fraction) -> None:
        super().__init__(gm)
        self.origin = origin
        self.ops: dict[fx.Node, Op] = {}
        self.fields: dict[fx.Node, LayerField] = {}
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.problems: dict[fx.Node, FieldError] = {}
        self.pooled_nodes: set[fx.Node] = set()  # adaptive pooling (the head) and what only it feeds
        self.halted: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        assert isinstance(self.module, fx.GraphModule)
        op = classify(n, self.module)
        self.ops[n] = op
        if n.op in ("output", "get_attr"):
            return super().run_node(n)
        try:
            result = super().run_node(n)
        except Exception as error:  # the meta forward of arbitrary model code
            self._field(n, op)  # the arithmetic usually says why (a window larger than its input)
            if n not in self.problems:
                self.problems[n] = Unsupported(
                    f"node {n.name!r} ({op.label}) fails on this input: {error}", field="input_size"
                )
            self.halted = n
            raise _Halt() from None
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        self._field(n, op)
        return result

    def _field(self, n: fx.Node, op: Op) -> None:
        inputs = data_inputs(n)
        if inputs and all(i in self.pooled_nodes for i in inputs):
            self.pooled_nodes.add(n)
        if op.category == "input":
            shape = self.shapes.get(n)
            if shape is not None and len(shape) == 4:
                h, w = input_axis(shape[2], self.origin), input_axis(shape[3], self.origin)
                self.fields[n] = LayerField(n.name, "input", op.label, h, w)
            return
        blocked = next((i for i in inputs if i not in self.fields), None)
        if blocked is not None:
            self.problems[n] = self.problems.get(blocked) or Unsupported(
                f"its input {blocked.name!r} has no receptive field", field="model.name"
            )
            return
        if op.category == "adaptive":
            self.pooled_nodes.add(n)
        if op.category in ("unsupported", "flatten", "constant"):
            self.problems[n] = Unsupported(
                f"{op.label} (node {n.name!r}) cannot be mapped to a receptive field", field="model.name"
            )
            return
        try:
            field = self._compute(n, op, inputs)
        except FieldError as error:
            self.problems[n] = error
            return
        shape = self.shapes.get(n)
        if shape is not None and (len(shape) != 4 or shape[2:] != (field.height.size, field.width.size)):
            self.problems[n] = Unsupported(
                f"node {n.name!r} ({op.describe()}) produces shape {list(shape)} but the arithmetic gives "
                f"{field.height.size} x {field.width.size}: its geometry is not what its parameters say",
                field="model.name",
            )
            return
        self.fields[n] = field

    def _compute(self, n: fx.Node, op: Op, inputs: list[fx.Node]) -> LayerField:
        src = [self.fields[i] for i in inputs]
        names = tuple(f.name for f in src)
        path = module_path(n)
        where = f"node {n.name!r} ({op.label})"
        if op.category == "merge":
            self._check_broadcast(n, op, inputs)
            height = merge([(f.name, f.height) for f in src], where=where, axis_name="height")
            width = merge([(f.name, f.width) for f in src], where=where, axis_name="width")
            return LayerField(n.name, "merge", op.label, height, width, names, module=path)
        first = src[0]
        if op.category == "pointwise":
            return LayerField(n.name, "other", op.label, first.height, first.width, names, module=path)
        windows = self._adaptive(n, op, first) if op.category == "adaptive" else op.windows
        assert windows is not None
        label = describe(op.kind, *windows, label=op.label)
        where = f"node {n.name!r} ({label})"
        height = apply(first.height, windows[0], where=f"{where} along the height", field="input_size")
        width = apply(first.width, windows[1], where=f"{where} along the width", field="input_size")
        pads = (windows[0].pad_before, windows[0].pad_after, windows[1].pad_before, windows[1].pad_after)
        return LayerField(n.name, op.kind, label, height, width, names, pads, module=path, windows=windows)

    @staticmethod
    def _adaptive(n: fx.Node, op: Op, src: LayerField) -> tuple[Window, Window]:
        assert op.output_size is not None
        result = []
        for axis, wanted in zip((src.height, src.width), op.output_size, strict=True):
            out = axis.size if wanted is None else int(wanted)
            if out == axis.size:
                result.append(Window(1))
            elif axis.size % out == 0:
                k = axis.size // out
                result.append(Window(k, k))
            else:
                raise Unsupported(
                    f"{op.label} (node {n.name!r}) maps {axis.size} positions to {out}: its windows have "
                    f"unequal sizes, so no single receptive field describes its units",
                    field="input_size",
                )
        return result[0], result[1]

    def _check_broadcast(self, n: fx.Node, op: Op, inputs: list[fx.Node]) -> None:
        out = self.shapes.get(n)
        for i in inputs:
            shape = self.shapes.get(i)
            if out and shape and len(shape) == 4 and shape[2:] != out[2:] and shape[2:] == (1, 1):
                raise Unsupported(
                    f"node {n.name!r} ({op.label}) broadcasts the 1 x 1 map of {i.name!r} over the image "
                    f"(a global context such as squeeze-and-excitation): every unit after it sees the whole "
                    f"input, so no finite receptive field applies",
                    field="model.name",
                )


class _Halt(Exception):
    """The meta forward failed at ``_FieldInterpreter.halted``."""


def _default_end_point(gm: fx.GraphModule, run: _FieldInterpreter) -> fx.Node:
    """The last spatial feature map: the last 4-D node before the head, adaptive pooling excluded."""
    if run.halted is not None:  # the network does not run on this input at all
        raise run.problems[run.halted]
    candidates = []
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "output"):
            continue
        shape = run.shapes.get(node)
        if node is run.halted or (shape is not None and len(shape) != 4 and node.op != "placeholder"):
            break
        if node in run.pooled_nodes or (node not in run.fields and node not in run.problems):
            continue
        candidates.append(node)
    if not candidates:
        raise Unsupported("the model has no spatial feature map to analyse", field="model.name")
    end = candidates[-1]
    if end in run.problems:
        raise run.problems[end]
    return end


def _resolver(
    gm: fx.GraphModule, fields: dict[fx.Node, LayerField], model: str
) -> Callable[[str, str], fx.Node]:
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    by_target = {str(n.target): n for n in nodes if n.op == "call_module"}
    resnet = model.removeprefix("timm/").startswith("resnet")

    def resolve(name: str, request_field: str) -> fx.Node:
        if name in by_name:
            return by_name[name]
        if name in by_target:
            return by_target[name]
        wanted = RESNET_STAGES.get(name, name) if resnet else name
        if wanted in by_name:
            return by_name[wanted]
        inside = [
            n
            for n in nodes
            if n in fields and any(key == wanted for key in (n.meta.get("nn_module_stack") or {}))
        ]
        if inside:
            return inside[-1]
        top = [name for name, _ in gm.named_children()]
        hint = "; the stages conv1..conv5 are also accepted" if resnet else ""
        raise InvalidSpec(
            f"no layer {name!r} in {model}: use a node name from the response's layers, a module path, or a "
            f"top-level module ({', '.join(top)}){hint}",
            field=request_field,
        )

    return resolve


def analyse_model(
    name: str, input_size: tuple[int, int], origin: Fraction, end_point: str | None
) -> GraphField:
    """Fields of every node of model ``name`` up to ``end_point`` (default: last spatial feature map)."""
    return analyse_graph(traced_meta(name), name, input_size, origin, end_point)


def analyse_graph(
    gm: fx.GraphModule, name: str, input_size: tuple[int, int], origin: Fraction, end_point: str | None
) -> GraphField:
    """Fields of the nodes of a traced graph (on the meta device) up to ``end_point``."""
    run = _FieldInterpreter(gm, origin)
    # When the meta forward fails, nodes from run.halted on have no field; an end point before is fine.
    with contextlib.suppress(_Halt):
        run.run(torch.empty(1, input_channels(gm), *input_size, device="meta"))
    resolve_node = _resolver(gm, run.fields, name)
    end = resolve_node(end_point, "end_point") if end_point else _default_end_point(gm, run)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    chosen = sorted(_ancestors(end), key=order.__getitem__)
    for node in chosen:
        if node not in run.fields:
            problem = run.problems.get(node) or Unsupported(
                f"node {node.name!r} was not reached", field="model.name"
            )
            message = f"cannot compute the receptive field of {end.name!r} in {name}: {problem.message}"
            field = problem.field
            if end_point and field == "model.name":  # the end point asked for lies beyond what maps
                field = "end_point"
                message += "; choose an earlier end_point"
            raise type(problem)(message, field=field)
    names = {run.fields[n].name for n in chosen}

    def resolve(layer: str, request_field: str) -> str:
        node = resolve_node(layer, request_field)
        if node.name not in names:
            raise InvalidSpec(
                f"layer {layer!r} (node {node.name!r}) is not on the way to the end point {end.name!r}; "
                f"choose a later end_point",
                field=request_field,
            )
        return node.name

    return GraphField([run.fields[n] for n in chosen], end.name, resolve)


def _ancestors(end: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [end]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(data_inputs(node))
    return seen
