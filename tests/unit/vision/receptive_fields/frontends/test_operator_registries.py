"""Every operator the receptive-field front-ends register is lowered from a tiny real graph: the typed
operation it becomes, and the field answered at its node against closed forms (and, where the operation
changes the field, against the input-gradient support of the real operation)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields import ir
from nnprobe_services.vision.receptive_fields.arithmetic import FieldError
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from nnprobe_services.vision.receptive_fields.frontends import torch_capture as rf_capture
from nnprobe_services.vision.receptive_fields.frontends.onnx_lowerings import SUPPORTED_ONNX_OPS
from nnprobe_services.vision.receptive_fields.frontends.torch_lowerings import SUPPORTED_TORCH_OPS
from onnx import TensorProto, helper, numpy_helper
from torch.fx.experimental.proxy_tensor import make_fx

HALF = Fraction(1, 2)
aten = torch.ops.aten
#: The field expected: (receptive size, jump) along both axes, or along the height then the width, or a
#: phrase of the error answered.
Expected = tuple[int, ...] | str
ONE = (1, 1)  # the input's own field: every unit sees its own pixel
NO_AXES = "no image axes"
LOST = "lost the image axes"


def _w(*shape: int) -> torch.Tensor:
    return torch.ones(*shape)


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return aten.avg_pool2d.default(x, [2, 2], [2, 2])


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return aten.permute.default(x, [0, 2, 3, 1])


def _heads(x: torch.Tensor) -> torch.Tensor:
    """``_tokens`` as one attention head, (1, 1, 64, 4)."""
    return aten.unsqueeze.default(_tokens(x), 1)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """The (8, 8) map as 64 tokens of 4 features, (1, 64, 4), as a patch embedding makes them."""
    return aten.transpose.int(aten.view.default(x, [1, 4, 64]), 1, 2)


MASK = torch.ones(1, 4, 8, 8, dtype=torch.bool)
CONV_ARGS = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)
#: operator -> (the computation on x of shape (1, 4, 8, 8), the operation class, the field, brute force?)
TORCH_CASES: dict[str, tuple[Callable[[torch.Tensor], Any], type[ir.Operation], Expected, bool]] = {
    "conv2d": (lambda x: aten.conv2d.default(x, _w(4, 4, 3, 3), None, [2, 2], [1, 1]), ir.Conv, (3, 2), True),
    "convolution": (
        lambda x: aten.convolution.default(x, _w(4, 4, 3, 3), None, *CONV_ARGS),
        ir.Conv,
        (3, 1),
        True,
    ),
    "_convolution": (
        lambda x: aten._convolution.default(x, _w(4, 4, 3, 3), None, *CONV_ARGS, False, False, True, True),
        ir.Conv,
        (3, 1),
        True,
    ),
    "max_pool2d": (lambda x: aten.max_pool2d.default(x, [2, 2], [2, 2]), ir.Pool, (2, 2), False),
    "max_pool2d_with_indices": (
        lambda x: aten.max_pool2d_with_indices.default(x, [3, 3], [1, 1], [1, 1]),
        ir.Pool,
        (3, 1),
        False,
    ),
    "avg_pool2d": (lambda x: aten.avg_pool2d.default(x, [2, 2], [2, 2]), ir.Pool, (2, 2), True),
    "adaptive_avg_pool2d": (
        lambda x: aten.adaptive_avg_pool2d.default(x, [4, 4]),
        ir.AdaptivePool,
        (2, 2),
        True,
    ),
    "_adaptive_avg_pool2d": (
        lambda x: aten._adaptive_avg_pool2d.default(x, [2, 2]),
        ir.AdaptivePool,
        (4, 4),
        True,
    ),
    "adaptive_max_pool2d": (
        lambda x: aten.adaptive_max_pool2d.default(x, [4, 4]),
        ir.AdaptivePool,
        (2, 2),
        False,
    ),
    "pad": (lambda x: aten.pad.default(x, [1, 1, 1, 1]), ir.Pad, ONE, True),
    "constant_pad_nd": (lambda x: aten.constant_pad_nd.default(x, [1, 1, 2, 2]), ir.Pad, ONE, True),
    "reflection_pad2d": (lambda x: aten.reflection_pad2d.default(x, [1, 1, 1, 1]), ir.Pad, ONE, True),
    "replication_pad2d": (lambda x: aten.replication_pad2d.default(x, [1, 1, 1, 1]), ir.Pad, ONE, True),
    "reflection_pad1d": (
        lambda x: aten.reflection_pad1d.default(aten.view.default(x, [1, 32, 8]), [1, 1]),
        ir.Pad,
        LOST,
        False,
    ),
    "upsample_nearest2d": (
        lambda x: aten.upsample_nearest2d.default(_pooled(x), [8, 8]),
        ir.Upsample,
        (3, 1),
        True,
    ),
    # Bilinear x2 over pooled pairs: unit o reads one or two pairs; the smallest linear form holding them.
    "upsample_bilinear2d": (
        lambda x: aten.upsample_bilinear2d.default(_pooled(x), [8, 8], False),
        ir.Upsample,
        (5, 1),
        True,
    ),
    "upsample_bicubic2d": (
        lambda x: aten.upsample_bicubic2d.default(_pooled(x), [8, 8], False),
        ir.Upsample,
        (9, 1),
        True,
    ),
    # Antialiased halving: a triangle (cubic) filter two (four) input pixels wide on each side.
    "_upsample_bilinear2d_aa": (
        lambda x: aten._upsample_bilinear2d_aa.default(x, [4, 4], False),
        ir.Upsample,
        (4, 2),
        True,
    ),
    "_upsample_bicubic2d_aa": (
        lambda x: aten._upsample_bicubic2d_aa.default(x, [4, 4], False),
        ir.Upsample,
        (8, 2),
        True,
    ),
    # k=3, s=2, p=1, output_padding=1: even outputs read one input, odd ones two (jump 1/2).
    "conv_transpose2d": (
        lambda x: aten.conv_transpose2d.input(x, _w(4, 4, 3, 3), None, [2, 2], [1, 1], [1, 1]),
        ir.ConvTranspose,
        (2, Fraction(1, 2)),
        True,
    ),
    "_upsample_nearest_exact2d": (
        lambda x: aten._upsample_nearest_exact2d.default(_pooled(x), [8, 8]),
        ir.Upsample,
        (3, 1),
        True,
    ),
    "pixel_shuffle": (lambda x: aten.pixel_shuffle.default(_pooled(x), 2), ir.PixelShuffle, (3, 1), True),
    "pixel_unshuffle": (lambda x: aten.pixel_unshuffle.default(x, 2), ir.PixelUnshuffle, (2, 2), True),
    "cat": (lambda x: aten.cat.default([x, x], 1), ir.Concat, ONE, False),
    "concat": (lambda x: aten.concat.default([x, x], 1), ir.Concat, ONE, False),
    "stack": (lambda x: aten.stack.default([x, x], 1), ir.Stack, ONE, False),
    "split": (lambda x: aten.split.Tensor(x, 2, 1), ir.Split, ONE, False),
    "split_with_sizes": (lambda x: aten.split_with_sizes.default(x, [1, 3], 1), ir.Split, ONE, False),
    "chunk": (lambda x: aten.chunk.default(x, 2, 1), ir.Split, ONE, False),
    "unbind": (lambda x: aten.unbind.int(x, 1), ir.Split, ONE, False),
    "tensor_split": (lambda x: aten.tensor_split.sections(x, 2, 1), ir.Split, ONE, False),
    "getitem": (lambda x: aten.split.Tensor(x, 4, 2)[1], ir.Slice, ONE, True),
    "slice": (lambda x: aten.slice.Tensor(x, 2, 2, 8, 2), ir.Slice, (1, 2, 1, 1), True),
    "narrow": (lambda x: aten.narrow.default(x, 3, 1, 4), ir.Slice, ONE, True),
    "permute": (_nhwc, ir.Permute, ONE, False),
    "transpose": (lambda x: aten.transpose.int(x, 1, 3), ir.Permute, ONE, False),
    "t": (lambda x: aten.t.default(aten.view.default(x, [32, 8])), ir.Permute, LOST, False),
    "swapaxes": (lambda x: aten.swapaxes.default(x, 1, 3), ir.Permute, ONE, False),
    "view": (lambda x: aten.view.default(x, [1, 2, 2, 8, 8]), ir.Reshape, ONE, False),
    "reshape": (lambda x: aten.reshape.default(x, [1, 2, 2, 8, 8]), ir.Reshape, ONE, False),
    "_unsafe_view": (lambda x: aten._unsafe_view.default(x, [1, 2, 2, 8, 8]), ir.Reshape, ONE, False),
    "flatten": (lambda x: aten.flatten.using_ints(x, 0, 1), ir.Reshape, ONE, False),
    "unflatten": (lambda x: aten.unflatten.int(x, 1, [2, 2]), ir.Reshape, ONE, False),
    "squeeze": (lambda x: aten.squeeze.dim(x, 0), ir.Reshape, ONE, False),
    "unsqueeze": (lambda x: aten.unsqueeze.default(x, 0), ir.Reshape, ONE, False),
    "reshape_as": (lambda x: aten.reshape_as.default(x, _w(1, 2, 2, 8, 8)), ir.Reshape, ONE, False),
    "view_as": (lambda x: aten.view_as.default(x, _w(1, 2, 2, 8, 8)), ir.Reshape, ONE, False),
    "mean": (lambda x: aten.mean.dim(x, [1], True), ir.Reduce, ONE, False),
    "sum": (lambda x: aten.sum.dim_IntList(x, [1], True), ir.Reduce, ONE, False),
    "amax": (lambda x: aten.amax.default(x, [2, 3], True), ir.Reduce, (8, 8), False),
    "amin": (lambda x: aten.amin.default(x, [1], True), ir.Reduce, ONE, False),
    "var": (lambda x: aten.var.correction(x, [1], correction=1, keepdim=True), ir.Reduce, ONE, False),
    "std": (lambda x: aten.std.correction(x, [1], correction=1, keepdim=True), ir.Reduce, ONE, False),
    "max": (lambda x: aten.max.dim(x, 1, True), ir.Reduce, ONE, False),
    "min": (lambda x: aten.min.dim(x, 1, True), ir.Reduce, ONE, False),
    "logsumexp": (lambda x: aten.logsumexp.default(x, [1], True), ir.Reduce, ONE, False),
    "linalg_vector_norm": (lambda x: aten.linalg_vector_norm.default(x, 2, [1], True), ir.Reduce, ONE, False),
    "linear": (lambda x: aten.linear.default(_nhwc(x), _w(5, 4)), ir.Linear, ONE, False),
    "matmul": (
        lambda x: aten.matmul.default(x, _w(8, 8)),
        ir.Unmappable,
        "a computed tensor and a constant",
        False,
    ),
    "mm": (
        lambda x: aten.mm.default(aten.view.default(x, [32, 8]), _w(8, 8)),
        ir.Unmappable,
        "a constant",
        False,
    ),
    "addmm": (
        lambda x: aten.addmm.default(_w(8), aten.view.default(x, [32, 8]), _w(8, 8)),
        ir.Unmappable,
        "a computed tensor and a constant",
        False,
    ),
    "bmm": (
        lambda x: aten.bmm.default(_tokens(x), aten.transpose.int(_tokens(x), 1, 2)),
        ir.MatMul,
        NO_AXES,
        False,
    ),
    "select": (lambda x: aten.select.int(x, 1, 2), ir.Select, ONE, False),
    "scaled_dot_product_attention": (
        lambda x: aten.scaled_dot_product_attention.default(_tokens(x), _tokens(x), _tokens(x)),
        ir.Attention,
        NO_AXES,
        False,
    ),
    "_scaled_dot_product_flash_attention_for_cpu": (
        lambda x: aten._scaled_dot_product_flash_attention_for_cpu.default(_heads(x), _heads(x), _heads(x)),
        ir.Attention,
        NO_AXES,
        False,
    ),
    "layer_norm": (lambda x: aten.layer_norm.default(_nhwc(x), [4]), ir.Norm, ONE, False),
    "native_layer_norm": (
        lambda x: aten.native_layer_norm.default(_nhwc(x), [4], None, None, 1e-5),
        ir.Norm,
        ONE,
        False,
    ),
    "group_norm": (lambda x: aten.group_norm.default(x, 2), ir.Norm, ONE, False),
    "native_group_norm": (
        lambda x: aten.native_group_norm.default(x, None, None, 1, 4, 64, 2, 1e-5),
        ir.Norm,
        ONE,
        False,
    ),
    "instance_norm": (
        lambda x: aten.instance_norm.default(x, None, None, None, None, True, 0.1, 1e-5, False),
        ir.Norm,
        ONE,
        False,
    ),
    "batch_norm": (
        lambda x: aten.batch_norm.default(x, None, None, _w(4), _w(4), False, 0.1, 1e-5, False),
        ir.Pointwise,
        ONE,
        False,
    ),
    "_native_batch_norm_legit_no_training": (
        lambda x: aten._native_batch_norm_legit_no_training.default(x, None, None, _w(4), _w(4), 0.1, 1e-5),
        ir.Split,
        ONE,
        False,
    ),
    "_native_batch_norm_legit": (
        lambda x: aten._native_batch_norm_legit.default(x, None, None, _w(4), _w(4), True, 0.1, 1e-5),
        ir.Norm,
        ONE,
        False,
    ),
    "softmax": (lambda x: aten.softmax.int(x, 1), ir.Softmax, ONE, False),
    "_softmax": (lambda x: aten._softmax.default(x, 1, False), ir.Softmax, ONE, False),
    "log_softmax": (lambda x: aten.log_softmax.int(x, 1), ir.Softmax, ONE, False),
    "_log_softmax": (lambda x: aten._log_softmax.default(x, 1, False), ir.Softmax, ONE, False),
}


def _binary(name: str) -> Callable[[torch.Tensor], Any]:
    return lambda x: getattr(aten, name).Tensor(x, x)


#: Point-wise operators: their call on x (unary ones are called as ``aten.<name>.default(x)``).
POINTWISE_CALLS: dict[str, Callable[[torch.Tensor], Any]] = {
    "to": lambda x: aten.to.dtype(x, torch.float64),
    "clamp": lambda x: aten.clamp.default(x, 0.1),
    "clamp_": lambda x: aten.clamp_.default(x, 0.1),
    "clamp_min": lambda x: aten.clamp_min.default(x, 0.1),
    "clamp_min_": lambda x: aten.clamp_min_.default(x, 0.1),
    "clamp_max": lambda x: aten.clamp_max.default(x, 0.9),
    "dropout": lambda x: aten.dropout.default(x, 0.5, False),
    "dropout_": lambda x: aten.dropout_.default(x, 0.5, False),
    "feature_dropout": lambda x: aten.feature_dropout.default(x, 0.5, False),
    "alpha_dropout": lambda x: aten.alpha_dropout.default(x, 0.5, False),
    "native_dropout": lambda x: aten.native_dropout.default(x, 0.5, False),
    "prelu": lambda x: aten.prelu.default(x, _w(1)),
    "_prelu_kernel": lambda x: aten._prelu_kernel.default(x, _w(1)),
    "pow": lambda x: aten.pow.Tensor_Scalar(x, 2),
    "where": lambda x: aten.where.self(MASK, x, x),
    "maximum": lambda x: aten.maximum.default(x, x),
    "minimum": lambda x: aten.minimum.default(x, x),
    "expand": lambda x: aten.expand.default(x, [2, 4, 8, 8]),
    "expand_as": lambda x: aten.expand_as.default(x, _w(2, 4, 8, 8)),
    "type_as": lambda x: aten.type_as.default(x, _w(1)),
    "masked_fill": lambda x: aten.masked_fill.Scalar(x, MASK, 0.0),
    "fill_": lambda x: aten.fill_.Scalar(x, 1.0),
    "copy_": lambda x: aten.copy_.default(torch.zeros(1, 4, 8, 8), x),
    "rsub": lambda x: aten.rsub.Scalar(x, 1.0),
    "threshold": lambda x: aten.threshold.default(x, 0.1, 0.0),
    **{name: _binary(name) for name in ("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_")},
    "addcmul": lambda x: aten.addcmul.default(x, x, x),
    "addcdiv": lambda x: aten.addcdiv.default(x, x, x),
}


def _torch_case(name: str) -> tuple[Callable[[torch.Tensor], Any], type[ir.Operation], Expected, bool]:
    if name in TORCH_CASES:
        return TORCH_CASES[name]
    call = POINTWISE_CALLS.get(name) or (lambda x: getattr(aten, name).default(x))
    return call, ir.Pointwise, ONE, False


def _op_name(node: Any) -> str:
    target = node.target
    return target._schema.name.split("::")[-1] if hasattr(target, "_schema") else target.__name__


def _answer(capture: ir.Capture, node: ir.GraphNode, expected: Expected) -> rf_graph.GraphField | None:
    """The field answered at ``node`` checked against ``expected``; the analysis, when it has one."""
    if isinstance(expected, str):
        with pytest.raises(FieldError, match=expected):
            rf_graph.analyse_capture(capture, HALF, node.name)
        return None
    graph = rf_graph.analyse_capture(capture, HALF, node.name)
    field = next(f for f in graph.fields if f.name == node.name)
    both = expected if len(expected) == 4 else expected * 2
    assert (field.height.receptive, field.height.jump, field.width.receptive, field.width.jump) == both, field
    return graph


def _support(function: Callable[[torch.Tensor], Any], x: torch.Tensor, unit: tuple[int, int]):
    """Rows and columns (first, last) of the input pixels whose gradient reaches output unit (x, y)."""
    image = x.clone().requires_grad_(True)
    out = function(image)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out[0, :, unit[1], unit[0]].sum().backward()
    assert image.grad is not None
    rows = np.flatnonzero(image.grad[0].abs().sum(dim=(0, 2)).numpy())
    columns = np.flatnonzero(image.grad[0].abs().sum(dim=(0, 1)).numpy())
    if rows.size == 0:  # a unit in the padding
        return (0, -1), (0, -1)
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


def test_the_registries_list_their_operators():
    assert "conv2d" in SUPPORTED_TORCH_OPS and "relu_" in SUPPORTED_TORCH_OPS
    assert "Conv" in SUPPORTED_ONNX_OPS and "Resize" in SUPPORTED_ONNX_OPS
    assert list(SUPPORTED_TORCH_OPS) == sorted(set(SUPPORTED_TORCH_OPS))


@pytest.mark.parametrize("name", SUPPORTED_TORCH_OPS)
def test_every_torch_operator_lowers_to_its_operation_and_field(name):
    function, kind, expected, brute = _torch_case(name)
    x = torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    gm = make_fx(function, pre_dispatch=True)(x)
    capture = rf_capture.lower(gm, "tiny", "torch.fx", None)
    sources = [n.name for n in gm.graph.nodes if n.op == "call_function" and _op_name(n) == name]
    assert sources, f"the example of {name} does not call it"
    node = next(n for n in capture.nodes if n.source == sources[-1])
    assert type(node.operation) is kind, node.operation
    graph = _answer(capture, node, expected)
    if brute and graph is not None:
        field = next(f for f in graph.fields if f.name == node.name)
        for unit in ((0, 0), (field.width.size - 1, field.height.size // 2)):
            found = unit_field(graph.fields, node.name, *unit, (8, 8), HALF)
            assert (found.rows, found.columns) == _support(function, x, unit), (name, unit)


def test_an_operator_no_registry_holds_is_named():
    gm = make_fx(lambda x: aten.gt.Scalar(x, 0.5), pre_dispatch=True)(torch.rand(1, 4, 8, 8))
    capture = rf_capture.lower(gm, "tiny", "torch.fx", None)
    assert capture.nodes[-1].operation == ir.Unmappable("the operation gt")
    with pytest.raises(FieldError, match=r"gt \(node 'gt'\) cannot be mapped .*: the operation gt"):
        rf_graph.analyse_capture(capture, HALF, "gt")


# -- ONNX ---------------------------------------------------------------------------------------------------
def _init(name: str, values: Any, dtype: Any = np.float32) -> Any:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


POOL = helper.make_node("MaxPool", ["X"], ["P"], kernel_shape=[2, 2], strides=[2, 2])
FLAT = helper.make_node("Flatten", ["X"], ["F"], axis=1)
NHWC = helper.make_node("Transpose", ["X"], ["T"], perm=[0, 2, 3, 1])
#: operator -> (nodes before it, its inputs, its attributes, initializers, the operation class, the field)
OnnxCase = tuple[list[Any], list[str], dict[str, Any], list[Any], type[ir.Operation], Expected]
ONNX_CASES: dict[str, OnnxCase] = {
    "Conv": (
        [],
        ["X", "W"],
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        [_init("W", np.ones((4, 4, 3, 3)))],
        ir.Conv,
        (3, 2),
    ),
    "MaxPool": ([], ["X"], {"kernel_shape": [2, 2], "strides": [2, 2]}, [], ir.Pool, (2, 2)),
    "AveragePool": ([], ["X"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, [], ir.Pool, (3, 1)),
    "LpPool": ([], ["X"], {"kernel_shape": [2, 2], "strides": [2, 2]}, [], ir.Pool, (2, 2)),
    "GlobalAveragePool": ([], ["X"], {}, [], ir.AdaptivePool, (8, 8)),
    "GlobalMaxPool": ([], ["X"], {}, [], ir.AdaptivePool, (8, 8)),
    "GlobalLpPool": ([], ["X"], {}, [], ir.AdaptivePool, (8, 8)),
    "Pad": (
        [],
        ["X", "pads"],
        {"mode": "reflect"},
        [_init("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)],
        ir.Pad,
        ONE,
    ),
    "ConvTranspose": (
        [],
        ["X", "W"],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        [_init("W", np.ones((4, 4, 3, 3)))],
        ir.ConvTranspose,
        (2, Fraction(1, 2)),
    ),
    "Resize": (
        [POOL],
        ["P", "", "scales"],
        {"mode": "nearest"},
        [_init("scales", [1, 1, 2, 2])],
        ir.Upsample,
        (3, 1),
    ),
    "DepthToSpace": ([POOL], ["P"], {"blocksize": 2}, [], ir.PixelShuffle, (3, 1)),
    "SpaceToDepth": ([], ["X"], {"blocksize": 2}, [], ir.PixelUnshuffle, (2, 2)),
    "Concat": ([], ["X", "X"], {"axis": 1}, [], ir.Concat, ONE),
    "Split": ([], ["X"], {"axis": 1, "num_outputs": 2}, [], ir.Slice, ONE),
    "Slice": (
        [],
        ["X", "starts", "ends", "axes", "steps"],
        {},
        [_init(n, [v], np.int64) for n, v in (("starts", 2), ("ends", 8), ("axes", 2), ("steps", 2))],
        ir.Slice,
        (1, 2, 1, 1),
    ),
    "Transpose": ([], ["X"], {"perm": [0, 2, 3, 1]}, [], ir.Permute, ONE),
    "Reshape": ([], ["X", "shape"], {}, [_init("shape", [1, 2, 2, 8, 8], np.int64)], ir.Reshape, ONE),
    "Flatten": ([], ["X"], {"axis": 1}, [], ir.Reshape, NO_AXES),
    "Squeeze": ([], ["X", "axes"], {}, [_init("axes", [0], np.int64)], ir.Reshape, ONE),
    "Unsqueeze": ([], ["X", "axes"], {}, [_init("axes", [0], np.int64)], ir.Reshape, ONE),
    "Gemm": ([FLAT], ["F", "B"], {}, [_init("B", np.ones((256, 3)))], ir.Linear, LOST),
    "MatMul": ([NHWC], ["T", "B"], {}, [_init("B", np.ones((4, 5)))], ir.Linear, ONE),
    "LayerNormalization": ([NHWC], ["T", "S"], {"axis": -1}, [_init("S", np.ones(4))], ir.Norm, ONE),
    "GroupNormalization": (
        [],
        ["X", "S", "B"],
        {"num_groups": 2},
        [_init("S", np.ones(2)), _init("B", np.zeros(2))],
        ir.Norm,
        ONE,
    ),
    "InstanceNormalization": (
        [],
        ["X", "S", "B"],
        {},
        [_init("S", np.ones(4)), _init("B", np.zeros(4))],
        ir.Norm,
        ONE,
    ),
    "LpNormalization": ([], ["X"], {"axis": 1}, [], ir.Norm, ONE),
    "Softmax": ([], ["X"], {"axis": 1}, [], ir.Softmax, ONE),
    "LogSoftmax": ([], ["X"], {"axis": 1}, [], ir.Softmax, ONE),
    "Clip": ([], ["X"], {}, [], ir.Pointwise, ONE),
    "Cast": ([], ["X"], {"to": TensorProto.DOUBLE}, [], ir.Pointwise, ONE),
    "PRelu": ([], ["X", "slope"], {}, [_init("slope", [0.1])], ir.Pointwise, ONE),
    "Where": ([], ["C", "X", "X"], {}, [_init("C", np.ones((1, 4, 8, 8)), np.bool_)], ir.Pointwise, ONE),
    "Expand": ([], ["X", "shape"], {}, [_init("shape", [2, 4, 8, 8], np.int64)], ir.Pointwise, ONE),
    "Not": ([helper.make_node("Cast", ["X"], ["B"], to=TensorProto.BOOL)], ["B"], {}, [], ir.Pointwise, ONE),
    "BatchNormalization": (
        [],
        ["X", "S", "B", "M", "V"],
        {},
        [_init(n, np.ones(4)) for n in ("S", "B", "M", "V")],
        ir.Pointwise,
        ONE,
    ),
    **{
        op: ([], ["X", "X"], {}, [], ir.Pointwise, ONE)
        for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Equal", "Less", "Greater")
    },
    **{
        op: ([], ["X", "axes"], {"keepdims": 1}, [_init("axes", [1], np.int64)], ir.Reduce, ONE)
        for op in ("ReduceMean", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceLogSumExp")
    },
    "ReduceMax": ([], ["X", "axes"], {"keepdims": 1}, [_init("axes", [2, 3], np.int64)], ir.Reduce, (8, 8)),
}


def _onnx_case(op: str) -> OnnxCase:
    return ONNX_CASES.get(op, ([], ["X"], {}, [], ir.Pointwise, ONE))


#: Output shapes the model declares, for operators whose outputs ONNX's shape inference leaves unknown.
DECLARED = {"GroupNormalization": [1, 4, 8, 8]}


def _onnx_model(op: str, opset: int = 20) -> bytes:
    before, inputs, attrs, inits, _, _ = _onnx_case(op)
    outputs = ["Y", "Y2"] if op == "Split" else ["Y"]
    node = helper.make_node(op, inputs, outputs, name="probe", **attrs)
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 8, 8])
    declared = DECLARED.get(op)  # shape inference leaves some outputs unknown: the model declares them
    kind = TensorProto.FLOAT if declared else TensorProto.UNDEFINED
    result = [helper.make_tensor_value_info(o, kind, declared) for o in outputs]
    graph = helper.make_graph([*before, node], "g", [image], result, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


@pytest.mark.parametrize("op", SUPPORTED_ONNX_OPS)
def test_every_onnx_operator_lowers_to_its_operation_and_field(op):
    if op == "Upsample":  # removed from the standard after opset 9
        data = _upsample_model()
        kind, expected = ir.Upsample, (3, 1)
    else:
        data = _onnx_model(op)
        _, _, _, _, kind, expected = _onnx_case(op)
    capture = rf_onnx.read(data, None, "tiny")
    node = capture.node("probe")
    assert type(node.operation) is kind, node.operation
    _answer(capture, node, expected)


def _upsample_model() -> bytes:
    pool = helper.make_node("MaxPool", ["X"], ["P"], kernel_shape=[2, 2], strides=[2, 2])
    node = helper.make_node("Upsample", ["P", "scales"], ["Y"], name="probe", mode="nearest")
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 8, 8])
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([pool, node], "g", [image], [out], initializer=[_init("scales", [1, 1, 2, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]).SerializeToString()


def test_an_onnx_operator_no_registry_holds_is_named():
    node = helper.make_node("Hardmax", ["X"], ["Y"], name="probe")
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 8, 8])
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [image], [out])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()
    capture = rf_onnx.read(data, None, "tiny")
    assert capture.node("probe").operation == ir.Unmappable("the ONNX operator Hardmax")
    with pytest.raises(
        FieldError, match=r"Hardmax \(node 'probe'\) cannot be mapped .*: the ONNX operator Hardmax"
    ):
        rf_graph.analyse_capture(capture, HALF, "probe")
