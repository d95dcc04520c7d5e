"""Resizing inside networks: every PyTorch mode (nearest at any ratio, bilinear, bicubic, antialiased;
align_corners; scale_factor or size) and ONNX Resize's linear and cubic modes. The analysis' connected
pixels equal back-propagation through the real operator (weights of ones, float64) or ONNX Runtime's
answer to one perturbed pixel at a time; the proof through the graph's own operators agrees, and fails on a
wrong mapping. A globally pooled 1 x 1 map resized over the image is global context."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import empirical, field_rules
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader
from onnx import TensorProto, helper, numpy_helper
from torch import nn

HALF = Fraction(1, 2)
CPU = torch.device("cpu")
FAST = {"deadline": None, "phases": (Phase.explicit, Phase.reuse, Phase.generate)}


class Resized(nn.Module):
    """conv 3x3 (stride ``stride``) -> F.interpolate(**how) -> conv 3x3, weights of ones, no bias."""

    def __init__(self, stride: int, how: dict) -> None:
        super().__init__()
        self.a, self.b, self.how = nn.Conv2d(1, 1, 3, stride, 1, bias=False), nn.Conv2d(1, 1, 3, 1, 1), how
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(1.0)
            self.b.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.interpolate(self.a(x), **self.how))


def autograd_support(model: nn.Module, size: int, x: int, y: int):
    image = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.double()(image)[0, 0, y, x], image)
    hit = grad[0, 0] != 0
    rows, columns = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


@settings(max_examples=30, **FAST)
@given(
    mode=st.sampled_from(["nearest", "nearest-exact", "bilinear", "bicubic"]),
    align=st.booleans(), antialias=st.booleans(), stride=st.integers(1, 2), size=st.integers(5, 9),
    by_scale=st.booleans(), scale=st.sampled_from([0.5, 0.75, 1.5, 2.0, 3.0]), out=st.integers(2, 14),
    picks=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=3),
)  # fmt: skip
def test_torch_resizes_connect_what_autograd_reaches(
    mode, align, antialias, stride, size, by_scale, scale, out, picks
):
    how: dict = {"mode": mode, "scale_factor": scale} if by_scale else {"mode": mode, "size": out}
    if not mode.startswith("nearest"):
        # antialiased bicubic downsampling has a known limit (``resize_weights``): tested on its taps alone
        shrinks = (scale < 1) if by_scale else out < (size - 1) // stride + 1
        how.update(align_corners=align, antialias=antialias and not (mode == "bicubic" and shrinks))
    model = Resized(stride, how)
    graph = rf_graph.analyse_module(model, "r", (size, size), HALF, None, channels=1)
    end = graph.fields[-1]
    units = [(int(a * (end.width.size - 1)), int(b * (end.height.size - 1))) for a, b in picks]
    probe, channels = empirical.twin_probe(graph.capture, [end.name], CPU)
    proofs = empirical.gradient_boxes(
        probe, channels, (size, size), CPU, [(end.name, x, y) for x, y in units], lambda: False
    )
    for (x, y), proof in zip(units, proofs, strict=True):
        truth = autograd_support(model, size, x, y)
        unit = unit_field(graph.fields, end.name, x, y, (size, size), HALF)
        assert (unit.rows, unit.columns) == truth, (how, x, y)
        assert (proof.first_row, proof.last_row, proof.first_column, proof.last_column) == (
            *truth[0],
            *truth[1],
        )


def test_a_wrong_resize_mapping_fails_the_proof(monkeypatch):
    model = Resized(2, {"mode": "bilinear", "scale_factor": 2.0, "align_corners": False})
    right = field_rules.resize_taps

    def shifted(n_in, n_out, scale, op):  # every output reads the next input instead
        return tuple(tuple(min(i + 1, n_in - 1) for i in taps) for taps in right(n_in, n_out, scale, op))

    monkeypatch.setattr(field_rules, "resize_taps", shifted)
    graph = rf_graph.analyse_module(model, "r", (12, 12), HALF, None, channels=1)
    end = graph.fields[-1].name
    probe, channels = empirical.twin_probe(graph.capture, [end], CPU)
    (proof,) = empirical.gradient_boxes(probe, channels, (12, 12), CPU, [(end, 2, 2)], lambda: False)
    unit = unit_field(graph.fields, end, 2, 2, (12, 12), HALF)
    assert (proof.first_row, proof.last_row) == autograd_support(model, 12, 2, 2)[0]
    assert unit.rows != (proof.first_row, proof.last_row)


class PooledBranch(nn.Module):
    """DeepLabV3's ASPP: a local branch beside a globally pooled one resized over the image, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.local = nn.Conv2d(1, 2, 3, padding=1)
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 2, 1))
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pooled(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([self.local(x), pooled], 1))


def test_a_pooled_map_resized_over_the_image_is_global_context():
    graph = rf_graph.analyse_module(PooledBranch(), "aspp", (16, 16), HALF, None, channels=1)
    end = graph.fields[-1]
    # the resize, or the concatenation that brings it in, is where the whole input reaches the head
    assert graph.global_context.startswith(("upsample_bilinear2d", "cat"))
    assert (end.height.receptive, end.height.jump) == (3, 1)  # the local branch's field
    with pytest.raises(Unsupported, match="resizes a 1 x 1 map over the image") as error:
        rf_graph.analyse_module(PooledBranch(), "aspp", (16, 16), HALF, None, channels=1, strict=True)
    assert "b'" not in error.value.message


# -- ONNX ------------------------------------------------------------------------------------------------
def _onnx_model(resize: dict, sizes: list[int] | None, scales: list[float] | None, n: int) -> bytes:
    """X (1, 1, n, n) -> Conv 3 s 2 p 1 (ones) -> Resize(**resize) -> Conv 3 p 1 (ones) -> Y."""
    ones = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "W")
    inits = [ones]
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs = ["C", "", "", "sizes"]
    else:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs = ["C", "", "scales"]
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["C"], name="conv1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Resize", inputs, ["R"], name="resize", **resize),
        helper.make_node("Conv", ["R", "W"], ["Y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model.SerializeToString()


def perturbation_support(data: bytes, n: int, x: int, y: int):
    """The input pixels whose change changes output unit (x, y) in ONNX Runtime (one pixel at a time, from a
    random positive image: every weight is positive, so a change never cancels)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    base = np.random.default_rng(0).uniform(1, 2, (1, 1, n, n)).astype(np.float32)
    reference = session.run(None, {"X": base})[0][0, 0, y, x]
    hit = np.zeros((n, n), bool)
    for r in range(n):
        for c in range(n):
            probe = base.copy()
            probe[0, 0, r, c] += 1.0
            hit[r, c] = session.run(None, {"X": probe})[0][0, 0, y, x] != reference
    rows, columns = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


@settings(max_examples=12, **FAST)
@given(
    mode=st.sampled_from(["linear", "cubic"]),
    coordinate=st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                                "half_pixel_symmetric"]),
    n=st.integers(6, 9), out=st.integers(2, 9), by_scale=st.booleans(), exclude=st.booleans(),
    a=st.sampled_from([-0.75, -0.5]), pick=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)  # fmt: skip
def test_onnx_resizes_connect_what_onnx_runtime_reaches(mode, coordinate, n, out, by_scale, exclude, a, pick):
    m = (n - 1) // 2 + 1
    resize = {"mode": mode, "coordinate_transformation_mode": coordinate}
    if mode == "cubic":
        resize.update(cubic_coeff_a=a, exclude_outside=int(exclude))
    if by_scale:
        data = _onnx_model(resize, None, [1.0, 1.0, 2.0, 1.5], n)
        out_h, out_w = 2 * m, int(1.5 * m)
    else:
        data = _onnx_model(resize, [1, 1, out, out + 1], None, n)
        out_h, out_w = out, out + 1
    capture = onnx_reader.read(data, None, "resize")
    graph = rf_graph.analyse_capture(capture, HALF, "conv2")
    x, y = int(pick[0] * (out_w - 1)), int(pick[1] * (out_h - 1))
    truth = perturbation_support(data, n, x, y)
    unit = unit_field(graph.fields, "conv2", x, y, (n, n), HALF)
    assert (unit.rows, unit.columns) == truth
    probe, channels = empirical.twin_probe(capture, ["conv2"], CPU)
    (proof,) = empirical.gradient_boxes(probe, channels, (n, n), CPU, [("conv2", x, y)], lambda: False)
    assert (proof.first_row, proof.last_row, proof.first_column, proof.last_column) == (*truth[0], *truth[1])


def _conv_transpose_model(attributes: dict, n: int) -> bytes:
    weight = numpy_helper.from_array(np.ones((1, 2, 3, 3), np.float32), "W")
    ones = numpy_helper.from_array(np.ones((1, 2, 3, 3), np.float32), "V")
    nodes = [
        helper.make_node("ConvTranspose", ["X", "W"], ["T"], name="up", **attributes),
        helper.make_node("Conv", ["T", "V"], ["Y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=[weight, ones],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    buffer = io.BytesIO(model.SerializeToString())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "attributes",
    [
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        {"strides": [2, 3], "pads": [0, 2, 1, 0], "dilations": [2, 1]},
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
        {"strides": [3, 2], "output_shape": [16, 11]},
        {"strides": [2, 2], "group": 1, "auto_pad": "VALID"},
    ],
)
def test_onnx_transposed_convolutions_connect_what_onnx_runtime_reaches(attributes):
    n = 6
    data = _conv_transpose_model({"kernel_shape": [3, 3], **attributes}, n)
    capture = onnx_reader.read(data, None, "up")
    graph = rf_graph.analyse_capture(capture, HALF, "conv")
    end = graph.fields[-1]
    probe, channels = empirical.twin_probe(capture, ["conv"], CPU)
    units = [
        (0, 0),
        (end.width.size // 2, end.height.size // 2 + 1),
        (end.width.size - 1, end.height.size - 1),
    ]
    proofs = empirical.gradient_boxes(
        probe, channels, (n, n), CPU, [("conv", *u) for u in units], lambda: False
    )
    for (x, y), proof in zip(units, proofs, strict=True):
        truth = perturbation_support(data, n, x, y)
        unit = unit_field(graph.fields, "conv", x, y, (n, n), HALF)
        assert (unit.rows, unit.columns) == truth, (attributes, x, y)
        assert (proof.first_row, proof.last_row, proof.first_column, proof.last_column) == (
            *truth[0],
            *truth[1],
        )
