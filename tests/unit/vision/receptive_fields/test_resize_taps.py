"""The taps of every resize mode against the operators themselves: for each output unit, the input units
it reads (``resize_weights``, ``resize_index``) equal the non-zero entries of its row of the Jacobian,
obtained by back-propagation through the real PyTorch operator (float64) or by running ONNX Runtime's
``Resize`` on one-hot inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import ir
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.resize_weights import resize_taps
from onnx import TensorProto, helper


def torch_support(n_in: int, mode: str, align: bool | None, antialias: bool, **how) -> list[tuple[int, ...]]:
    """Rows of the Jacobian of ``F.interpolate`` along the height (a width of 2 kept by a factor 1; of width
    1, PyTorch's kernels may take the map for a channels-last one): the inputs each output reads."""
    x = torch.rand(1, 1, n_in, 2, dtype=torch.float64, requires_grad=True)
    size = how.get("size")
    kwargs = {"size": (size, 2)} if size else {"scale_factor": (how["scale"], 1.0)}
    if mode != "nearest" and mode != "nearest-exact":
        kwargs.update(align_corners=align, antialias=antialias)
    y = F.interpolate(x, mode=mode, **kwargs)
    rows = []
    for o in range(y.shape[2]):
        (grad,) = torch.autograd.grad(y[0, 0, o, 0], x, retain_graph=True)
        rows.append(tuple(torch.nonzero(grad[0, 0, :, :].abs().sum(1)).flatten().tolist()))
    return rows


def _op(mode: str, align: bool | None, antialias: bool, scale: float | None) -> ir.Upsample:
    coordinate = "align_corners" if align else "half_pixel"
    if mode in ("nearest", "nearest-exact"):
        coordinate = "tf_half_pixel_for_nn" if mode == "nearest-exact" else "asymmetric"
        return ir.Upsample(coordinate, "floor", None if scale is None else (scale, 1.0), formulas="torch")
    kind = {"bilinear": "linear", "bicubic": "cubic"}[mode]
    scales = None if scale is None else (scale, 1.0)
    return ir.Upsample(coordinate, scales=scales, mode=kind, formulas="torch", antialias=antialias)


@settings(max_examples=300, deadline=None)
@given(
    n_in=st.integers(1, 13),
    mode=st.sampled_from(["nearest", "nearest-exact", "bilinear", "bicubic"]),
    align=st.booleans(),
    antialias=st.booleans(),
    by_scale=st.booleans(),
    scale=st.sampled_from([0.3, 0.5, 0.75, 1.0, 1.3, 1.5, 2.0, 2.5, 3.0, 4.0]),
    size=st.integers(1, 20),
)
def test_torch_resize_taps_are_the_jacobian_support(n_in, mode, align, antialias, by_scale, scale, size):
    if mode.startswith("nearest"):
        align, antialias = None, False
    if by_scale and int(n_in * scale) < 1:
        return
    how = {"scale": scale} if by_scale else {"size": size}
    truth = torch_support(n_in, mode, align, antialias, **how)
    op = _op(mode, align, antialias, scale if by_scale else None)
    taps = resize_taps(n_in, len(truth), scale if by_scale else None, op)
    if mode == "bicubic" and antialias and len(truth) < n_in:
        # the known limit: a tap on a zero of the stretched filter, which the kernel's rounding may read
        assert all(len(set(a) ^ set(b)) <= 2 for a, b in zip(taps, truth, strict=True))
    else:
        assert list(taps) == truth


def onnx_support(n_in: int, n_out: int, scale: float | None, **attributes) -> list[tuple[int, ...]]:
    """The inputs each output of an ONNX ``Resize`` reads: ONNX Runtime on one one-hot input per unit."""
    if scale is not None:
        extra = [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, scale, 1.0])]
        inputs = ["x", "", "scales"]
    else:
        extra = [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, n_out, 1])]
        inputs = ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, n_in, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=extra,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    columns = []
    for i in range(n_in):
        one_hot = np.zeros((1, 1, n_in, 1), np.float32)
        one_hot[0, 0, i, 0] = 1.0
        columns.append(session.run(None, {"x": one_hot})[0][0, 0, :, 0])
    matrix = np.stack(columns, axis=1)
    return [tuple(np.flatnonzero(row).tolist()) for row in matrix]


COORDINATES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


@settings(max_examples=250, deadline=None)
@given(
    n_in=st.integers(1, 12),
    mode=st.sampled_from(["linear", "cubic"]),
    coordinate=st.sampled_from(COORDINATES),
    scale=st.sampled_from([None, 0.5, 0.75, 1.5, 2.0, 3.0]),
    size=st.integers(1, 20),
    a=st.sampled_from([-0.75, -0.5]),
    exclude=st.booleans(),
)
def test_onnx_resize_taps_are_onnx_runtimes(n_in, mode, coordinate, scale, size, a, exclude):
    n_out = int(n_in * scale) if scale is not None else size
    if n_out < 1:
        return
    attributes = {"mode": mode, "coordinate_transformation_mode": coordinate}
    if mode == "cubic":
        attributes.update(cubic_coeff_a=a, exclude_outside=int(exclude))
    truth = onnx_support(n_in, n_out, scale, **attributes)
    op = ir.Upsample(
        coordinate, scales=None if scale is None else (scale, 1.0), mode=mode, cubic_coeff_a=a,
        exclude_outside=exclude and mode == "cubic",
    )  # fmt: skip
    assert list(resize_taps(n_in, n_out, scale, op)) == truth


def test_zero_weights_are_not_read():
    # Bilinear x2 with align_corners: even outputs sit on an input and read it alone.
    op = ir.Upsample("align_corners", mode="linear", formulas="torch")
    assert resize_taps(3, 5, None, op) == ((0,), (0, 1), (1,), (1, 2), (2,))
    # Bicubic at integer positions: the taps at distance 1 weigh exactly 0.
    cubic = ir.Upsample("align_corners", mode="cubic", formulas="torch")
    assert resize_taps(4, 7, None, cubic)[2] == (1,)


def test_unknown_coordinate_modes_are_refused_with_plain_text():
    with pytest.raises(Unsupported) as error:
        resize_taps(8, 4, None, ir.Upsample("tf_crop_and_resize", mode="linear"))
    assert "b'" not in error.value.message
