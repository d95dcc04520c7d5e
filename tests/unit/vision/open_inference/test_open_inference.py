"""The Open Inference Protocol core and messages: the vendored contract equals tritonclient's, raw contents
decode as the protocol defines them, every malformed input is a field-named INVALID_ARGUMENT (never another
exception), and the classification extension orders classes as a brute-force sort does."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.api.inference import grpc_service_pb2 as pb
from nnprobe.api.inference import model_config_pb2
from nnprobe_services.errors import InvalidArgument, ServiceError
from nnprobe_services.vision.open_inference import convert as oip_messages
from nnprobe_services.vision.open_inference import protocol as oip

from tests.support.open_inference import SIGNATURE as _SIGNATURE
from tests.support.open_inference import core as _core


def _fields(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple]:
    """Every message's fields as (name, number, label, type, type name), by full message name."""
    table: dict[str, tuple] = {}

    def walk(message, prefix):
        name = f"{prefix}.{message.name}"
        table[name] = tuple(sorted((f.name, f.number, f.label, f.type, f.type_name) for f in message.field))
        for nested in message.nested_type:
            walk(nested, name)

    for message in proto.message_type:
        walk(message, proto.package)
    for enum in proto.enum_type:
        table[f"{proto.package}.{enum.name}"] = tuple((v.name, v.number) for v in enum.value)
    for service in proto.service:
        table[service.name] = tuple(
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in service.method
        )
    return table


def test_the_vendored_contract_is_tritonclients(triton):
    theirs = triton("descriptors")
    for ours in (pb, model_config_pb2):
        mine = descriptor_pb2.FileDescriptorProto()
        ours.DESCRIPTOR.CopyToProto(mine)
        name = mine.name.removeprefix("inference/")
        other = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(theirs[name]))
        assert _fields(mine) == _fields(other), name


def reference_unpack(raw: bytes) -> list[bytes]:
    """The protocol's raw BYTES layout, read one element at a time."""
    items, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return items


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_raw_bytes_decode_as_the_protocol_lays_them_out(items):
    raw = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    assert oip_messages.unpack_bytes(raw, len(items), "input 'x'", "f") == reference_unpack(raw) == items
    assert oip_messages.pack_bytes(items) == raw


@given(st.binary(max_size=64), st.integers(0, 6))
def test_any_raw_bytes_payload_decodes_or_is_invalid_argument(raw, count):
    try:
        items = oip_messages.unpack_bytes(raw, count, "input 'x'", "raw_input_contents[0]")
    except InvalidArgument as error:
        assert error.field == "raw_input_contents[0]"
    else:
        assert items == reference_unpack(raw) and len(items) == count


SHAPES = st.lists(st.integers(-2, 5), min_size=0, max_size=5)


@settings(max_examples=200)
@given(
    name=st.sampled_from(["pixels", "image", "image_bytes", "other"]),
    datatype=st.sampled_from(["FP32", "UINT8", "BYTES", "FP64", "INT8", ""]),
    shape=SHAPES,
    size=st.integers(0, 400),
    typed=st.booleans(),
)
def test_malformed_inputs_are_field_named_invalid_arguments(name, datatype, shape, size, typed):
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if typed:
        tensor.contents.fp32_contents.extend([0.5] * (size // 4))
        tensor.contents.bytes_contents.extend([b"x"] * (size % 3))
    else:
        request.raw_input_contents.append(bytes(size))
    signature = oip.Signature(
        "m", ("1",), "onnxruntime_onnx", "onnxruntime", _SIGNATURE.inputs, _SIGNATURE.outputs, 4, 2, 2, 3, ()
    )
    try:
        inputs = oip_messages.infer_inputs(request)
        plain = _core().image_inputs(signature, inputs)
    except ServiceError as error:
        assert isinstance(error, InvalidArgument) and error.field and error.message
        return
    spec = {s.name: s for s in signature.inputs}[name]
    assert datatype == spec.datatype and len(shape) == len(spec.shape) and 1 <= shape[0] <= 4
    assert all(want in (-1, got) for got, want in zip(shape, spec.shape, strict=True))
    assert len(plain) == shape[0]


def test_raw_numeric_contents_are_little_endian():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 3, 2, 2])
    values = [i / 16 for i in range(12)]
    request.raw_input_contents.append(struct.pack("<12f", *values))
    (tensor,) = oip_messages.infer_inputs(request)
    assert tensor.data.tolist() == values  # type: ignore[union-attr]


@given(
    st.lists(st.sampled_from([-1.5, 0.0, 0.25, 3.0, 7.0]), min_size=1, max_size=12),
    st.integers(1, 12),
    st.booleans(),
)
def test_classification_orders_as_a_brute_force_sort(values, count, named):
    row = np.array(values, dtype=np.float32)
    labels = tuple(f"c{i}" for i in range(len(row))) if named else ()
    count = min(count, len(row))
    strings = [s.decode() for s in oip.classification(row, count, labels)]
    expected = sorted(range(len(row)), key=lambda i: (-values[i], i))[:count]
    assert [int(s.split(":")[1]) for s in strings] == expected
    # printf-style %f, as Triton formats the values (std::to_string)
    assert [s.split(":")[0] for s in strings] == ["%f" % values[i] for i in expected]  # noqa: UP031
    assert all(s.count(":") == (2 if named else 1) for s in strings)


def test_requested_classification_must_be_an_int64_of_at_least_one():
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="logits").parameters["classification"].string_param = "3"
    with pytest.raises(InvalidArgument):
        oip_messages.requested_outputs(request)
    request.outputs[0].parameters["classification"].int64_param = 0
    with pytest.raises(InvalidArgument, match="must be positive"):
        _core().check_outputs(_SIGNATURE, oip_messages.requested_outputs(request))
