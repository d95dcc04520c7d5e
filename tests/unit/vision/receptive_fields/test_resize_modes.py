"""Nearest resizing in every ONNX mode: the analysis' boxes and the proof's boxes against ONNX Runtime.

The truth is brute force: a conv -> Resize -> conv graph with weights of ones runs in ONNX Runtime on one
one-hot image per input pixel, and the pixels whose one-hot changes a unit are the pixels it reads."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import empirical, ir
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.boxes import connected_pixels, unit_field
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from nnprobe_services.vision.receptive_fields.graph import analyse_capture
from nnprobe_services.vision.receptive_fields.resize_index import ROUNDINGS, TRANSFORMS, nearest_sources
from nnprobe_services.vision.receptive_fields.twin_resize import resize_nearest
from onnx import TensorProto, helper, numpy_helper

COORDINATE_MODES = sorted(TRANSFORMS)
_QUIET = ort.SessionOptions()
_QUIET.log_severity_level = 3  # tf_half_pixel_for_nn is deprecated since opset 13: ONNX Runtime warns
NEAREST_MODES = sorted(ROUNDINGS)


def _resize_node(inputs: list[str], coordinate: str, nearest: str, name: str = "resize") -> object:
    return helper.make_node(
        "Resize", inputs, ["R"], name=name, mode="nearest",
        coordinate_transformation_mode=coordinate, nearest_mode=nearest,
    )  # fmt: skip


def _model(n: int, conv: tuple[int, int, int], u: int, coordinate: str, nearest: str, sizes: bool) -> bytes:
    """X (1, 1, n, n) -> Conv(kernel, stride, pad; ones) -> Resize(x u) -> Conv(3, pad 1; ones) -> Y."""
    k, s, p = conv
    m = (n + 2 * p - k) // s + 1
    ones = np.ones((1, 1, k, k), np.float32)
    ones3 = np.ones((1, 1, 3, 3), np.float32)
    inits = [numpy_helper.from_array(ones, "W1"), numpy_helper.from_array(ones3, "W2")]
    if sizes:
        inits.append(numpy_helper.from_array(np.array([1, 1, m * u, m * u], np.int64), "sizes"))
        resize_inputs = ["C", "", "", "sizes"]
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, u, u], np.float32), "scales"))
        resize_inputs = ["C", "", "scales"]
    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["C"], name="conv1", kernel_shape=[k, k], strides=[s, s],
                         pads=[p, p, p, p]),
        _resize_node(resize_inputs, coordinate, nearest),
        helper.make_node("Conv", ["R", "W2"], ["Y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, n, n])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y", "R")]
    graph = helper.make_graph(nodes, "g", [image], outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def _true_box(
    data: bytes, n: int, unit: tuple[int, int], output: str = "Y"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, columns) read by unit (x, y) of ``output`` (Y: conv2, R: the resize), by ONNX Runtime on one
    one-hot image per pixel."""
    session = ort.InferenceSession(data, _QUIET, providers=["CPUExecutionProvider"])
    batch = np.eye(n * n, dtype=np.float32).reshape(n * n, 1, n, n)
    x, y = unit
    outputs = [session.run([output], {"X": image[None]})[0][0, 0, y, x] for image in batch]
    reads = (np.array(outputs) != 0).reshape(n, n)
    rows, columns = np.flatnonzero(reads.any(axis=1)), np.flatnonzero(reads.any(axis=0))
    if rows.size == 0:
        return (0, -1), (0, -1)
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


def _analysed_and_proven(
    data: bytes, n: int, unit: tuple[int, int], layer: str = "conv2"
) -> tuple[object, object]:
    """The analysis' connected rows and columns of unit (x, y) of ``layer``, and the proof's box."""
    capture = rf_onnx.read(data, None, "resize")
    result = analyse_capture(capture, Fraction(1, 2), layer)
    x, y = unit
    analysed = connected_pixels(result.fields, layer, x, y)
    device = torch.device("cpu")
    probe, channels = empirical.twin_probe(capture, [layer], device)
    (box,) = empirical.gradient_boxes(probe, channels, (n, n), device, [(layer, x, y)], lambda: False)
    proven = ((box.first_row, box.last_row), (box.first_column, box.last_column))
    return analysed, proven


def test_ceil_rounding_reads_the_rows_onnx_runtime_reads():
    # Conv k3 s2 p1 on 20 px, then x2 with nearest_mode=ceil: resize unit 9 copies conv unit
    # ceil((9 + 1/2) / 2 - 1/2) = 5, which reads rows 9..11 (rounding down would say unit 4: rows 7..9)
    data = _model(20, (3, 2, 1), 2, "half_pixel", "ceil", sizes=False)
    truth = _true_box(data, 20, (9, 9), output="R")
    assert truth == ((9, 11), (9, 11))
    assert _analysed_and_proven(data, 20, (9, 9), layer="resize") == (truth, truth)
    # conv2's unit (9, 9) reads resize units 8..10, which copy conv units 4, 5, 5: rows 7..11
    truth = _true_box(data, 20, (9, 9))
    assert truth == ((7, 11), (7, 11))
    assert _analysed_and_proven(data, 20, (9, 9)) == (truth, truth)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 13),
    conv=st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(0, 1)),
    factor=st.sampled_from([1, 2, 4]),
    coordinate=st.sampled_from(COORDINATE_MODES),
    nearest=st.sampled_from(NEAREST_MODES),
    sizes=st.booleans(),
    data=st.data(),
)
def test_analysis_and_proof_match_onnx_runtime(n, conv, factor, coordinate, nearest, sizes, data):
    k, s, p = conv
    if s % factor or (n + 2 * p - k) // s + 1 < 1:
        return  # the jump after resizing must stay whole: a stride divisible by the factor
    model = _model(n, conv, factor, coordinate, nearest, sizes)
    out = ((n + 2 * p - k) // s + 1) * factor
    unit = (data.draw(st.integers(0, out - 1)), data.draw(st.integers(0, out - 1)))
    truth = _true_box(model, n, unit)
    analysed, proven = _analysed_and_proven(model, n, unit)
    assert analysed == truth, (coordinate, nearest, unit)
    assert proven == truth, (coordinate, nearest, unit)
    # the layer's linear field (one receptive size and jump for every unit) holds each unit's exact box
    capture = rf_onnx.read(model, None, "resize")
    fields = analyse_capture(capture, Fraction(1, 2), "conv2").fields
    box = unit_field(fields, "conv2", *unit, (n, n), Fraction(1, 2))
    if truth[0][0] <= truth[0][1]:
        assert box.vertical_clipped.first <= truth[0][0] and truth[0][1] <= box.vertical_clipped.last
        assert box.horizontal_clipped.first <= truth[1][0] and truth[1][1] <= box.horizontal_clipped.last


def _onnx_resize_of_index(
    n: int, n_out: int, scale: float | None, coordinate: str, nearest: str
) -> list[int]:
    """The input column each output column copies, by ONNX Runtime resizing an image of column indices."""
    if scale is None:
        init = numpy_helper.from_array(np.array([1, 1, 1, n_out], np.int64), "sizes")
        inputs = ["X", "", "", "sizes"]
    else:
        init = numpy_helper.from_array(np.array([1, 1, 1, scale], np.float32), "scales")
        inputs = ["X", "", "scales"]
    node = _resize_node(inputs, coordinate, nearest)
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 1, n])
    out = helper.make_tensor_value_info("R", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [x_info], [out], initializer=[init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()
    session = ort.InferenceSession(model, _QUIET, providers=["CPUExecutionProvider"])
    index = np.arange(n, dtype=np.float32).reshape(1, 1, 1, n)
    return [int(v) for v in session.run(None, {"X": index})[0].ravel()]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 12),
    factor=st.integers(1, 4),
    coordinate=st.sampled_from(COORDINATE_MODES),
    nearest=st.sampled_from(NEAREST_MODES),
    by_sizes=st.booleans(),
)
def test_both_mappings_copy_the_units_onnx_runtime_copies(n, factor, coordinate, nearest, by_sizes):
    n_out = n * factor
    truth = _onnx_resize_of_index(n, n_out, None if by_sizes else float(factor), coordinate, nearest)
    op = ir.Upsample(coordinate, nearest, None if by_sizes else (1.0, float(factor)))
    index = torch.arange(n, dtype=torch.float64).reshape(1, 1, 1, n)
    assert resize_nearest(index, (1, n_out), op).ravel().long().tolist() == truth
    if factor > 1:  # a resize by 1 along both axes is a copy in ONNX Runtime, whatever the modes say
        assert list(nearest_sources(n, n_out, Fraction(factor), coordinate, nearest)) == truth


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 12), factor=st.integers(1, 4), exact=st.booleans())
def test_torch_nearest_modes_copy_the_units_interpolate_copies(n, factor, exact):
    # the torch front-end lowers nearest to (asymmetric, floor) and nearest-exact to (tf_half_pixel_for_nn,
    # floor): the analysis' mapping of those modes against PyTorch's own operator
    index = torch.arange(n, dtype=torch.float64).reshape(1, 1, 1, n)
    mode = "nearest-exact" if exact else "nearest"
    truth = F.interpolate(index, size=(1, n * factor), mode=mode).ravel().long().tolist()
    coordinate = "tf_half_pixel_for_nn" if exact else "asymmetric"
    assert list(nearest_sources(n, n * factor, Fraction(factor), coordinate, "floor")) == truth


def test_tf_crop_and_resize_is_refused_by_name():
    data = _model(12, (3, 2, 1), 2, "tf_crop_and_resize", "floor", sizes=False)
    capture = rf_onnx.read(data, None, "resize")
    assert type(capture.node("resize").operation) is ir.Unmappable
    with pytest.raises(Unsupported, match="tf_crop_and_resize"):
        analyse_capture(capture, Fraction(1, 2), "conv2")


@pytest.mark.parametrize(("op", "opset"), [("Upsample", 9), ("Resize", 10)])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_legacy_resizes_copy_the_units_onnx_runtime_copies(op, opset, factor):
    # Upsample and the opset-10 Resize have no modes: the lowering's modes against ONNX Runtime
    pool = helper.make_node("MaxPool", ["X"], ["P"], kernel_shape=[4, 4], strides=[4, 4])
    node = helper.make_node(op, ["P", "scales"], ["R"], name="resize", mode="nearest")
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 20, 20])
    out = helper.make_tensor_value_info("R", TensorProto.FLOAT, None)
    graph = helper.make_graph([pool, node], "g", [image], [out], initializer=[scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    lowered = rf_onnx.read(model.SerializeToString(), None, "legacy").node("resize").operation
    assert isinstance(lowered, ir.Upsample)
    single = helper.make_node(op, ["X", "scales"], ["R"], mode="nearest")
    row = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 1, 5])
    along_row = numpy_helper.from_array(np.array([1, 1, 1, factor], np.float32), "scales")
    graph = helper.make_graph([single], "g", [row], [out], initializer=[along_row])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), _QUIET, providers=["CPUExecutionProvider"])
    index = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    truth = [int(v) for v in session.run(None, {"X": index})[0].ravel()]
    mapped = nearest_sources(5, 5 * factor, Fraction(factor), lowered.coordinate_mode, lowered.nearest_mode)
    assert list(mapped) == truth


class _TorchChain(torch.nn.Module):
    """conv(k, s, p) -> F.interpolate(x u, nearest or nearest-exact) -> conv(3, pad 1), weights of ones."""

    def __init__(self, conv: tuple[int, int, int], factor: int, mode: str) -> None:
        super().__init__()
        k, s, p = conv
        self.conv1 = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, bias=False)
        self.conv2 = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        for weight in (self.conv1.weight, self.conv2.weight):
            torch.nn.init.ones_(weight)
        self.factor, self.mode = factor, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.interpolate(self.conv1(x), scale_factor=self.factor, mode=self.mode))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 13),
    conv=st.tuples(st.integers(1, 3), st.sampled_from([2, 4]), st.integers(0, 1)),
    factor=st.sampled_from([2, 4]),
    mode=st.sampled_from(["nearest", "nearest-exact"]),
    data=st.data(),
)
def test_torch_nearest_resizes_match_autograd_through_the_real_module(n, conv, factor, mode, data):
    from nnprobe_services.vision.receptive_fields.frontends import torch_capture

    k, s, p = conv
    if s % factor:
        return
    module = _TorchChain(conv, factor, mode)
    out = ((n + 2 * p - k) // s + 1) * factor
    x, y = data.draw(st.integers(0, out - 1)), data.draw(st.integers(0, out - 1))
    image = torch.ones(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(module.double()(image)[0, 0, y, x], image)
    reads = grad[0, 0] != 0
    rows, columns = torch.nonzero(reads.any(1)).flatten(), torch.nonzero(reads.any(0)).flatten()
    truth = ((0, -1), (0, -1))  # the unit reads padding alone
    if rows.numel():
        truth = ((int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1])))
    capture, _ = torch_capture.capture(module.float(), "chain", (n, n), 1, None)
    result = analyse_capture(capture, Fraction(1, 2), None)
    assert connected_pixels(result.fields, result.end_point, x, y) == truth
    device = torch.device("cpu")
    probe, channels = empirical.twin_probe(capture, [result.end_point], device)
    units = [(result.end_point, x, y)]
    (box,) = empirical.gradient_boxes(probe, channels, (n, n), device, units, lambda: False)
    assert ((box.first_row, box.last_row), (box.first_column, box.last_column)) == truth
