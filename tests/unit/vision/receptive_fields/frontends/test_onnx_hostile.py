"""ONNX bytes from a client are read from the graph alone: external data, malformed tensors and constants
too large to compute are refused or left alone, never read from the server's files or allocated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec, Unsupported
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from onnx import TensorProto, helper, numpy_helper

IMAGE = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
OUTPUT = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
CONV = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], strides=[2, 2], name="conv")


def model_bytes(nodes, initializers=(), outputs=(OUTPUT,)) -> bytes:
    graph = helper.make_graph(nodes, "g", [IMAGE], list(outputs), initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def weight() -> TensorProto:
    return numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")


def external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "432")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_a_plain_convolution_reads():
    capture = rf_onnx.read(model_bytes([CONV], [weight()]), None)
    assert [node.name for node in capture.nodes] == ["x", "conv"]
    assert capture.nodes[-1].shape == (1, 4, 7, 7)


@pytest.mark.parametrize("location", ["/etc/hostname", "weights.bin", "../../weights.bin"])
def test_external_initializers_are_refused_before_any_file_is_opened(location, tmp_path, monkeypatch):
    (tmp_path / "weights.bin").write_bytes(np.ones(108, np.float32).tobytes())
    monkeypatch.chdir(tmp_path)  # a relative location would resolve here
    data = model_bytes([CONV], [external(weight(), location)])
    with pytest.raises(InvalidSpec, match="tensor 'W' refers to external data") as error:
        rf_onnx.read(data, None)
    assert error.value.field == "model.onnx" and location in error.value.message


def test_external_tensors_in_attributes_and_subgraphs_are_refused():
    constant = helper.make_node("Constant", [], ["W"], value=external(weight(), "w.bin"))
    with pytest.raises(InvalidSpec, match="refers to external data"):
        rf_onnx.read(model_bytes([constant, CONV], []), None)
    branch_out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    inner = helper.make_node("Constant", [], ["o"], value=external(weight(), "w.bin"))
    branch = helper.make_graph([inner], "b", [], [branch_out])
    condition = numpy_helper.from_array(np.array(True), "c")
    node = helper.make_node("If", ["c"], ["W"], then_branch=branch, else_branch=branch)
    with pytest.raises(InvalidSpec, match="refers to external data"):
        rf_onnx.read(model_bytes([node, CONV], [condition]), None)


def test_a_tensor_whose_data_does_not_fit_its_shape_is_invalid():
    broken = weight()
    broken.dims[0] = 1000
    with pytest.raises(InvalidSpec, match="initializer 'W' cannot be read") as error:
        rf_onnx.read(model_bytes([CONV], [broken]), None)
    assert error.value.field == "model.onnx"


def test_constants_in_every_attribute_form_are_read():
    shape = helper.make_node("Constant", [], ["s"], value_ints=[1, 4, 49])
    reshape = helper.make_node("Reshape", ["y", "s"], ["z"], name="flat")
    out = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    capture = rf_onnx.read(model_bytes([CONV, shape, reshape], [weight()], [out]), None)
    assert capture.nodes[-1].name == "flat" and capture.nodes[-1].shape == (1, 4, 49)
    text = helper.make_node("Constant", [], ["t"], value_strings=["a"])
    assert rf_onnx.read(model_bytes([text, CONV], [weight()]), None).nodes[-1].name == "conv"


def test_constants_larger_than_the_fold_limit_are_not_computed():
    side = 2048  # 4 Mi elements: above the limit, small enough to be harmless if it were computed
    assert side * side > rf_onnx.MAX_FOLDED_ELEMENTS
    dims = numpy_helper.from_array(np.array([side, side], np.int64), "dims")
    fill = helper.make_node("ConstantOfShape", ["dims"], ["big"])
    small = numpy_helper.from_array(np.array([2, 3], np.int64), "small_dims")
    fill_small = helper.make_node("ConstantOfShape", ["small_dims"], ["little"])
    reader = rf_onnx._Reader(model_bytes([fill, fill_small, CONV], [weight(), dims, small]), None, "m")
    assert "big" not in reader.constants
    assert reader.constants["little"].shape == (2, 3)


VALID = model_bytes([CONV], [weight()])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_bytes_are_read_or_refused_as_the_clients_fault(data):
    """Any change of a valid model's bytes reads, or raises the domain errors (never another exception)."""
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    size = data.draw(st.sampled_from([None, (16, 16), (5, 9)]))
    try:
        rf_onnx.read(bytes(blob[:cut]), size)
    except (InvalidSpec, Unsupported) as error:
        # The bytes' field, or the size: asked for, or missing ("give one"); never another field.
        assert error.field == "model.onnx" or (
            error.field == "input_size" and (size is not None or "give one" in error.message)
        ), error


def test_onnx_load_of_the_refused_model_still_parses():
    """The refusal is the reader's: the bytes are a well-formed model that names its external file."""
    data = model_bytes([CONV], [external(weight(), "weights.bin")])
    assert onnx.load_from_string(data).graph.initializer[0].external_data[0].value == "weights.bin"


def test_control_flow_with_sub_graphs_is_refused_not_dropped():
    """An If node whose branches read the image through outer scope has no data input of its own; it must be
    refused, never folded away (the answer would then miss the only path to the output)."""
    from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
    from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
    from onnx import TensorProto, helper

    conv_w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)
    branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y_branch"], kernel_shape=[3, 3])],
        "branch",
        [],
        [helper.make_tensor_value_info("y_branch", TensorProto.FLOAT, [1, 1, 6, 6])],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 6, 6])],
        initializer=[conv_w, cond],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Unsupported, match="control flow") as error:
        rf_onnx.read(model.SerializeToString(), None)
    assert error.value.field == "model.onnx"


@pytest.mark.parametrize("kind", [onnx.AttributeProto.UNDEFINED, onnx.AttributeProto.FLOAT])
def test_an_attribute_whose_type_does_not_match_its_value_is_the_clients_fault(kind):
    """kernel_shape holding integers but typed UNDEFINED (or FLOAT): refused naming the bytes, not a crash."""
    node = onnx.NodeProto()
    node.CopyFrom(CONV)
    node.attribute[0].type = kind
    with pytest.raises(InvalidSpec) as refused:
        rf_onnx.read(model_bytes([node], [weight()]), None)
    assert refused.value.field == "model.onnx" and "kernel_shape" in refused.value.message


def test_a_name_that_is_not_utf8_is_the_models_fault():
    """protobuf hands a proto2 string whose bytes are not UTF-8 over as bytes: the reader refuses it."""
    data = model_bytes([CONV], [weight()])
    name = CONV.name.encode()
    assert data.count(name) == 1
    with pytest.raises(InvalidSpec, match=r"graph\.node\[0\]\.name is not UTF-8") as error:
        rf_onnx.read(data.replace(name, b"\xff" * len(name)), (16, 16))
    assert error.value.field == "model.onnx"
