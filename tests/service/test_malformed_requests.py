"""Request bytes that are not a valid message of the method's request type.

gRPC parses a request before any handler runs; left alone it answers UNKNOWN with the parser's exception
text and logs a traceback, and the call gets no request log line. Every method (health and reflection too)
answers INVALID_ARGUMENT instead; in a client stream the field names the message (``requests[1]``).
"""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe.api.attention.v1 import attention_pb2
from nnprobe.api.sequence.v1 import sequence_pb2
from nnprobe.api.vision.v1 import vision_pb2

#: Field number 0 is never valid, so these bytes fail to parse as any message.
CORRUPT = b"\x07garbage"

SERVICES = {
    "attention": attention_pb2.DESCRIPTOR.services_by_name["AttentionService"],
    "sequence": sequence_pb2.DESCRIPTOR.services_by_name["SequenceService"],
    "vision": vision_pb2.DESCRIPTOR.services_by_name["VisionService"],
}
METHODS = [(name, method) for name, service in SERVICES.items() for method in service.methods]


@pytest.fixture(scope="module")
def addresses(module_server_factory, tmp_path_factory):
    return {
        "attention": module_server_factory("attention")[1],
        "sequence": module_server_factory("sequence", ptb_download_timeout=0)[1],
        "vision": module_server_factory("vision", weights_download_timeout=0)[1],
    }


class RequestLines(logging.Handler):
    """The request log's lines, with a bounded wait for one to appear (the line is written just after the
    status is sent, so the client may see the status first)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(text in line for line in self.lines), timeout)


@pytest.fixture
def request_lines():
    logger = logging.getLogger("nnprobe.requests")
    handler, level = RequestLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _call(channel: grpc.Channel, path: str, method, payloads: list[bytes]) -> grpc.RpcError:
    """Send raw ``payloads`` (one for a unary request) and return the error the call ends with."""
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    call = kinds[(method.client_streaming, method.server_streaming)](path)
    request = iter(payloads) if method.client_streaming else payloads[0]
    with pytest.raises(grpc.RpcError) as caught:
        answer = call(request, timeout=30)
        if method.server_streaming:
            list(answer)
    return caught.value


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [violation.field for violation in bad.field_violations]
    return fields


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_corrupt_bytes_are_invalid_argument_on_every_method(
    addresses, service, method, request_lines, caplog
):
    path = f"/{method.containing_service.full_name}/{method.name}"
    with caplog.at_level(logging.INFO), grpc.insecure_channel(addresses[service]) as channel:
        error = _call(channel, path, method, [CORRUPT])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in error.details()
    assert "DecodeError" not in error.details()
    if method.client_streaming:
        assert _violations(error) == ["requests[0]"]
    assert request_lines.wait_for(f"{path} INVALID_ARGUMENT")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


UPLOAD_METADATA = vision_pb2.UploadModelMetadata(
    name="corrupt-upload",
    format=vision_pb2.MODEL_FORMAT_ONNX,
    size_bytes=1,
    sha256="0" * 64,
    config_yaml="input: {height: 8, width: 8}\n",
)


@pytest.mark.parametrize(
    ("service", "method_name", "first"),
    [
        ("sequence", "UploadCorpus", sequence_pb2.UploadCorpusRequest(name="c", split=1, text="a b\n")),
        ("vision", "UploadModel", vision_pb2.UploadModelRequest(metadata=UPLOAD_METADATA)),
    ],
)
def test_a_corrupt_message_later_in_a_client_stream_is_named(addresses, service, method_name, first):
    method = SERVICES[service].methods_by_name[method_name]
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(addresses[service]) as channel:
        error = _call(channel, path, method, [first.SerializeToString(), CORRUPT])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == ["requests[1]"]


def test_health_and_reflection_refuse_corrupt_bytes_and_answer_as_before(addresses):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(addresses["attention"]) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as caught:
            check(CORRUPT, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflect(iter([CORRUPT]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflection.ServerReflectionInfo(iter([listing]), timeout=30))
        names = {service.name for service in answers[0].list_services_response.service}
        assert "nnprobe.attention.v1.AttentionService" in names


def test_a_corrupt_request_without_a_token_is_unauthenticated(server_factory):
    _server, address = server_factory("attention", auth_token="s3cret")
    method = SERVICES["attention"].methods_by_name["CheckPoolingInvariance"]
    with grpc.insecure_channel(address) as channel:
        path = "/nnprobe.attention.v1.AttentionService/CheckPoolingInvariance"
        error = _call(channel, path, method, [CORRUPT])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def _parses(data: bytes) -> bool:
    try:
        sequence_pb2.GetJobRequest.FromString(data)
    except DecodeError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_any_bytes_get_a_documented_status(addresses, data):
    """Whatever the bytes, the answer is the one a local parse predicts: INVALID_ARGUMENT when they do not
    parse, otherwise the job lookup's own answer; never UNKNOWN or INTERNAL."""
    with grpc.insecure_channel(addresses["sequence"]) as channel:
        call = channel.unary_unary("/nnprobe.sequence.v1.SequenceService/GetJob")
        with pytest.raises(grpc.RpcError) as caught:
            call(data, timeout=30)
    if _parses(data):
        assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert "could not be parsed" not in caught.value.details()
    else:
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "could not be parsed" in caught.value.details()
