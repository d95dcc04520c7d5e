"""Reading a remote endpoint's ModelMetadata: the FP32 NCHW image input and the logits output are found;
other input forms are refused naming every input, whatever its datatype and shape; UNAVAILABLE answers are
retried, at most five attempts in all, then reported."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.api.inference import grpc_service_pb2 as oip
from nnprobe.api.inference import grpc_service_pb2_grpc as oip_grpc
from nnprobe_services.errors import FailedPrecondition, Unavailable
from nnprobe_services.vision.robustness.remote import RemoteModel, _signature

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


class _Flaky(oip_grpc.GRPCInferenceServiceServicer):
    """An endpoint whose ModelInfer answers UNAVAILABLE ``failures`` times, then the logits x.sum(1, 2, 3)
    times (1, 2, ..., 5) per image (written here, for the client to read back)."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def ModelMetadata(self, request, context):
        return _meta([Tensor(name="pixels", datatype="FP32", shape=[-1, 3, 2, 2])])

    def ModelInfer(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(request.inputs[0].shape)
        logits = x.sum((1, 2, 3))[:, None] * np.arange(1, 6, dtype=np.float32)
        return oip.ModelInferResponse(raw_output_contents=[logits.astype("<f4").tobytes()])


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 6))
def test_unavailable_is_retried_at_most_five_times(failures):
    servicer = _Flaky(failures)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        model = RemoteModel(f"127.0.0.1:{port}", "m")
        pixels = torch.rand(3, 3, 2, 2)
        if failures < 5:
            logits = model.predict(pixels)
            expected = pixels.sum((1, 2, 3))[:, None] * torch.arange(1, 6)
            assert torch.allclose(logits, expected) and model.queries == 3
        else:
            with pytest.raises(Unavailable, match="ModelInfer failed with UNAVAILABLE: warming up"):
                model.predict(pixels)
        assert servicer.calls == min(failures + 1, 5)
        model.close()
    finally:
        server.stop(None)
