"""Antialiased ONNX ``Resize`` (opset 18, ``antialias=1``): the taps of every output unit equal the inputs
whose one-pixel perturbation changes that unit in ONNX Runtime, downsampling by integer and non-integer
ratios and upsampling, linear and cubic, every coordinate transformation mode."""

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import empirical, ir
from nnprobe_services.vision.receptive_fields.boxes import connected_pixels
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from nnprobe_services.vision.receptive_fields.graph import analyse_capture
from nnprobe_services.vision.receptive_fields.resize_weights import resize_taps
from onnx import TensorProto, helper, numpy_helper

COORDINATES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


def perturbed_support(n_in: int, n_out: int, scale: float | None, **attributes) -> list[tuple[int, ...]]:
    """Per output unit, the input units whose perturbation by 1 changes it in ONNX Runtime's antialiased
    ``Resize`` along the height. The base image is zero, so a weight as small as 1e-8 still shows (on a
    base of order 1 it would round away)."""
    if scale is not None:
        extra = [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, scale, 1.0])]
        inputs = ["x", "", "scales"]
    else:
        extra = [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, n_out, 1])]
        inputs = ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], antialias=1, **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, n_in, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=extra,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    base = np.zeros((1, 1, n_in, 1), np.float32)
    (reference,) = session.run(None, {"x": base})
    changed = []
    for i in range(n_in):
        bumped = base.copy()
        bumped[0, 0, i, 0] += 1.0
        (out,) = session.run(None, {"x": bumped})
        changed.append(out[0, 0, :, 0] != reference[0, 0, :, 0])
    matrix = np.stack(changed, axis=1)
    return [tuple(np.flatnonzero(row).tolist()) for row in matrix]


@settings(max_examples=200, deadline=None)
@given(
    n_in=st.integers(1, 14),
    mode=st.sampled_from(["linear", "cubic"]),
    coordinate=st.sampled_from(COORDINATES),
    scale=st.sampled_from([None, 0.25, 1 / 3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0]),
    size=st.integers(1, 14),
    a=st.sampled_from([-0.75, -0.5]),
    exclude=st.booleans(),
)
def test_antialiased_onnx_taps_are_onnx_runtimes(n_in, mode, coordinate, scale, size, a, exclude):
    n_out = int(n_in * scale) if scale is not None else size
    if n_out < 1:
        return
    attributes = {"mode": mode, "coordinate_transformation_mode": coordinate, "exclude_outside": int(exclude)}
    if mode == "cubic":
        attributes.update(cubic_coeff_a=a)
    truth = perturbed_support(n_in, n_out, scale, **attributes)
    op = ir.Upsample(
        coordinate, scales=None if scale is None else (scale, 1.0), mode=mode, antialias=True,
        cubic_coeff_a=a, exclude_outside=exclude,
    )  # fmt: skip
    assert list(resize_taps(n_in, n_out, scale, op)) == truth


def _network(n: int, k: int, mode: str, scale: float | None, size: int) -> bytes:
    """X (1, 1, n, n) -> Conv(k; ones) -> antialiased Resize (scales or sizes) -> Conv(3, pad 1; ones)."""
    inits = [
        numpy_helper.from_array(np.ones((1, 1, k, k), np.float32), "W1"),
        numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "W2"),
    ]
    if scale is None:
        inits.append(numpy_helper.from_array(np.array([1, 1, size, size], np.int64), "sizes"))
        inputs = ["C", "", "", "sizes"]
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"))
        inputs = ["C", "", "scales"]
    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["C"], name="conv1", kernel_shape=[k, k]),
        helper.make_node("Resize", inputs, ["R"], name="resize", mode=mode, antialias=1),
        helper.make_node("Conv", ["R", "W2"], ["Y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, n, n])
    graph = helper.make_graph(
        nodes, "g", [image], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def _runtime_box(data: bytes, n: int, x: int, y: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows and columns whose one-pixel perturbation (of a zero image) changes unit (x, y) of Y."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    batch = np.eye(n * n, dtype=np.float32).reshape(n * n, 1, n, n)
    reads = np.array([session.run(None, {"X": image[None]})[0][0, 0, y, x] != 0 for image in batch])
    reads = reads.reshape(n, n)
    rows, columns = np.flatnonzero(reads.any(axis=1)), np.flatnonzero(reads.any(axis=0))
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(6, 12),
    k=st.integers(1, 3),
    mode=st.sampled_from(["linear", "cubic"]),
    scale=st.sampled_from([None, 0.5, 0.6, 0.75]),
    size=st.integers(2, 5),
    data=st.data(),
)
def test_a_network_with_an_antialiased_resize_is_analysed_and_proved(n, k, mode, scale, size, data):
    model = _network(n, k, mode, scale, size)
    out = size if scale is None else int((n - k + 1) * scale)
    if out < 1:
        return
    x, y = data.draw(st.integers(0, out - 1)), data.draw(st.integers(0, out - 1))
    capture = rf_onnx.read(model, None, "antialiased")
    fields = analyse_capture(capture, Fraction(1, 2), "conv2").fields
    analysed = connected_pixels(fields, "conv2", x, y)
    device = torch.device("cpu")
    probe, channels = empirical.twin_probe(capture, ["conv2"], device)
    (box,) = empirical.gradient_boxes(probe, channels, (n, n), device, [("conv2", x, y)], lambda: False)
    assert analysed == ((box.first_row, box.last_row), (box.first_column, box.last_column))
    if mode == "linear":  # positive weights: nothing cancels, ONNX Runtime's own reads are the truth
        assert analysed == _runtime_box(model, n, x, y)
