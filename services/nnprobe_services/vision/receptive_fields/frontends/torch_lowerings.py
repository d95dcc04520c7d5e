"""ATen operators lowered into the typed IR (``..ir``): one registered function per operator family.

``TORCH_LOWERINGS`` maps an operator's schema name (``conv2d`` for ``aten.conv2d.default`` and its other
overloads; ``getitem`` for ``operator.getitem``) to its lowering; ``SUPPORTED_TORCH_OPS`` lists them.
Point-wise operators and reductions are reached by their in-place spellings too (``relu_``, ``mean_``). An
operator that is not registered lowers to ``Unmappable("the operation <name>")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from nnprobe_services.vision.receptive_fields.arithmetic import Window
from nnprobe_services.vision.receptive_fields.frontends.registry import Registry
from nnprobe_services.vision.receptive_fields.ir import (
    AdaptivePool,
    Attention,
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
    Select,
    Slice,
    Softmax,
    Split,
    Stack,
    Unmappable,
    Upsample,
)

#: Operators whose pieces ``getitem`` takes as slices along their dimension.
SPLITS = ("split", "split_with_sizes", "chunk", "unbind", "tensor_split")


@dataclass(frozen=True)
class AtenNode:
    """What a lowering reads of one ATen node: the node, its operator's schema name, the output shape of
    every node so far (None: not a tensor), and the tuple-valued nodes so far (name -> (operator, node))."""

    node: fx.Node
    name: str
    shapes: dict[str, Any]
    tuples: dict[str, tuple[str, fx.Node]]

    @property
    def args(self) -> Any:
        return self.node.args

    @property
    def rank(self) -> int:
        """The rank of the first argument (4 when unknown)."""
        x = self.args[0] if self.args else None
        known = isinstance(x, fx.Node) and self.shapes.get(x.name) is not None
        return len(self.shapes[x.name]) if known else 4  # type: ignore[union-attr]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return arg(self.node, index, name, default)


TORCH_LOWERINGS: Registry[AtenNode] = Registry("torch")
lowers = TORCH_LOWERINGS.lowers


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of ``node``, or its keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def lower_node(node: fx.Node, name: str, shapes: dict[str, Any], tuples: dict[str, Any]) -> Operation:
    """The typed operation of one ATen node with at least one data input (``name``: its schema name)."""
    base = name.rstrip("_")  # the out-of-place spelling of an in-place operator (add_ -> add)
    lowering = TORCH_LOWERINGS.get(name, base)
    if lowering is None:
        return Unmappable(f"the operation {name}")
    return lowering(AtenNode(node, name, shapes, tuples))


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


def _dims(value: Any, rank: int) -> tuple[int, ...]:
    values = [value] if isinstance(value, int) else list(value or range(rank))
    return tuple(sorted(int(v) % rank for v in values))


# -- windows -------------------------------------------------------------------------------------------------
@lowers("conv2d", "convolution", "_convolution")
def convolution(n: AtenNode) -> Operation:
    args = n.args
    weight = n.shapes.get(args[1].name) if isinstance(args[1], fx.Node) else None
    if weight is None or len(weight) != 4:
        return Unmappable(f"{n.name} with a {len(weight or ())}-d weight (not a 2-d convolution)")
    if n.name == "conv2d":
        stride, padding = n.arg(3, "stride", 1), n.arg(4, "padding", 0)
        dilation, groups = n.arg(5, "dilation", 1), n.arg(6, "groups", 1)
    else:
        stride, padding, dilation = args[3], args[4], args[5]
        groups = n.arg(8, "groups", 1)
        if n.arg(6, "transposed", False):
            return _transposed(weight, stride, padding, dilation, n.arg(7, "output_padding", 0), int(groups))
    w = windows((weight[2], weight[3]), stride, padding, dilation)
    return Conv(w, weight[0], weight[1] * int(groups), int(groups))


@lowers("conv_transpose2d")
def conv_transpose(n: AtenNode) -> Operation:
    """``conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)``."""
    weight = n.shapes.get(n.args[1].name) if isinstance(n.args[1], fx.Node) else None
    if weight is None or len(weight) != 4:
        return Unmappable(f"{n.name} with a {len(weight or ())}-d weight (not a 2-d convolution)")
    stride, padding = n.arg(3, "stride", 1), n.arg(4, "padding", 0)
    extra, groups, dilation = n.arg(5, "output_padding", 0), n.arg(6, "groups", 1), n.arg(7, "dilation", 1)
    return _transposed(weight, stride, padding, dilation, extra, int(groups))


def _transposed(weight: Any, stride: Any, padding: Any, dilation: Any, extra: Any, groups: int) -> Operation:
    """A transposed convolution: its weight is (in, out / groups, kh, kw)."""
    w = windows((weight[2], weight[3]), stride, padding, dilation)
    return ConvTranspose(w, _pair(extra), int(weight[1]) * groups, int(weight[0]), groups)


@lowers("max_pool2d", "max_pool2d_with_indices")
def max_pool(n: AtenNode) -> Operation:
    stride, padding = n.arg(2, "stride", None), n.arg(3, "padding", 0)
    w = windows(n.args[1], stride, padding, n.arg(4, "dilation", 1), n.arg(5, "ceil_mode", False))
    return Pool(w, "max")


@lowers("avg_pool2d")
def avg_pool(n: AtenNode) -> Operation:
    stride, padding = n.arg(2, "stride", None), n.arg(3, "padding", 0)
    return Pool(windows(n.args[1], stride, padding, 1, n.arg(4, "ceil_mode")), "avg")


@lowers("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d")
def adaptive_pool(n: AtenNode) -> Operation:
    size = n.args[1]
    pair = (size, size) if isinstance(size, int) or size is None else (size[0], size[-1])
    return AdaptivePool(pair, "max" if "max" in n.name else "avg")


@lowers("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d")
def pad(n: AtenNode) -> Operation:
    mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate"}.get(n.name)
    if mode is None:
        mode = n.arg(2, "mode", "constant") if n.name == "pad" else "constant"
    return Pad(tuple(int(p) for p in n.args[1]), "zeros" if mode == "constant" else mode)


# -- resizing ------------------------------------------------------------------------------------------------
@lowers("upsample_nearest2d", "_upsample_nearest_exact2d")
def upsample(n: AtenNode) -> Operation:
    """``nearest`` reads input floor(o * scale), ``nearest-exact`` floor((o + 0.5) * scale), scale the
    inverse of the factor given, else n_in / n_out (PyTorch's kernels: ``resize_weights``)."""
    scales = _resize_scales(n, 2)
    if "exact" in n.name:
        return Upsample("tf_half_pixel_for_nn", "floor", scales, formulas="torch")
    return Upsample("asymmetric", "floor", scales, formulas="torch")


@lowers("upsample_bilinear2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")
def upsample_interpolating(n: AtenNode) -> Operation:
    """Bilinear and bicubic resizing (``align_corners``; ``_aa``: antialiased), as PyTorch's kernels read
    their input (``resize_weights``)."""
    align = bool(n.arg(2, "align_corners", False))
    return Upsample(
        "align_corners" if align else "half_pixel",
        scales=_resize_scales(n, 3),
        mode="cubic" if "bicubic" in n.name else "linear",
        formulas="torch",
        antialias=n.name.endswith("_aa"),
    )


def _resize_scales(n: AtenNode, index: int) -> tuple[float, float] | None:
    """The (height, width) factors a resize was given: ``scale_factors`` (the ``.vec`` overloads) or
    ``scales_h`` and ``scales_w``; None when it was given sizes only."""
    first = n.arg(index, "scale_factors", None)
    if isinstance(first, (list, tuple)):
        return (float(first[0]), float(first[-1])) if first else None
    first = n.arg(index, "scales_h", None)
    second = n.arg(index + 1, "scales_w", None)
    if first is None or second is None:
        return None
    return float(first), float(second)


@lowers("pixel_shuffle")
def pixel_shuffle(n: AtenNode) -> Operation:
    return PixelShuffle(int(n.args[1]))


@lowers("pixel_unshuffle")
def pixel_unshuffle(n: AtenNode) -> Operation:
    return PixelUnshuffle(int(n.args[1]))


# -- merges and pieces ---------------------------------------------------------------------------------------
@lowers("cat", "concat")
def concat(n: AtenNode) -> Operation:
    tensors = n.args[0]
    first = n.shapes.get(tensors[0].name) if tensors else None
    dim = int(n.arg(1, "dim", 0)) % len(first or (0,) * 4)
    starts, position = [], 0
    for tensor in tensors:  # where each data input lands when constants (a class token) join it
        if isinstance(tensor, fx.Node) and tensor.meta.get("rf_data"):
            starts.append(position)
        shape = n.shapes.get(tensor.name) if isinstance(tensor, fx.Node) else None
        position += int(shape[dim]) if shape is not None and len(shape) > dim else 0
    return Concat(dim, tuple(starts))


@lowers("stack")
def stack(n: AtenNode) -> Operation:
    tensors = n.args[0]
    first = n.shapes.get(tensors[0].name) if tensors else None
    return Stack(int(n.arg(1, "dim", 0)) % (len(first or (0,) * 4) + 1))


@lowers(*SPLITS)
def split(n: AtenNode) -> Operation:
    return Split()


@lowers("getitem")
def getitem(n: AtenNode) -> Operation:
    """A piece of a split (a slice along its dimension) or the first result of a tuple-valued op."""
    source, index = n.args[0], int(n.args[1])
    kind, producer = n.tuples.get(source.name, ("", source))
    if kind in SPLITS:
        in_shape = n.shapes[producer.args[0].name]
        dim = int(arg(producer, 2, "dim", 0)) % len(in_shape)
        if kind == "unbind":
            return Select(dim, index)
        values = producer.meta.get("val")
        if not isinstance(values, (list, tuple)):
            return Unmappable(f"{kind} whose pieces have no recorded shapes")
        sizes = [int(t.shape[dim]) for t in values]
        start = sum(sizes[:index])
        return Slice(dim, start, start + sizes[index], 1)
    if index == 0:
        return Pointwise()
    return Unmappable(f"result {index} of {kind or source}")


@lowers("slice", "narrow")
def slice_(n: AtenNode) -> Operation:
    args, rank = n.args, n.rank
    dim = int(n.arg(1, "dim", 0)) % rank
    size = n.shapes[args[0].name][dim]
    if n.name == "narrow":
        start, end, step = int(args[2]), int(args[2]) + int(args[3]), 1
    else:
        start, end, step = n.arg(2, "start", 0), n.arg(3, "end", None), n.arg(4, "step", 1)
        start, end, _ = slice(start, end, step).indices(size)
    return Slice(dim, int(start), int(end), int(step))


@lowers("select")
def select(n: AtenNode) -> Operation:
    dim = int(n.arg(1, "dim", 0)) % n.rank
    return Select(dim, int(n.arg(2, "index", 0)) % int(n.shapes[n.args[0].name][dim]))


# -- layout --------------------------------------------------------------------------------------------------
@lowers("permute", "transpose", "t", "swapaxes")
def permute(n: AtenNode) -> Operation:
    args, rank = n.args, n.rank
    if n.name == "permute":
        return Permute(tuple(int(d) % rank for d in args[1]))
    a, b = (0, 1) if n.name == "t" else (int(args[1]) % rank, int(args[2]) % rank)
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return Permute(tuple(order))


@lowers(
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "reshape_as", "view_as"
)
def reshape(n: AtenNode) -> Operation:
    return Reshape()


# -- over channels or the whole map --------------------------------------------------------------------------
@lowers("mean", "sum", "amax", "amin", "var", "std", "max", "min", "logsumexp", in_place=True)
def reduce(n: AtenNode) -> Operation:
    if n.name == "max" and len(n.args) <= 1:  # the maximum of the whole tensor
        return Unmappable(f"the operation {n.name}")
    dims = _dims(n.arg(1, "dim", None), n.rank)
    return Reduce(dims, bool(n.arg(2, "keepdim", False)), n.name.rstrip("_"))


@lowers("linalg_vector_norm")
def vector_norm(n: AtenNode) -> Operation:
    dims = _dims(n.arg(2, "dim", None), n.rank)
    return Reduce(dims, bool(n.arg(3, "keepdim", False)), n.name)


@lowers("linear", "matmul", "mm", "addmm", "bmm")
def linear(n: AtenNode) -> Operation:
    data = [a for a in n.node.all_input_nodes if a.name in n.shapes and a.meta.get("rf_data")]
    if n.name == "linear" and len(data) == 1:
        weight = n.shapes[n.args[1].name]
        return Linear(weight[1], weight[0])
    if n.name in ("matmul", "bmm") and len(data) == 2:
        return MatMul()
    return Unmappable(f"{n.name} of a computed tensor and a constant")


@lowers("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
def attention(n: AtenNode) -> Operation:
    return Attention()


@lowers("layer_norm", "native_layer_norm")
def layer_norm(n: AtenNode) -> Operation:
    rank = n.rank
    return Norm(tuple(range(rank - len(n.args[1]), rank)))


@lowers("group_norm", "native_group_norm", "instance_norm")
def group_norm(n: AtenNode) -> Operation:
    return Norm(tuple(range(1, n.rank)))


@lowers("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit")
def batch_norm(n: AtenNode) -> Operation:
    training = n.name == "_native_batch_norm_legit" or bool(n.arg(5, "training", False))
    if training and n.name != "_native_batch_norm_legit_no_training":
        return Norm((0, *range(2, n.rank)))
    return Split() if n.name.startswith("_native") else Pointwise()


@lowers("softmax", "_softmax", "log_softmax", "_log_softmax")
def softmax(n: AtenNode) -> Operation:
    return Softmax(int(n.args[1]) % n.rank)


# -- point-wise ----------------------------------------------------------------------------------------------
POINTWISE = (
    "relu", "relu_", "relu6", "silu", "silu_", "gelu", "gelu_", "sigmoid", "sigmoid_", "hardsigmoid",
    "hardsigmoid_", "hardswish", "hardswish_", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "clamp_max", "tanh", "tanh_", "elu", "elu_", "leaky_relu", "leaky_relu_", "mish",
    "mish_", "softplus", "selu", "celu", "prelu", "_prelu_kernel", "dropout", "dropout_",
    "feature_dropout", "alpha_dropout", "native_dropout", "clone", "contiguous", "_to_copy", "to", "alias",
    "detach", "lift_fresh_copy", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "reciprocal", "erf",
    "sign", "square", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "where", "maximum",
    "minimum", "expand", "expand_as", "type_as", "masked_fill", "fill_", "copy_", "rsub", "logical_not",
    "sin", "cos", "threshold", "addcmul", "addcdiv",
)  # fmt: skip


@lowers(*POINTWISE, in_place=True)
def pointwise(n: AtenNode) -> Operation:
    return Pointwise()


#: The ATen operators (schema names) the torch front-end lowers.
SUPPORTED_TORCH_OPS = TORCH_LOWERINGS.names
