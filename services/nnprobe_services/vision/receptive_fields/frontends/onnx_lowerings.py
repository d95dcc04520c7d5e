"""ONNX operators lowered into the typed IR (``..ir``): one registered function per operator family.

``ONNX_LOWERINGS`` maps an operator type (``Conv``, ``MaxPool``) to its lowering; ``SUPPORTED_ONNX_OPS``
lists them. An operator that is not registered lowers to ``Unmappable("the ONNX operator <type>")``. The
lowerings read the node's attributes and the shapes and constants ``onnx_reader`` found; an argument that
is computed at run time cannot be read (``Unsupported``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported, Window
from nnprobe_services.vision.receptive_fields.frontends.onnx_weightless import require_values
from nnprobe_services.vision.receptive_fields.frontends.registry import Registry
from nnprobe_services.vision.receptive_fields.ir import (
    AdaptivePool,
    Concat,
    Conv,
    ConvTranspose,
    Linear,
    MatMul,
    Norm,
    Operation,
    Pad,
    Permute,
    PixelShuffle,
    PixelUnshuffle,
    Pointwise,
    Pool,
    Reduce,
    Reshape,
    Slice,
    Softmax,
    Unmappable,
    Upsample,
)
from nnprobe_services.vision.receptive_fields.resize_index import check_modes


@dataclass(frozen=True)
class OnnxNode:
    """What a lowering reads of one ONNX node: the node, its attributes, its first data input ``x``, which
    of its outputs is lowered (``position``: the pieces of a ``Split``), every tensor's static shape and the
    constants known."""

    node: Any
    attrs: dict[str, Any]
    x: str
    position: int
    shapes: dict[str, tuple[int, ...]]
    constants: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes.get(self.x, ())

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def sizes(self) -> tuple[int, int]:
        """(height, width) of a 4-d input; (0, 0) otherwise."""
        shape = self.shape
        return (shape[2], shape[3]) if len(shape) == 4 else (0, 0)

    def input(self, index: int) -> str:
        """The name of input ``index``; "" when absent."""
        return self.node.input[index] if len(self.node.input) > index else ""

    def constant(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise Unsupported(
                f"{self.node.op_type} (node {self.node.name!r}) takes {name!r}, which is computed: only "
                f"constant arguments can be read without running the model",
                field="model.onnx",
            )
        return require_values(
            self.constants[name], f"{self.node.op_type} (node {self.node.name!r}) reads {name!r}"
        )


ONNX_LOWERINGS: Registry[OnnxNode] = Registry("onnx")
lowers_onnx = ONNX_LOWERINGS.lowers


def lower_node(site: OnnxNode) -> Operation:
    """The typed operation of one ONNX node with at least one data input."""
    lowering = ONNX_LOWERINGS.get(site.node.op_type)
    if lowering is None:
        return Unmappable(f"the ONNX operator {site.node.op_type}")
    return lowering(site)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    auto = _text(a.get("auto_pad", b"NOTSET"))
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


# -- windows -------------------------------------------------------------------------------------------------
@lowers_onnx("ConvTranspose")
def conv_transpose(n: OnnxNode) -> Operation:
    """A transposed convolution: its weight is (in, out / group, kh, kw); ``output_shape`` or ``auto_pad``
    SAME_* set the padding as ONNX defines it (the odd pixel before, except SAME_UPPER: after)."""
    a = n.attrs
    weight = n.shapes.get(n.node.input[1]) or n.constant(n.node.input[1]).shape
    kernel = [int(k) for k in a.get("kernel_shape", weight[2:])]
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    extra = [int(v) for v in a.get("output_padding", [0, 0])]
    pads, auto = list(a.get("pads", [0, 0, 0, 0])), _text(a.get("auto_pad", "NOTSET"))
    shape = [int(v) for v in a.get("output_shape", [])][-2:]
    result = []
    for i in range(2):
        window = Window(kernel[i], int(strides[i]), int(dilations[i]))
        if shape or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = shape[i] if shape else n.sizes[i] * window.stride
            total = window.stride * (n.sizes[i] - 1) + extra[i] + window.extent - target
            small, large = total // 2, total - total // 2
            before, after = (small, large) if auto == "SAME_UPPER" else (large, small)
        elif auto == "VALID":
            before, after = 0, 0
        else:
            before, after = int(pads[i]), int(pads[i + 2])
        result.append(Window(window.kernel, window.stride, window.dilation, before, after))
    groups = int(a.get("group", 1))
    return ConvTranspose(
        (result[0], result[1]), (extra[0], extra[1]), int(weight[1]) * groups, int(weight[0]), groups
    )


@lowers_onnx("Conv")
def conv(n: OnnxNode) -> Operation:
    weight = n.shapes.get(n.node.input[1]) or n.constant(n.node.input[1]).shape
    kernel = list(n.attrs.get("kernel_shape", weight[2:]))
    groups = int(n.attrs.get("group", 1))
    return Conv(_windows(n.attrs, kernel, n.sizes, False), int(weight[0]), int(weight[1]) * groups, groups)


@lowers_onnx("MaxPool", "AveragePool", "LpPool")
def pool(n: OnnxNode) -> Operation:
    kind = {"MaxPool": "max", "AveragePool": "avg", "LpPool": "lp"}[n.node.op_type]
    return Pool(_windows(n.attrs, list(n.attrs["kernel_shape"]), n.sizes, True), kind)


@lowers_onnx("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(n: OnnxNode) -> Operation:
    return AdaptivePool((1, 1), "max" if "Max" in n.node.op_type else "avg")


@lowers_onnx("Pad")
def pad(n: OnnxNode) -> Operation:
    rank = n.rank
    given = n.constant(n.node.input[1]) if len(n.node.input) > 1 else n.attrs["pads"]
    pads = [int(p) for p in given]
    padded = list(range(rank))
    if n.input(3):
        padded = [int(v) % rank for v in n.constant(n.node.input[3])]
    half = len(pads) // 2
    before = dict(zip(padded, pads[:half], strict=True))
    after = dict(zip(padded, pads[half:], strict=True))
    flat = [p for d in reversed(range(rank)) for p in (before.get(d, 0), after.get(d, 0))]
    mode = _text(n.attrs.get("mode", b"constant"))
    mapped = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}.get(mode, mode)
    return Pad(tuple(flat), mapped)


# -- resizing ------------------------------------------------------------------------------------------------
@lowers_onnx("Resize", "Upsample")
def resize(n: OnnxNode) -> Operation:
    """Resizing in every mode (nearest, linear, cubic; antialiased; ``cubic_coeff_a``,
    ``exclude_outside``) with its coordinate transformation and rounding (``Upsample`` and ``Resize`` of
    opset 10: ``asymmetric``, rounding down as ONNX Runtime does); the scales when the node gives them."""
    a = n.attrs
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(_text(a.get("mode", "nearest")), "")
    mode = mode or _text(a.get("mode", "nearest"))
    legacy = n.node.op_type == "Upsample" or len(n.node.input) == 2
    coordinate = "asymmetric" if legacy else _text(a.get("coordinate_transformation_mode", "half_pixel"))
    nearest = "floor" if legacy else _text(a.get("nearest_mode", "round_prefer_floor"))
    if mode not in ("nearest", "linear", "cubic"):
        return Unmappable(f"{mode} resizing (modes: nearest, linear, cubic)")
    problem = check_modes(coordinate, nearest if mode == "nearest" else "floor")
    if problem:
        return Unmappable(f"{mode} resizing with {problem}")
    if a.get("axes") is not None:
        return Unmappable("resizing with an axes attribute")
    policy = _text(a.get("keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        return Unmappable(f"resizing with keep_aspect_ratio_policy {policy} (only stretch)")
    if coordinate == "tf_half_pixel_for_nn" and mode != "nearest":
        return Unmappable(f"{mode} resizing with coordinate_transformation_mode {coordinate}")
    return Upsample(
        coordinate,
        nearest,
        _scales(n, legacy),
        mode=mode,
        antialias=bool(a.get("antialias", 0)),
        cubic_coeff_a=float(a.get("cubic_coeff_a", -0.75)),
        exclude_outside=bool(a.get("exclude_outside", 0)),
    )


def _scales(n: OnnxNode, legacy: bool) -> tuple[float, float] | None:
    """The (height, width) scales a nearest resize gives, None when it gives output sizes."""
    if "scales" in n.attrs:  # Upsample of opset 7
        values = [float(v) for v in n.attrs["scales"]]
    else:
        name = n.input(1 if legacy else 2)
        values = [float(v) for v in n.constant(name).ravel()] if name else []
    return (values[2], values[3]) if len(values) == 4 else None


@lowers_onnx("DepthToSpace")
def depth_to_space(n: OnnxNode) -> Operation:
    return PixelShuffle(int(n.attrs["blocksize"]))


@lowers_onnx("SpaceToDepth")
def space_to_depth(n: OnnxNode) -> Operation:
    return PixelUnshuffle(int(n.attrs["blocksize"]))


# -- merges and pieces ---------------------------------------------------------------------------------------
@lowers_onnx("Concat")
def concat(n: OnnxNode) -> Operation:
    axis = int(n.attrs["axis"]) % n.rank
    starts, position = [], 0
    for name in n.node.input:  # where each computed input lands when constants (a class token) join it
        if name not in n.constants:
            starts.append(position)
        shape = n.constants[name].shape if name in n.constants else n.shapes.get(name, ())
        position += int(shape[axis]) if len(shape) > axis else 0
    return Concat(axis, tuple(starts) if len(starts) < len(n.node.input) else ())


@lowers_onnx("Split")
def split(n: OnnxNode) -> Operation:
    """One piece of a split (``position``): a slice along its axis."""
    rank = n.rank
    axis = int(n.attrs.get("axis", 0)) % rank
    outs = [n.shapes.get(o, ()) for o in n.node.output]
    if any(len(o) != rank for o in outs):
        raise Unsupported(f"Split (node {n.node.name!r}): output shapes unknown", field="model.onnx")
    start = sum(o[axis] for o in outs[: n.position])
    return Slice(axis, start, start + outs[n.position][axis], 1)


@lowers_onnx("Slice")
def slice_(n: OnnxNode) -> Operation:
    shape, rank = n.shape, n.rank
    starts, ends = n.constant(n.node.input[1]), n.constant(n.node.input[2])
    axes: Any = n.constant(n.node.input[3]) if n.input(3) else range(rank)
    steps = n.constant(n.node.input[4]) if n.input(4) else None
    cuts = []
    for i, value in enumerate(axes):
        axis = int(value) % rank
        step = int(steps[i]) if steps is not None else 1
        first, stop, step = slice(int(starts[i]), int(ends[i]), step).indices(shape[axis])
        if (first, stop, step) != (0, shape[axis], 1):
            cuts.append(Slice(axis, first, stop, step))
    if len(cuts) > 1:
        return Unmappable("a slice along several axes at once")
    return cuts[0] if cuts else Pointwise()


# -- layout --------------------------------------------------------------------------------------------------
@lowers_onnx("Transpose")
def transpose(n: OnnxNode) -> Operation:
    return Permute(tuple(int(p) for p in n.attrs.get("perm", reversed(range(n.rank)))))


@lowers_onnx("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(n: OnnxNode) -> Operation:
    return Reshape()


# -- over channels or the whole map --------------------------------------------------------------------------
@lowers_onnx("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp")
def reduce(n: OnnxNode) -> Operation:
    axes: Any = n.attrs.get("axes")
    if axes is None and n.input(1):
        axes = n.constant(n.node.input[1])
    dims = tuple(sorted(int(v) % n.rank for v in (axes if axes is not None else range(n.rank))))
    return Reduce(dims, bool(n.attrs.get("keepdims", 1)), n.node.op_type)


@lowers_onnx("Gemm", "MatMul")
def matmul(n: OnnxNode) -> Operation:
    op = n.node.op_type
    if n.node.input[1] in n.constants:
        weight = n.constants[n.node.input[1]].shape
        transposed = op == "Gemm" and n.attrs.get("transB", 0)
        n_in, n_out = (weight[1], weight[0]) if transposed else (weight[0], weight[1])
        return Linear(int(n_in), int(n_out))
    return MatMul()  # of two computed tensors: attention


@lowers_onnx("LayerNormalization")
def layer_norm(n: OnnxNode) -> Operation:
    return Norm(tuple(range(int(n.attrs.get("axis", -1)) % n.rank, n.rank)))


@lowers_onnx("GroupNormalization", "InstanceNormalization")
def group_norm(n: OnnxNode) -> Operation:
    return Norm(tuple(range(1, n.rank)))


@lowers_onnx("LpNormalization")
def lp_norm(n: OnnxNode) -> Operation:
    """The norm along ``axis`` alone (the channels, or the tokens for channel attention)."""
    return Norm((int(n.attrs.get("axis", -1)) % n.rank,))


@lowers_onnx("Softmax", "LogSoftmax")
def softmax(n: OnnxNode) -> Operation:
    return Softmax(int(n.attrs.get("axis", -1)) % n.rank)


# -- point-wise ----------------------------------------------------------------------------------------------
POINTWISE = (
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu",
    "PRelu", "Softplus", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Pow",
    "Cast", "Identity", "Dropout", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Where", "Max", "Min",
    "Sum", "Mean", "Expand", "Sign", "Floor", "Ceil", "Round", "Not", "Equal", "Less", "Greater",
    "ThresholdedRelu",
)  # fmt: skip


@lowers_onnx(*POINTWISE)
def pointwise(n: OnnxNode) -> Operation:
    return Pointwise()


#: The ONNX operator types the ONNX front-end lowers.
SUPPORTED_ONNX_OPS = ONNX_LOWERINGS.names
