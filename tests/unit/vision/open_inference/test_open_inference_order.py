"""Triton's order of input checks: name, number, datatype, shape and batch size come from the request's
headers alone and are reported before the contents' sizes are compared with the shape, so a wrong shape or
batch is named as such even when its contents (sized for the shape the model expects) cannot match it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.api.inference import grpc_service_pb2 as pb
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.vision.open_inference import convert as oip_messages

from tests.support.open_inference import SIGNATURE
from tests.support.open_inference import core as _core


def _pixels_request(shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="pixels", datatype="FP32", shape=shape)
    request.raw_input_contents.append(np.zeros((1, 3, 2, 2), "<f4").tobytes())  # one image's worth
    return request


@pytest.mark.parametrize(
    ("shape", "message", "field"),
    [
        ([1, 3, 2], "unexpected shape for input 'pixels' for model 'm'. Expected [-1,3,2,2], got [1,3,2]",
         "inputs[0].shape"),
        ([10**9, 3, 2, 2], "inference request batch-size must be <= 4 (and >= 1) for 'm', got 1000000000",
         "inputs[0].shape"),
        ([0, 3, 2, 2], "batch-size must be <= 4 (and >= 1) for 'm', got 0", "inputs[0].shape"),
    ],
)  # fmt: skip
def test_a_wrong_shape_is_named_before_the_contents_size(shape, message, field):
    request = _pixels_request(shape)
    with pytest.raises(InvalidArgument) as caught:
        _core().check_inputs(SIGNATURE, oip_messages.input_headers(request))
    assert message in caught.value.message and caught.value.field == field


def test_headers_carry_names_datatypes_and_shapes_without_contents():
    request = _pixels_request([1, 3, 2, 2])
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[2, 1])
    headers = oip_messages.input_headers(request)
    assert [(h.name, h.datatype, h.shape, list(h.data)) for h in headers] == [
        ("pixels", "FP32", (1, 3, 2, 2), []),
        ("image_bytes", "BYTES", (2, 1), []),
    ]


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(-2, 8),
    tail=st.lists(st.integers(-1, 4), min_size=0, max_size=4),
    size=st.integers(0, 200),
)
def test_contents_are_judged_only_for_shapes_the_model_takes(batch, tail, size):
    """Whatever the shape and contents: a request whose headers pass fails, if at all, on its contents; a
    request whose headers fail gets the same error as the full path gives."""
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="pixels", datatype="FP32", shape=[batch, *tail])
    request.raw_input_contents.append(bytes(size))
    core = _core()
    try:
        core.check_inputs(SIGNATURE, oip_messages.input_headers(request))
    except InvalidArgument as header_error:
        assert header_error.field in ("inputs[0].shape", "inputs")
        return
    assert [batch, *tail] == [batch, 3, 2, 2] and 1 <= batch <= 4
    try:
        core.image_inputs(SIGNATURE, oip_messages.infer_inputs(request))
    except InvalidArgument as error:
        assert error.field == "raw_input_contents[0]" and size != batch * 48
    else:
        assert size == batch * 48
