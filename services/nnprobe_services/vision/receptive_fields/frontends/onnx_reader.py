"""ONNX models read into the receptive-field graph (``rf_ir``) from their graph alone, without running them.

The image input is fixed to (1, C, H, W) at the requested size and ONNX's shape inference gives every
tensor's shape; operators map onto the same vocabulary as the PyTorch front-end, so a network exported with
``torch.onnx.export`` gets the same fields as when it is captured from PyTorch. Node names are the ONNX nodes'
own (``/layer1/layer1.0/conv1/Conv``); the module path is read from them where the exporter wrote one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnprobe_services.vision.models.artifacts import non_utf8_string
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec, Unsupported, Window
from nnprobe_services.vision.receptive_fields.frontends.onnx_tensors import (
    attributes,
    check_embedded,
    constant_value,
    tensor_array,
)
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode

#: Largest ONNX model accepted (bytes); the request message limit applies first.
MAX_ONNX_BYTES = 256 * 1024 * 1024

ELEMENTWISE = {
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu",
    "PRelu",
    "Softplus", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Pow", "Cast",
    "Identity", "Dropout", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Where", "Max", "Min", "Sum",
    "Mean", "Expand", "Sign", "Floor", "Ceil", "Round", "Not", "Equal", "Less", "Greater", "ThresholdedRelu",
}  # fmt: skip
SHAPE_ONLY = {"Shape", "Size"}  # outputs that do not depend on the input's values
#: Largest constant computed while folding shape arithmetic (elements per output); a node whose output is
#: larger, or of a size shape inference cannot tell, is left unevaluated.
MAX_FOLDED_ELEMENTS = 1 << 20


def _module(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (the exporter's scopes, the op last)."""
    parts = [p for p in name.split("/") if p][:-1]
    path, last = "", ""
    for part in parts:  # a child of a container is written relative to it: layer2, layer2.0
        if last and part.startswith(last + "."):
            path += part[len(last) :]
        else:
            path = f"{path}.{part}" if path else part
        last = part
    return path


def _same(n: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    extent = dilation * (kernel - 1) + 1
    total = max((-(-n // stride) - 1) * stride + extent - n, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _windows(
    a: dict[str, Any], kernel: list[int], sizes: tuple[int, int], pool: bool
) -> tuple[Window, Window]:
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    ceil = bool(a.get("ceil_mode", 0)) and pool
    result = []
    for i in range(2):
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            before, after = _same(sizes[i], kernel[i], strides[i], dilations[i], auto == "SAME_LOWER")
        elif auto == "VALID":
            before, after = 0, 0
        else:
            before, after = pads[i], pads[i + 2]
        result.append(Window(kernel[i], strides[i], dilations[i], before, after, ceil))
    return result[0], result[1]


class _Reader:
    def __init__(self, data: bytes, size: tuple[int, int] | None, label: str) -> None:
        import onnx

        try:
            model = onnx.load_from_string(data)
        except Exception as error:  # any parse failure of client bytes
            raise InvalidSpec(
                f"is not an ONNX model: {type(error).__name__}: {error}", field="model.onnx"
            ) from None
        where = non_utf8_string(model)
        if where is not None:
            raise InvalidSpec(f"is not a valid ONNX model: {where} is not UTF-8 text", field="model.onnx")
        graph = model.graph
        check_embedded(graph)
        self.constants: dict[str, np.ndarray] = {
            t.name: tensor_array(t, "initializer") for t in graph.initializer
        }
        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise InvalidSpec(f"the ONNX model takes {len(inputs)} inputs, not one image", field="model.onnx")
        dims = inputs[0].type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
        if len(declared) != 4 or declared[1] < 1:
            raise InvalidSpec(
                f"the ONNX model's input has shape {declared}; an image input (N, C, H, W) with a fixed C is "
                f"needed",
                field="model.onnx",
            )
        #: The field an error of fit is about: the size asked for, or the model when it declared its own.
        self.size_field = "input_size" if size is not None else "model.onnx"
        if size is None:
            if declared[2] < 1 or declared[3] < 1:
                raise InvalidSpec("the ONNX model's input size is not fixed: give one", field="input_size")
            size = (declared[2], declared[3])
        self.size, self.channels, self.label = size, declared[1], label
        for dim, value in zip(dims, (1, declared[1], *size), strict=True):
            dim.Clear()
            dim.dim_value = value
        self.model, self.input = model, inputs[0].name
        self._infer()
        for _ in range(8):  # shape arithmetic folded into constants lets inference reach further
            known = len(self.constants)
            for node in self.graph.node:
                if node.op_type == "Constant":
                    self._constant(node)
                elif node.op_type in SHAPE_ONLY or not self._depends_on_input(node):
                    self._fold(node)
            if len(self.constants) == known:
                break
            produced = {o for n in model.graph.node for o in n.output}
            existing = {t.name for t in model.graph.initializer}
            for name, array in self.constants.items():
                if name in produced and name not in existing:
                    model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
            kept = [n for n in model.graph.node if not all(o in self.constants for o in n.output)]
            del model.graph.node[:]
            model.graph.node.extend(kept)
            self._infer()

    def _infer(self) -> None:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=True, data_prop=True)
        except Exception as error:  # the model does not fit the input size, or is malformed
            raise InvalidSpec(
                f"ONNX shape inference fails at {self.size[0]} x {self.size[1]}: {str(error).strip()[:300]}",
                field=self.size_field,
            ) from None
        self.graph = inferred.graph
        self.shapes: dict[str, tuple[int, ...]] = {}
        for info in [*self.graph.value_info, *self.graph.output, *self.graph.input]:
            shape = info.type.tensor_type.shape
            if all(d.HasField("dim_value") for d in shape.dim):
                self.shapes[info.name] = tuple(int(d.dim_value) for d in shape.dim)
        self._data = {self.input}
        for node in self.graph.node:
            if node.op_type not in SHAPE_ONLY and any(i in self._data for i in node.input):
                self._data.update(node.output)

    def _depends_on_input(self, node: Any) -> bool:
        return any(o in self._data for o in node.output)

    def constant(self, node: Any, name: str) -> np.ndarray:
        if name not in self.constants:
            raise Unsupported(
                f"{node.op_type} (node {node.name!r}) takes {name!r}, which is computed: only constant "
                f"arguments can be read without running the model",
                field="model.onnx",
            )
        return self.constants[name]

    def _constant(self, node: Any) -> None:
        value = constant_value(node)
        if value is not None and node.output:
            self.constants[node.output[0]] = value

    def _fold(self, node: Any) -> None:
        """Evaluate a node that does not depend on the image's values (shape arithmetic, such as the
        padding of TensorFlow's "same" convolutions), when its arguments are known."""
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Shape" and node.input[0] in self.shapes:
            a = attributes(node)
            shape = self.shapes[node.input[0]]
            self.constants[node.output[0]] = np.array(shape[a.get("start", 0) : a.get("end", len(shape))])
            return
        if node.op_type == "Size" and node.input[0] in self.shapes:
            self.constants[node.output[0]] = np.array(int(np.prod(self.shapes[node.input[0]])))
            return
        if not all(not i or i in self.constants for i in node.input):
            return
        sizes = [self.shapes.get(o) for o in node.output if o]
        if any(size is None or math.prod(size) > MAX_FOLDED_ELEMENTS for size in sizes):
            return  # too large to compute here, or of a size only running it would tell
        try:
            results = ReferenceEvaluator(node).run(None, {i: self.constants[i] for i in node.input if i})
        except Exception:  # an operator the reference evaluator lacks: the value stays unknown
            return
        for output, value in zip(node.output, results, strict=False):
            self.constants[output] = np.asarray(value)

    def read(self) -> Capture:

        nodes = [
            GraphNode(self.input, "input", (), (1, self.channels, *self.size), {"channels": self.channels})
        ]
        names = {self.input: self.input}  # tensor name -> node name
        taken = {self.input}
        for index, node in enumerate(self.graph.node):
            if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
                # Control flow (If, Loop, Scan) reads outer tensors inside its sub-graphs, invisibly to
                # ``node.input``: folding it as a constant would drop a data path without a word.
                raise Unsupported(
                    f"{node.op_type} (node {node.name or index!r}): control flow with sub-graphs cannot be "
                    "mapped to a receptive field",
                    field="model.onnx",
                )
            if node.op_type == "Constant":
                self._constant(node)
                continue
            data = [i for i in node.input if i in names]
            if not data or node.op_type in SHAPE_ONLY:
                self._fold(node)
                continue
            base = node.name or f"{node.op_type}_{index}"
            for position, output in enumerate(node.output):
                if position and node.op_type != "Split":
                    break
                name = base if position == 0 else f"{base}:{position}"
                while name in taken:
                    name += "_"
                taken.add(name)
                op, attrs = self._map(node, data[0], position)
                shape = self.shapes.get(output)
                if shape is None:
                    raise Unsupported(
                        f"{node.op_type} (node {name!r}): ONNX shape inference gives no static shape for its "
                        f"output {output!r}",
                        field="model.onnx",
                    )
                inputs = tuple(dict.fromkeys(names[i] for i in data))
                nodes.append(
                    GraphNode(name, op, inputs, shape, attrs, node.op_type, _module(node.name), (), output)
                )
                names[output] = name
        return Capture(self.label, tuple(nodes), self.size, "onnx")

    def _map(self, node: Any, x: str, position: int) -> tuple[str, dict[str, Any]]:
        a, op = attributes(node), node.op_type
        shape = self.shapes.get(x, ())
        rank = len(shape)
        sizes = (shape[2], shape[3]) if rank == 4 else (0, 0)
        if op == "Conv":
            weight = self.shapes.get(node.input[1]) or self.constant(node, node.input[1]).shape
            kernel = list(a.get("kernel_shape", weight[2:]))
            groups = int(a.get("group", 1))
            return "conv", {
                "windows": _windows(a, kernel, sizes, False),
                "out_channels": int(weight[0]),
                "in_channels": int(weight[1]) * groups,
                "groups": groups,
            }
        if op in ("MaxPool", "AveragePool", "LpPool"):
            pool = {"MaxPool": "max", "AveragePool": "avg", "LpPool": "lp"}[op]
            return "pool", {"windows": _windows(a, list(a["kernel_shape"]), sizes, True), "pool": pool}
        if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
            return "adaptive_pool", {"output_size": (1, 1), "pool": "max" if "Max" in op else "avg"}
        if op == "Pad":
            pads = [
                int(p) for p in (self.constant(node, node.input[1]) if len(node.input) > 1 else a["pads"])
            ]
            padded = list(range(rank))
            if len(node.input) > 3 and node.input[3]:
                padded = [int(v) % rank for v in self.constant(node, node.input[3])]
            half = len(pads) // 2
            before = dict(zip(padded, pads[:half], strict=True))
            after = dict(zip(padded, pads[half:], strict=True))
            flat = [p for d in reversed(range(rank)) for p in (before.get(d, 0), after.get(d, 0))]
            mode = a.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            mapped = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}.get(mode, mode)
            return "pad", {"pads": tuple(flat), "mode": mapped}
        if op in ELEMENTWISE:
            return "elementwise", {}
        if op == "Concat":
            return "cat", {"dim": int(a["axis"]) % rank}
        if op == "Split":
            axis = int(a.get("axis", 0)) % rank
            outs = [self.shapes.get(o, ()) for o in node.output]
            if any(len(o) != rank for o in outs):
                raise Unsupported(f"Split (node {node.name!r}): output shapes unknown", field="model.onnx")
            start = sum(o[axis] for o in outs[:position])
            return "slice", {"dim": axis, "start": start, "end": start + outs[position][axis], "step": 1}
        if op == "Slice":
            starts, ends = self.constant(node, node.input[1]), self.constant(node, node.input[2])
            axes_of: Any = (
                self.constant(node, node.input[3]) if len(node.input) > 3 and node.input[3] else range(rank)
            )
            steps = self.constant(node, node.input[4]) if len(node.input) > 4 and node.input[4] else None
            cuts = []
            for i, value in enumerate(axes_of):
                axis = int(value) % rank
                step = int(steps[i]) if steps is not None else 1
                first, stop, step = slice(int(starts[i]), int(ends[i]), step).indices(shape[axis])
                if (first, stop, step) != (0, shape[axis], 1):
                    cuts.append({"dim": axis, "start": first, "end": stop, "step": step})
            if len(cuts) > 1:
                return "unsupported", {"why": "a slice along several axes at once"}
            return ("slice", cuts[0]) if cuts else ("elementwise", {})
        if op == "Transpose":
            return "permute", {"dims": tuple(int(p) for p in a.get("perm", reversed(range(rank))))}
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return "reshape", {}
        if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp"):
            axes: Any = a.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.constant(node, node.input[1])
            dims = tuple(sorted(int(v) % rank for v in (axes if axes is not None else range(rank))))
            return "reduce", {"dims": dims, "keepdim": bool(a.get("keepdims", 1)), "kind": op}
        if op in ("Gemm", "MatMul"):
            if node.input[1] in self.constants:
                weight = self.constants[node.input[1]].shape
                transposed = op == "Gemm" and a.get("transB", 0)
                n_in, n_out = (weight[1], weight[0]) if transposed else (weight[0], weight[1])
                return "linear", {"in_features": int(n_in), "out_features": int(n_out)}
            return "unsupported", {"why": f"{op} of two computed tensors (attention)"}
        if op == "LayerNormalization":
            return "norm", {"dims": tuple(range(int(a.get("axis", -1)) % rank, rank))}
        if op in ("GroupNormalization", "InstanceNormalization", "LpNormalization"):
            return "norm", {"dims": tuple(range(1, rank))}
        if op in ("Softmax", "LogSoftmax"):
            return "softmax", {"dim": int(a.get("axis", -1)) % rank}
        if op in ("Resize", "Upsample"):
            mode = a.get("mode", b"nearest")
            if (mode.decode() if isinstance(mode, bytes) else str(mode)) != "nearest":
                return "unsupported", {"why": f"{mode!r} resizing (only nearest-neighbour maps)"}
            return "upsample", {}
        if op == "DepthToSpace":
            return "pixel_shuffle", {"factor": int(a["blocksize"])}
        if op == "SpaceToDepth":
            return "pixel_unshuffle", {"factor": int(a["blocksize"])}
        return "unsupported", {"why": f"the ONNX operator {op}"}


def read(data: bytes, input_size: tuple[int, int] | None, label: str = "onnx model") -> Capture:
    """The receptive-field graph of a serialised ONNX ``ModelProto``, at ``input_size`` (default: the size
    the model declares). Raises ``InvalidSpec`` (not ONNX, not an image model, does not fit the size) or
    ``Unsupported`` (an operator that cannot be mapped, an argument computed at run time)."""
    if len(data) > MAX_ONNX_BYTES:
        raise InvalidSpec(f"holds {len(data)} bytes; at most {MAX_ONNX_BYTES}", field="model.onnx")
    return _Reader(data, input_size, label).read()


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The (H, W) the ONNX model's image input declares, None when not fixed or not readable."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # reported with its reason when the model is read
        return None
    constants = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    dims = (
        [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
        if inputs
        else []
    )
    return (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None
