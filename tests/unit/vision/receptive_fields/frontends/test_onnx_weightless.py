"""Weightless ONNX graphs (``onnx_weightless``; the SDK's ``nnprobe.vision.onnx_graph`` makes them): the
graph read without the weights' values is the graph read with them, node for node and shape for shape; the
small tensors the graph reads as values (pads, shapes, scales) travel; a value that was withheld but is
needed is refused naming the operator, the node and what to send instead."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.vision import onnx_graph
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader, onnx_weightless
from nnprobe_services.vision.receptive_fields.frontends.onnx_lowerings import OnnxNode, lower_node
from onnx import TensorProto, helper, numpy_helper

SIDE = 32


def _conv(index: int, x: str, channels: int, out: int, kernel: int, stride: int, pad: int, dilation: int):
    weight = numpy_helper.from_array(
        np.random.default_rng(index).normal(size=(out, channels, kernel, kernel)).astype(np.float32),
        f"W{index}",
    )
    node = helper.make_node(
        "Conv",
        [x, weight.name],
        [f"t{index}"],
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad] * 4,
        dilations=[dilation, dilation],
        name=f"conv{index}",
    )
    return node, weight


@st.composite
def networks(draw) -> bytes:
    """Convolutions with weights larger than the SDK keeps, between pads (int64 pads), nearest resizes
    (float scales) and a final reshape (int64 shape): every kind of tensor the reader reads as values."""
    nodes, initializers, x, channels, side = [], [], "x", 3, SIDE
    for index in range(draw(st.integers(1, 4))):
        kernel, stride = draw(st.integers(1, 5)), draw(st.integers(1, 2))
        dilation, pad = draw(st.integers(1, 2)), draw(st.integers(0, 2))
        if side + 2 * pad < dilation * (kernel - 1) + 1:
            continue
        out = draw(st.sampled_from([16, 24]))
        node, weight = _conv(index, x, channels, out, kernel, stride, pad, dilation)
        nodes.append(node)
        initializers.append(weight)
        x, channels = f"t{index}", out
        side = (side + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        extra = draw(st.sampled_from(["none", "pad", "resize"]))
        if extra == "pad":
            pads = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), f"p{index}")
            nodes.append(helper.make_node("Pad", [x, pads.name], [f"u{index}"], name=f"pad{index}"))
            initializers.append(pads)
            x, side = f"u{index}", side + 3
        elif extra == "resize" and side <= 16:
            scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"s{index}")
            nodes.append(helper.make_node("Resize", [x, "", scales.name], [f"u{index}"], name=f"up{index}"))
            initializers.append(scales)
            x, side = f"u{index}", side * 2
    shape = numpy_helper.from_array(np.array([1, channels, -1], np.int64), "shape")
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["y"], name="flat"))
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [image], [output], initializer=[*initializers, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@settings(max_examples=25, deadline=None)
@given(networks())
def test_the_weightless_graph_reads_as_the_full_graph(data):
    light, withheld = onnx_graph.weightless(data)
    full = onnx_reader.read(data, None)
    assert onnx_reader.read(light, None) == full
    big = [t for t in onnx.load_from_string(data).graph.initializer if t.name.startswith("W")]
    large = [t for t in big if len(t.raw_data) > onnx_graph.KEEP_BYTES]
    assert withheld == len(large)
    assert len(light) <= len(data) - sum(len(t.raw_data) for t in large) + 64 * len(large)
    assert onnx_weightless.withheld_names(light) == [t.name for t in large]


def _pad_model(pads: TensorProto) -> bytes:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["t"], kernel_shape=[3, 3], name="conv"),
        helper.make_node("Pad", ["t", "pads"], ["y"], name="the_pad"),
    ]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [image], [output], initializer=[weight, pads])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_withheld_value_that_shapes_need_is_refused_naming_the_operator_the_node_and_the_remedy():
    pads = TensorProto(name="pads", data_type=TensorProto.INT64, dims=[8])  # dims, but no values
    with pytest.raises(Unsupported) as error:
        onnx_reader.read(_pad_model(pads), None)
    message = error.value.message
    assert error.value.field == "model.onnx"
    assert "Pad (node 'the_pad')" in message and "'pads'" in message
    assert "send the full model" in message and "model repository" in message


def test_a_withheld_value_that_a_lowering_reads_is_refused_naming_the_operator_and_the_node():
    node = helper.make_node("Pad", ["t", "pads"], ["y"], name="the_pad")
    constants = {"pads": onnx_weightless.placeholder((8,), np.int64)}
    site = OnnxNode(node, {}, "t", 0, {"t": (1, 4, 14, 14)}, constants)
    with pytest.raises(Unsupported) as error:
        lower_node(site)
    assert "Pad (node 'the_pad') reads 'pads'" in error.value.message
    assert "send the full model" in error.value.message


def test_the_full_pad_model_reads_its_pads():
    pads = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")
    capture = onnx_reader.read(_pad_model(pads), None)
    assert capture.nodes[-1].shape == (1, 4, 14 + 3, 14 + 3)


def test_a_value_computed_from_a_withheld_weight_is_withheld_and_its_shape_still_reads():
    """W * 2 feeds the convolution: folded from a withheld tensor, it keeps its shape only."""
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[8, 3, 5, 5])
    two = numpy_helper.from_array(np.array(2, np.float32), "two")
    nodes = [
        helper.make_node("Mul", ["W", "two"], ["W2"], name="scale"),
        helper.make_node("Conv", ["x", "W2"], ["y"], kernel_shape=[5, 5], strides=[2, 2], name="conv"),
    ]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 21, 21])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [image], [output], initializer=[weight, two])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    capture = onnx_reader.read(data, None)
    assert capture.nodes[-1].shape == (1, 8, 9, 9)  # (21 - 5) // 2 + 1
    with pytest.raises(Unsupported) as error:
        onnx_weightless.refuse_withheld(data, "effective_field")
    assert error.value.field == "effective_field" and "W withheld" in error.value.message


def test_external_data_files_are_never_read_for_the_tensors_withheld(tmp_path):
    """A model saved with its large weights apart: its graph goes without opening the weights' file, and
    reads as the model itself."""
    data = _pad_model(numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads"))
    model = onnx.load_from_string(data)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32), "W"))
    full = onnx_reader.read(model.SerializeToString(), None)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    assert (tmp_path / "weights.bin").stat().st_size == 64 * 27 * 4  # only W went to the file
    (tmp_path / "weights.bin").unlink()
    light, withheld = onnx_graph.weightless(path)
    assert withheld == 1
    assert onnx_reader.read(light, None) == full
    assert full.nodes[-1].shape == (1, 64, 14 + 3, 14 + 3)
