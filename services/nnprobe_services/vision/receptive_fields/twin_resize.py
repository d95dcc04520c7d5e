"""Resizing and transposed convolutions in the transparent twin, through the graph's own operators, apart
from the analysis (``resize_index``, ``resize_weights``, ``varying``).

A resize is separable: along each axis it is a matrix (output units x input units). The twin obtains that
matrix by running the real operator on one-hot inputs (PyTorch's ATen kernel for a torch graph, ONNX
Runtime's ``Resize`` for an ONNX graph) and applies its absolute value, so that no negative cubic weight
cancels a path: the support of the input gradient is then exactly the taps the operator reads. ONNX's nearest
modes that PyTorch lacks are a gather whose indices are the ONNX ``Resize`` formulas evaluated in float64
tensors (tests hold them to ONNX Runtime). A transposed convolution is ``F.conv_transpose2d`` with positive
weights, cropped or zero-extended as its padding and output padding say."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnprobe_services.vision.receptive_fields import ir

_TORCH_MODES = {("asymmetric", "floor"): "nearest", ("tf_half_pixel_for_nn", "floor"): "nearest-exact"}


def resize(x: torch.Tensor, size: tuple[int, int], op: ir.Upsample) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to ``size`` as ``op`` says, with non-negative weights."""
    if op.mode == "nearest" and op.formulas == "onnx":
        return resize_nearest(x, size, op)
    rows = axis_matrix(x.shape[2], size[0], 0, op).to(x)
    columns = axis_matrix(x.shape[3], size[1], 1, op).to(x)
    return torch.einsum("oh,nchw,pw->ncop", rows, x, columns)


def axis_matrix(n_in: int, n_out: int, axis: int, op: ir.Upsample) -> torch.Tensor:
    """|weights| (n_out, n_in, float64) of the resize along ``axis`` (0: height, 1: width), measured by
    running the operator on the one-hot inputs along that axis, one per channel (the other axis of size 2,
    kept by a factor 1: of size 1, the kernels could take the map for a channels-last one)."""
    scale = op.scales[axis] if op.scales is not None else None
    if op.formulas == "torch":
        one_hot = torch.eye(n_in, dtype=torch.float64).reshape(1, n_in, n_in, 1).expand(1, n_in, n_in, 2)
        one_hot = (one_hot if axis == 0 else one_hot.transpose(2, 3)).contiguous()
        out = _torch_resize(one_hot, n_out, axis, scale, op)
        out = out if axis == 0 else out.transpose(2, 3)
        return out[0, :, :, 0].T.abs()
    return torch.from_numpy(onnx_axis_matrix(n_in, n_out, scale, op)).abs()


def _torch_resize(x: torch.Tensor, n_out: int, axis: int, scale: float | None, op: ir.Upsample) -> Any:
    size = [n_out, 2] if axis == 0 else [2, n_out]
    scales = (None, None) if scale is None else ((scale, 1.0) if axis == 0 else (1.0, scale))
    aten = torch.ops.aten
    if op.mode == "nearest":
        nearest = aten._upsample_nearest_exact2d if op.coordinate_mode == "tf_half_pixel_for_nn" else None
        kernel = nearest or aten.upsample_nearest2d
        return kernel.default(x, size, *scales)
    kernels = {
        ("linear", False): aten.upsample_bilinear2d,
        ("cubic", False): aten.upsample_bicubic2d,
        ("linear", True): aten._upsample_bilinear2d_aa,
        ("cubic", True): aten._upsample_bicubic2d_aa,
    }
    kernel = kernels[(op.mode, op.antialias)]
    return kernel.default(x, size, op.coordinate_mode == "align_corners", *scales)


def onnx_axis_matrix(n_in: int, n_out: int, scale: float | None, op: ir.Upsample) -> np.ndarray:
    """The weights (n_out, n_in) of an ONNX ``Resize`` along one axis, run by ONNX Runtime on the one-hot
    inputs (a graph of that one node, with the node's attributes)."""
    import onnxruntime
    from onnx import TensorProto, helper

    attributes: dict[str, Any] = {
        "mode": op.mode,
        "coordinate_transformation_mode": op.coordinate_mode,
        "nearest_mode": op.nearest_mode,
        "cubic_coeff_a": op.cubic_coeff_a,
        "exclude_outside": int(op.exclude_outside),
        "antialias": int(op.antialias),
    }
    node = helper.make_node("Resize", ["x", "", "scales", "sizes"][: 3 if scale else 4], ["y"], **attributes)
    if scale:
        node.input[:] = ["x", "", "scales"]
        given = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, scale, 1.0])
    else:
        node.input[:] = ["x", "", "", "sizes"]
        given = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, n_in, n_out, 1])
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in, n_in, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[given],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    one_hot = np.eye(n_in, dtype=np.float32).reshape(1, n_in, n_in, 1)
    (out,) = session.run(None, {"x": one_hot})
    return np.asarray(out, dtype=np.float64)[0, :, :, 0].T


def conv_transpose(x: torch.Tensor, op: ir.ConvTranspose, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (N, C, H, W) through ``F.conv_transpose2d`` with weights 1 / fan_in, then cropped by the
    padding before and cut or zero-extended to ``size`` (the output padding)."""
    h, w = op.windows
    weight = torch.ones(
        op.in_channels, op.out_channels // op.groups, h.kernel, w.kernel, dtype=x.dtype, device=x.device
    )
    weight /= h.kernel * w.kernel * op.in_channels // op.groups
    full = F.conv_transpose2d(
        x, weight, stride=(h.stride, w.stride), dilation=(h.dilation, w.dilation), groups=op.groups
    )
    rows, columns = full.shape[2], full.shape[3]
    pads = (-w.pad_before, size[1] + w.pad_before - columns, -h.pad_before, size[0] + h.pad_before - rows)
    return F.pad(full, pads)


def resize_nearest(x: torch.Tensor, size: tuple[int, int], op: ir.Upsample) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to ``size`` as ``op`` says."""
    torch_mode = _TORCH_MODES.get((op.coordinate_mode, op.nearest_mode))
    if torch_mode is not None and op.scales is None:
        return F.interpolate(x, size=size, mode=torch_mode)
    scales = op.scales or (size[0] / x.shape[2], size[1] / x.shape[3])
    if tuple(x.shape[2:]) == size and scales == (1.0, 1.0):
        return x  # ONNX Runtime copies a resize by 1 unchanged
    rows = source_index(x.shape[2], size[0], scales[0], op, x.device)
    columns = source_index(x.shape[3], size[1], scales[1], op, x.device)
    return x.index_select(2, rows).index_select(3, columns)


def source_index(n_in: int, n_out: int, scale: float, op: ir.Upsample, device: torch.device) -> torch.Tensor:
    """Indices into the input axis of the output axis's units (ONNX ``Resize``, nearest)."""
    o = torch.arange(n_out, dtype=torch.float64, device=device)
    mode = op.coordinate_mode
    if mode in ("half_pixel", "pytorch_half_pixel"):
        x = (o + 0.5) / scale - 0.5
        if mode == "pytorch_half_pixel" and n_out == 1:
            x = torch.zeros_like(o)
    elif mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        x = n_in / 2 * (1 - adjustment) + (o + 0.5) / scale - 0.5
    elif mode == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(o)
    elif mode == "asymmetric":
        x = o / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        raise ValueError(f"no nearest resize with coordinate_transformation_mode {mode!r}")
    rounded = {
        "round_prefer_floor": lambda: torch.ceil(x - 0.5),
        "round_prefer_ceil": lambda: torch.floor(x + 0.5),
        "floor": lambda: torch.floor(x),
        "ceil": lambda: torch.ceil(x),
    }[op.nearest_mode]()
    return rounded.clamp(0, n_in - 1).to(torch.int64)
