"""Reading a remote endpoint's ModelMetadata: the FP32 NCHW image input and the logits output are found;
other input forms are refused naming every input, whatever its datatype and shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.api.inference import grpc_service_pb2 as oip
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.vision.robustness.endpoint import _signature

Tensor = oip.ModelMetadataResponse.TensorMetadata


LOGITS = Tensor(name="logits", datatype="FP32", shape=[-1, 5])


def _meta(inputs, outputs=(LOGITS,)):
    return oip.ModelMetadataResponse(name="m", inputs=list(inputs), outputs=list(outputs))


def test_the_vision_servers_signature_gives_pixels_and_logits():
    meta = _meta(
        [
            Tensor(name="image", datatype="UINT8", shape=[-1, -1, -1, 3]),
            Tensor(name="pixels", datatype="FP32", shape=[-1, 3, 16, 24]),
        ],
        [
            Tensor(name="probabilities", datatype="FP32", shape=[-1, 5]),
            Tensor(name="logits", datatype="FP32", shape=[-1, 5]),
        ],
    )
    sig = _signature(meta)
    assert (sig.input_name, sig.height, sig.width, sig.output_name, sig.classes) == (
        "pixels",
        16,
        24,
        "logits",
        5,
    )


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,8}", fullmatch=True),
            st.sampled_from(["UINT8", "FP16", "BYTES", "INT64", "FP32"]),
            st.lists(st.integers(-1, 64), min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_inputs_other_than_fp32_nchw_are_refused_naming_them(inputs):
    usable = [d == "FP32" and len(s) == 4 and s[1] == 3 and s[2] > 0 and s[3] > 0 for _, d, s in inputs]
    meta = _meta([Tensor(name=n, datatype=d, shape=s) for n, d, s in inputs])
    if any(usable):
        assert _signature(meta).input_name == inputs[usable.index(True)][0]
        return
    with pytest.raises(FailedPrecondition) as caught:
        _signature(meta)
    assert caught.value.field == "remote"
    for name, datatype, shape in inputs:
        assert f"{name} {datatype} {shape}" in caught.value.message
