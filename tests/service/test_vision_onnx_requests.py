"""ONNX models sent in ComputeReceptiveField's ``model.onnx``: every error about them names ``model.onnx``
(the field that carried the bytes, never ``model.name``), they meet the repository's node and byte limits
(RESOURCE_EXHAUSTED naming the limit), and external data in them is refused without touching the server's
files. A model of the repository with the same fault is named by ``model.name``."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import NnprobeError, VisionClient
from onnx import TensorProto, helper, numpy_helper

MAX_NODES = 6
MAX_BYTES = 4096
#: What a model sent in the request may be answered with (besides OK).
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _model(ops: list[str], side: int = 16, extra_initializers=(), head: bool = False) -> bytes:
    """conv 3x3 (3 -> 2 channels) on a (1, 3, side, side) image, then the shape-keeping ``ops`` in turn;
    ``head``: then global average pooling and a flatten (a classifier of 2 classes)."""
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])
    nodes = [helper.make_node("Conv", ["x", "W"], ["t0"], kernel_shape=[3, 3], name="conv")]
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"{op.lower()}{i}"))
    shape = [1, 2, side - 2, side - 2]
    if head:
        ops = [*ops, "GlobalAveragePool", "Flatten"]
        nodes.append(helper.make_node(ops[-2], [f"t{len(ops) - 2}"], [f"t{len(ops) - 1}"], name="pool"))
        nodes.append(helper.make_node(ops[-1], [f"t{len(ops) - 1}"], [f"t{len(ops)}"], name="flat"))
        shape = [1, 2]
    output = helper.make_tensor_value_info(f"t{len(ops)}", TensorProto.FLOAT, shape)
    weight = numpy_helper.from_array(np.full((2, 3, 3, 3), 0.1, np.float32), "W")
    graph = helper.make_graph(nodes, "g", [image], [output], initializer=[weight, *extra_initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _fails(vision: VisionClient, **kwargs) -> NnprobeError:
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(**kwargs)
    return caught.value


def _fields(error: NnprobeError) -> list[str]:
    return [v.field for v in error.field_violations]


@pytest.fixture(scope="module")
def limited(module_server_factory, tmp_path_factory) -> str:
    _, address = module_server_factory(
        "vision",
        weights_download_timeout=0,
        max_model_nodes=MAX_NODES,
        max_model_bytes=MAX_BYTES,
        model_repository=tmp_path_factory.mktemp("repository"),
    )
    return address


@pytest.fixture
def vision(limited):
    with VisionClient(limited, timeout=60) as client:
        yield client


def test_a_chain_within_the_limits_is_analysed(vision):
    result = vision.compute_receptive_field(onnx=_model(["Relu", "Relu"]))
    end = result.layer(result.end_point)
    assert (end.height.size, end.height.receptive_size, end.height.jump) == (14, 3, 1)  # 16 - 3 + 1


def test_an_unmapped_operator_is_named_by_the_field_that_carried_the_bytes(vision):
    error = _fails(vision, onnx=_model(["Hardmax"]))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Hardmax" in error.message and _fields(error) == ["model.onnx"]
    labelled = _fails(vision, onnx=_model(["Hardmax"]), model="my-label")  # a label is not the carrier
    assert _fields(labelled) == ["model.onnx"]


def test_a_repository_model_with_the_same_operator_is_named_by_model_name(vision, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_model(["Hardmax"], head=True))
    vision.upload_model(path, name="hardmax", config={"input": {"height": 16, "width": 16}})
    error = _fails(vision, model="hardmax")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Hardmax" in error.message and _fields(error) == ["model.name"]


def test_more_nodes_than_the_limit_are_refused_naming_the_limit(vision):
    ops = ["Relu"] * MAX_NODES  # with the convolution: one node more than the limit
    error = _fails(vision, onnx=_model(ops))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and _fields(error) == ["model.onnx"]
    assert f"has {MAX_NODES + 1} graph nodes" in error.message and str(MAX_NODES) in error.message


def test_more_bytes_than_the_limit_are_refused_naming_the_limit(vision):
    ballast = numpy_helper.from_array(np.zeros(MAX_BYTES // 4, np.float32), "unused")
    data = _model(["Relu"], extra_initializers=[ballast])
    error = _fails(vision, onnx=data)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and _fields(error) == ["model.onnx"]
    assert f"holds {len(data)} bytes" in error.message and str(MAX_BYTES) in error.message


@pytest.mark.parametrize("location", ["/etc/hostname", "weights.bin", "../weights.bin"])
def test_external_data_in_the_request_is_refused(vision, location):
    weight = numpy_helper.from_array(np.full((2, 3, 3, 3), 0.1, np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "216")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3])
    graph = helper.make_graph([conv], "g", [image], [output], initializer=[weight])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    error = _fails(vision, onnx=data)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and _fields(error) == ["model.onnx"]
    assert "refers to external data" in error.message and location in error.message


VALID = _model(["Relu"])


def _with_bytes_in_a_name(data: bytes, name: bytes) -> bytes:
    """``data`` with the node name ``name`` replaced by as many bytes that are not UTF-8."""
    assert data.count(name) == 1
    return data.replace(name, b"\xff" * len(name))


def test_a_name_that_is_not_utf8_is_refused_naming_the_model(vision, tmp_path):
    """A string field of an ONNX model with bytes that are not UTF-8 (protobuf hands them over as bytes)
    is INVALID_ARGUMENT naming where, in the request's bytes and in an uploaded model alike."""
    data = _with_bytes_in_a_name(_model(["Relu"]), b"relu0")
    error = _fails(vision, onnx=data)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and _fields(error) == ["model.onnx"]
    assert "graph.node[1].name is not UTF-8" in error.message
    path = tmp_path / "model.onnx"
    path.write_bytes(_with_bytes_in_a_name(_model(["Relu"], head=True), b"relu0"))
    with pytest.raises(NnprobeError) as upload:
        vision.upload_model(path, name="not-utf8", config={"input": {"height": 16, "width": 16}})
    assert upload.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph.node[1].name is not UTF-8" in upload.value.message


@pytest.mark.parametrize(
    ("side", "verify", "code", "words"),
    [
        (10**6, False, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit of"),
        (2048, True, grpc.StatusCode.RESOURCE_EXHAUSTED, "back-propagation checks allow at most"),
    ],
)
def test_an_input_size_the_model_declares_is_answered_naming_the_model(vision, side, verify, code, words):
    """The size a model declares is the model's: errors about it name ``model.onnx``; the same size asked
    for in ``input_size`` names ``input_size``."""
    error = _fails(vision, onnx=_model(["Relu"], side=side), verify=verify)
    assert error.code == code and words in error.message and _fields(error) == ["model.onnx"]
    assert "give a smaller input_size" in error.message or code != grpc.StatusCode.RESOURCE_EXHAUSTED
    asked = _fails(vision, onnx=_model(["Relu"], side=side), input_size=side, verify=verify)
    assert asked.code == code and words in asked.message and _fields(asked) == ["input_size"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_and_oversized_bytes_get_a_documented_status_naming_model_onnx(limited, data):
    """Flipped bytes, cut bytes, nodes past the limit and ballast past the limit: each answer is OK or a
    documented status whose one field violation is ``model.onnx`` (the request gives no ``input_size``:
    the size is the model's), never UNKNOWN or INTERNAL and never ``model.name``."""
    kind = data.draw(st.sampled_from(["flip", "nodes", "ballast"]))
    if kind == "nodes":
        blob = bytearray(_model(["Relu"] * data.draw(st.integers(0, 2 * MAX_NODES))))
    elif kind == "ballast":
        size = data.draw(st.integers(0, MAX_BYTES))
        ballast = numpy_helper.from_array(np.zeros(size, np.uint8), "ballast")
        blob = bytearray(_model(["Relu"], extra_initializers=[ballast]))
    else:
        blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(0 if kind != "flip" else 1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(1, len(blob)))] if data.draw(st.booleans()) else blob
    with VisionClient(limited, timeout=60) as vision:
        try:
            vision.compute_receptive_field(onnx=bytes(blob))
        except NnprobeError as error:
            assert error.code in DOCUMENTED, error
            assert _fields(error) == ["model.onnx"], error
            if len(blob) > MAX_BYTES:
                assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return
    assert len(blob) <= MAX_BYTES
