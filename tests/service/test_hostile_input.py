"""Hostile input: random, malformed and extreme requests for every RPC of every service.

Requests are built from the generated protobuf messages, driven by their descriptors, so fields (and RPCs)
added to the contracts are fuzzed without touching this file. Every answer must be one of the documented
statuses (never UNKNOWN or INTERNAL) and the server must keep answering afterwards.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import SequenceClient
from nnprobe.api.attention.v1 import attention_pb2
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2
from nnprobe.api.vision.v1 import vision_pb2

#: Statuses a server may answer to a hostile request.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: Seconds one fuzzed call may run; an expensive but valid request ends as DEADLINE_EXCEEDED.
CALL_TIMEOUT = 4.0
EXAMPLES = int(os.environ.get("NNPROBE_FUZZ_EXAMPLES", "50"))
#: The default run draws the same examples every time (a stable gate); NNPROBE_FUZZ_RANDOM=1 explores anew.
DERANDOMIZE = os.environ.get("NNPROBE_FUZZ_RANDOM", "") in ("", "0")
#: Server limits lowered so that valid-but-huge requests are refused (or finish) quickly.
LIMITS: dict[str, Any] = dict(
    max_tensor_elements=60_000,
    max_permutations=500,
    max_corpus_bytes=20_000,
    max_queued_jobs=2,
    max_sample_words=40,
    max_image_bytes=200_000,
    max_image_pixels=400 * 400,
    max_attack_steps=5,
    batch_queue_size=4,
    weights_download_timeout=0.0,
    ptb_download_timeout=0.0,
    compute_workers=4,
    transfer_connect_timeout=0.0,  # an address nobody serves answers at once, not after a wait
)
MODULES = {"vision": vision_pb2, "sequence": sequence_pb2, "attention": attention_pb2}

INT_EXTREMES = [
    0,
    1,
    -1,
    2,
    3,
    8,
    255,
    256,
    1024,
    65_537,
    2**31 - 1,
    -(2**31),
    2**40,
    2**62,
    2**63 - 1,
    -(2**63),
]
FLOAT_EXTREMES = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e300, 1e308, math.inf, -math.inf, math.nan]
NAUGHTY_STRINGS = [
    "",
    " ",
    "\n\t",
    "\x00",
    "é" * 3,
    "\u202e\u0635\u0648\u0631\u0629",
    "😀" * 5,
    "w1 " * 3000,
    "x" * 20_000,
    "😀" * 6000,
    "../../etc/passwd",
    "'; DROP TABLE jobs; --",
    "%s%n%x",
    "<eos>",
    "<unk>",
]


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one empty data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


SMALL_PNG = _png(8, 8)
IMAGE_BYTES = [
    b"",
    SMALL_PNG,
    SMALL_PNG[: len(SMALL_PNG) // 2],
    _png(300, 2),
    _png_header_only(100_000, 100_000),
    _png_header_only(0, 0),
    b"\xff\xd8\xff\xe0" + b"\x00" * 64,
    b"GIF89a" + b"\x01" * 32,
    b"BM" + b"\xff" * 64,
]


# -- strategies driven by descriptors ------------------------------------------------------------------


SIGNED_32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
UNSIGNED_32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
UNSIGNED_64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)


def _ints(field: FieldDescriptor) -> st.SearchStrategy[int]:
    if field.type in SIGNED_32:
        low, high = -(2**31), 2**31 - 1
    elif field.type in UNSIGNED_32:
        low, high = 0, 2**32 - 1
    elif field.type in UNSIGNED_64:
        low, high = 0, 2**64 - 1
    else:
        low, high = -(2**63), 2**63 - 1
    extremes = [v for v in INT_EXTREMES if low <= v <= high] + [high]
    return st.one_of(st.integers(max(low, -2), 40), st.sampled_from(extremes))


def _floats(field: FieldDescriptor) -> st.SearchStrategy[float]:
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.sampled_from(FLOAT_EXTREMES), st.floats(-4, 4, width=32), st.floats(width=32))
    return st.one_of(st.sampled_from(FLOAT_EXTREMES), st.floats(-4, 4), st.floats())


class Fuzz:
    """Builds a hypothesis strategy for any message type, with per-field-name hints of plausible values
    (a real job id, a vocabulary word, a layer name...) so that fuzzing also reaches the deep paths."""

    def __init__(self, hints: dict[str, list[Any]], max_depth: int = 4) -> None:
        self.hints = hints
        self.max_depth = max_depth

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        cls = message_factory.GetMessageClass(descriptor)
        if descriptor.full_name == "nnprobe.common.v1.Tensor":
            return tensor_strategy()
        fields = list(descriptor.fields)

        @st.composite
        def build(draw: Callable) -> Any:
            message = cls()
            for field in fields:
                if not draw(st.booleans()):
                    continue
                if field.message_type is not None and depth >= self.max_depth:
                    continue
                self._fill(draw, message, field, depth)
            return message

        return build()

    def mutation(self, seed: Any) -> st.SearchStrategy[Any]:
        """``seed`` (a valid request) with one to three fields, anywhere in it, replaced by fuzzed values:
        requests that pass most checks and reach the deep paths."""

        @st.composite
        def build(draw: Callable) -> Any:
            message = type(seed)()
            message.CopyFrom(seed)
            for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
                target, depth = message, 0
                while True:
                    field = draw(st.sampled_from(list(target.DESCRIPTOR.fields)))
                    nested = (
                        field.message_type is not None
                        and not field.is_repeated
                        and target.HasField(field.name)
                        and field.message_type.full_name != "nnprobe.common.v1.Tensor"
                    )
                    if nested and draw(st.booleans()):
                        target, depth = getattr(target, field.name), depth + 1
                        continue
                    target.ClearField(field.name)
                    self._fill(draw, target, field, depth)
                    break
            return message

        return build()

    def _fill(self, draw: Callable, message: Any, field: FieldDescriptor, depth: int) -> None:
        if _is_map(field):
            entry: Any = field.message_type
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 4))):
                key = draw(self.scalar(key_field))
                if value_field.message_type is not None:
                    target[key].CopyFrom(draw(self.message(value_field.message_type, depth + 1)))
                else:
                    target[key] = draw(self.scalar(value_field))
            return
        if field.is_repeated:
            target = getattr(message, field.name)
            count = draw(st.one_of(st.integers(0, 4), st.just(64)))
            for _ in range(count):
                if field.message_type is not None:
                    target.add().CopyFrom(draw(self.message(field.message_type, depth + 1)))
                else:
                    target.append(draw(self.scalar(field)))
            return
        if field.message_type is not None:
            getattr(message, field.name).CopyFrom(draw(self.message(field.message_type, depth + 1)))
        else:
            setattr(message, field.name, draw(self.scalar(field)))

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        kind = field.type
        hinted = self.hints.get(field.name, [])
        if kind == FieldDescriptor.TYPE_ENUM:
            enum: Any = field.enum_type
            values = [v.number for v in enum.values]
            base: st.SearchStrategy[Any] = st.one_of(
                st.sampled_from(values), st.sampled_from([-1, len(values), 99, 2**31 - 1])
            )
        elif kind == FieldDescriptor.TYPE_BOOL:
            base = st.booleans()
        elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            base = _floats(field)
        elif kind == FieldDescriptor.TYPE_STRING:
            base = st.one_of(st.text(max_size=40), st.sampled_from(NAUGHTY_STRINGS))
        elif kind == FieldDescriptor.TYPE_BYTES:
            base = st.one_of(st.binary(max_size=300), st.sampled_from(IMAGE_BYTES))
        else:
            base = _ints(field)
        if hinted:
            return st.one_of(st.sampled_from(hinted), base)
        return base


def _is_map(field: FieldDescriptor) -> bool:
    return field.is_repeated and field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def tensor_strategy(draw: Callable) -> common_pb2.Tensor:
    """A Tensor that is valid, lies about its length, has NaN/Inf, a wrong dtype or absurd dimensions."""
    dtype = draw(st.one_of(st.sampled_from(list(range(7))), st.sampled_from([-1, 7, 1000])))
    kind = draw(st.sampled_from(["valid", "valid", "nonfinite", "lying", "huge", "random"]))
    if kind == "huge":
        shape = draw(
            st.lists(st.sampled_from([0, 1, 2, 2**20, 2**31, 2**62, 2**63 - 1, -1, -(2**63)]), max_size=5)
        )
        data = draw(st.binary(max_size=64))
        return common_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    shape = draw(st.lists(st.integers(0, 6), max_size=4))
    count = math.prod(shape)
    itemsize = {1: 4, 2: 8, 3: 8, 4: 4, 5: 1, 6: 1}.get(dtype, 4)
    if kind == "random":
        return common_pb2.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=200)))
    if kind == "lying":
        extra = draw(st.sampled_from([-1, 1, itemsize, -itemsize, 3]))
        size = max(0, count * itemsize + extra)
        return common_pb2.Tensor(dtype=dtype, shape=shape, data=bytes(size))
    if dtype in (1, 2):
        values = np.asarray(
            draw(st.lists(st.sampled_from([0.0, 1.0, -2.5, 1e30, 3e38]), min_size=count, max_size=count)),
            dtype=np.float64,
        )
        if kind == "nonfinite" and count:
            values[draw(st.integers(0, count - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        array = values.astype("<f4" if dtype == 1 else "<f8").reshape(shape)
        return common_pb2.Tensor(dtype=dtype, shape=shape, data=array.tobytes())
    return common_pb2.Tensor(dtype=dtype, shape=shape, data=bytes(count * itemsize))


# -- servers and calls ---------------------------------------------------------------------------------


def _text(lines: int, offset: int = 0) -> str:
    words = [f"w{i}" for i in range(20)]
    return "".join(
        " ".join(words[(3 * (k + offset) + j) % 20] for j in range(6)) + "\n" for k in range(lines)
    )


@pytest.fixture(scope="module")
def servers(module_server_factory, tmp_path_factory) -> Iterator[dict[str, Any]]:
    started = {
        service: module_server_factory(service, tmp_path_factory.mktemp(service), **LIMITS)
        for service in MODULES
    }
    address = started["sequence"][1]
    with SequenceClient(address, timeout=120) as client:
        corpus = client.upload_corpus(_text(60), _text(12, 60), _text(12, 80))
        job = client.start_training(
            corpus.corpus_id,
            embed_size=8,
            hidden_size=8,
            batch_size=2,
            sequence_length=4,
            epochs=1,
            max_steps=4,
            eval_batch_size=2,
            checkpoint_interval=2,
        )
        job = client.wait_job(job.job_id)
        assert job.state == "succeeded"
    channels = {service: grpc.insecure_channel(addr) for service, (_, addr) in started.items()}
    yield {"channels": channels, "job_id": job.job_id, "corpus_id": corpus.corpus_id}
    for channel in channels.values():
        channel.close()
    for server, _ in started.values():
        server.shutdown(0).wait()


def hints(job_id: str, corpus_id: str) -> dict[str, list[Any]]:
    return {
        "job_id": [job_id, "job-000000000000"],
        "corpus_id": [corpus_id, "corpus-0000000000000000"],
        "word": ["w1", "w2", "<eos>"],
        "word_a": ["w1", "<eos>"],
        "word_b": ["w9", "<unk>"],
        "prompt": ["w1 w2", "w1 nope"],
        "layer": ["conv1", "layer1", "pool1"],
        "end_point": ["conv1", "layer4"],
        "model": ["", "efficientnet_lite0", "alexnet"],
        "name": ["conv1", "pool1", "alexnet", "resnet18"],
        "key": ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "output.weight"],
        "text": [_text(4), "a b\nc\n"],
        "device": ["cpu", "cuda", "cuda:7", "tpu"],
        "label": ["tabby", "goldfish", "no such class"],
        "transfer_models": ["alexnet", "efficientnet_lite0", "nope"],
        "transfer_addresses": ["127.0.0.1:1", "", "not an address"],
    }


def _f64(shape: tuple[int, ...]) -> common_pb2.Tensor:
    values = np.linspace(-1, 1, math.prod(shape)).reshape(shape)
    return common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT64, shape=list(shape), data=values.tobytes())


def seeds(job_id: str, corpus_id: str) -> dict[str, Any]:
    """A valid request per RPC, the starting point of mutations. An RPC missing here is fuzzed from
    scratch only (its descriptor still drives everything)."""
    v, s, a = vision_pb2, sequence_pb2, attention_pb2
    attention = a.SelfAttention(sequence_length=4, model_dim=4, seed=3)
    return {
        "ComputeReceptiveField": v.ComputeReceptiveFieldRequest(
            layers=[
                v.LayerSpec(name="conv1", kernel=v.Extent(height=3, width=3)),
                v.LayerSpec(name="pool1", kind=v.LAYER_KIND_POOL, kernel=v.Extent(height=2, width=2)),
            ],
            input_size=v.Extent(height=12, width=12),
            units=[v.UnitQuery(layer="conv1", x=1, y=1)],
            verify=True,
        ),
        "ListModels": v.ListModelsRequest(),
        "Classify": v.ClassifyRequest(images=[common_pb2.Image(encoded=SMALL_PNG, name="small")], top_k=3),
        "GenerateAdversarial": v.GenerateAdversarialRequest(
            images=[common_pb2.Image(encoded=_png(224, 224), name="flat")],
            goal=v.ATTACK_GOAL_UNTARGETED,
            method=v.ATTACK_METHOD_FGSM,
            top_k=2,
        ),
        "RunRecurrent": s.RunRecurrentRequest(
            cell=s.RecurrentCell(cell=s.CELL_TYPE_LSTM, hidden_size=3, seed=1, output_size=2),
            inputs=_f64((3, 2, 2)),
        ),
        "AnalyzeGradients": s.AnalyzeGradientsRequest(
            cells=[s.CELL_TYPE_RNN_TANH], hidden_size=4, sequence_length=6, spectral_radii=[0.9]
        ),
        "CompareTruncation": s.CompareTruncationRequest(
            vocab_size=20, embed_size=4, hidden_size=4, batch_size=2, chunk_length=3, chunk_counts=[1, 2]
        ),
        "UploadCorpus": s.UploadCorpusRequest(name="fuzz", split=s.CORPUS_SPLIT_TRAIN, text=_text(30)),
        "StartTraining": s.StartTrainingRequest(
            corpus_id=corpus_id,
            config=s.TrainingConfig(
                embed_size=4, hidden_size=4, batch_size=2, sequence_length=4, max_steps=2, eval_batch_size=2
            ),
        ),
        "WatchJob": s.WatchJobRequest(job_id=job_id),
        "ListJobs": s.ListJobsRequest(limit=5),
        "GetJob": s.GetJobRequest(job_id=job_id, history=True, plot=True),
        "CancelJob": s.CancelJobRequest(job_id=job_id),
        "ResumeJob": s.ResumeJobRequest(job_id=job_id),
        "EvaluatePerplexity": s.EvaluatePerplexityRequest(job_id=job_id, split=s.CORPUS_SPLIT_TEST),
        "Sample": s.SampleRequest(job_id=job_id, prompt="w1 w2", num_words=5, top_k=3, top_p=0.9),
        "EmbeddingDistance": s.EmbeddingDistanceRequest(job_id=job_id, word_a="w1", word_b="w2"),
        "NearestWords": s.NearestWordsRequest(job_id=job_id, word="w1", k=3),
        "CheckPermutationEquivariance": a.CheckPermutationEquivarianceRequest(attention=attention),
        "CheckPoolingInvariance": a.CheckPoolingInvarianceRequest(attention=attention, pooling=a.POOLING_MAX),
        "CheckFeedForwardEquivalence": a.CheckFeedForwardEquivalenceRequest(
            widths=[4, 8, 4], batch_size=2, sequence_length=3, timing_repeats=1
        ),
    }


def all_methods() -> list[tuple[str, ServiceDescriptor, MethodDescriptor]]:
    found: list[tuple[str, ServiceDescriptor, MethodDescriptor]] = []
    for service, module in MODULES.items():
        for descriptor in module.DESCRIPTOR.services_by_name.values():
            found.extend((service, descriptor, method) for method in descriptor.methods)
    return found


METHODS = all_methods()


def call(channel: grpc.Channel, method: MethodDescriptor, request: Any) -> grpc.StatusCode:
    """Send one request (or a stream of them) and drain the answer; return the final status, after
    checking that it is the server's own (not the client's transport refusing an oversized answer)."""
    code, details = call_details(channel, method, request)
    assert "metadata size" not in details, details
    return code


def call_details(
    channel: grpc.Channel, method: MethodDescriptor, request: Any
) -> tuple[grpc.StatusCode, str]:
    """Send one request (or a stream of them) and drain the answer; return the final status and text."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs = dict(
        request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_type.FromString
    )
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kwargs)(iter(request), timeout=CALL_TIMEOUT))
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter(request), timeout=CALL_TIMEOUT)
        elif method.server_streaming:
            list(channel.unary_stream(path, **kwargs)(request, timeout=CALL_TIMEOUT))
        else:
            channel.unary_unary(path, **kwargs)(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def serving(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def stop_active_jobs(channel: grpc.Channel) -> None:
    """Cancel jobs a fuzzed StartTraining/ResumeJob started, so they do not eat the CPU."""
    stub_list = channel.unary_unary(
        "/nnprobe.sequence.v1.SequenceService/ListJobs",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=sequence_pb2.ListJobsResponse.FromString,
    )
    cancel = channel.unary_unary(
        "/nnprobe.sequence.v1.SequenceService/CancelJob",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=sequence_pb2.CancelJobResponse.FromString,
    )
    active = [sequence_pb2.JOB_STATE_QUEUED, sequence_pb2.JOB_STATE_RUNNING]
    for job in stub_list(sequence_pb2.ListJobsRequest(states=active), timeout=30).jobs:
        try:
            cancel(sequence_pb2.CancelJobRequest(job_id=job.job_id), timeout=120)
        except grpc.RpcError as error:  # finished in between
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


VALID_REQUESTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "vision": lambda s: vision_pb2.ComputeReceptiveFieldRequest(
        layers=[vision_pb2.LayerSpec(name="conv1", kernel=vision_pb2.Extent(height=3, width=3))],
        input_size=vision_pb2.Extent(height=8, width=8),
    ),
    "sequence": lambda s: sequence_pb2.EmbeddingDistanceRequest(job_id=s["job_id"], word_a="w1", word_b="w2"),
    "attention": lambda s: attention_pb2.CheckPermutationEquivarianceRequest(
        attention=attention_pb2.SelfAttention(sequence_length=3, model_dim=4)
    ),
}
VALID_METHODS = {
    "vision": "ComputeReceptiveField",
    "sequence": "EmbeddingDistance",
    "attention": "CheckPermutationEquivariance",
}


def answers_valid_request(servers: dict[str, Any], service: str) -> None:
    channel = servers["channels"][service]
    descriptor = MODULES[service].DESCRIPTOR.services_by_name
    (service_descriptor,) = descriptor.values()
    method = service_descriptor.methods_by_name[VALID_METHODS[service]]
    assert serving(channel)
    assert call(channel, method, VALID_REQUESTS[service](servers)) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("service", "service_descriptor", "method"), METHODS, ids=[f"{m[1].name}.{m[2].name}" for m in METHODS]
)
def test_every_rpc_answers_hostile_requests_with_documented_statuses(
    servers, service, service_descriptor, method, caplog
):
    channel = servers["channels"][service]
    fuzz = Fuzz(hints(servers["job_id"], servers["corpus_id"]))
    request = fuzz.message(method.input_type)
    seed = seeds(servers["job_id"], servers["corpus_id"]).get(method.name)
    if seed is not None and seed.DESCRIPTOR.fields:
        request = st.one_of(request, fuzz.mutation(seed), fuzz.mutation(seed))
    strategy = st.lists(request, min_size=0, max_size=6) if method.client_streaming else request
    seen: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def check(message: Any) -> None:
        code = call(channel, method, message)
        seen[code] = seen.get(code, 0) + 1
        assert code in DOCUMENTED, f"{method.name} answered {code.name} to {message!r:.2000}"
        if method.name in ("StartTraining", "ResumeJob"):
            stop_active_jobs(channel)

    with caplog.at_level(logging.ERROR, logger="nnprobe.requests"):
        check()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    answers_valid_request(servers, service)
    counts = ", ".join(f"{code.name} {n}" for code, n in sorted(seen.items(), key=lambda kv: kv[0].name))
    print(f"{service_descriptor.name}.{method.name}: {sum(seen.values())} requests: {counts}")


def test_the_fuzzer_covers_every_rpc_of_every_service():
    """New RPCs are picked up from the descriptors: nothing to add here when a contract grows."""
    names = {f"{descriptor.name}.{method.name}" for _, descriptor, method in METHODS}
    for module in MODULES.values():
        for service in module.DESCRIPTOR.services_by_name.values():
            assert {f"{service.name}.{m.name}" for m in service.methods} <= names


def test_upload_corpus_over_the_limit_in_many_chunks_is_resource_exhausted(servers):
    channel = servers["channels"]["sequence"]
    method = sequence_pb2.DESCRIPTOR.services_by_name["SequenceService"].methods_by_name["UploadCorpus"]
    chunk = sequence_pb2.UploadCorpusRequest(split=sequence_pb2.CORPUS_SPLIT_TRAIN, text="w1 w2 w3\n" * 500)
    assert call(channel, method, [chunk] * 10) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert serving(channel)


@pytest.mark.parametrize("service", list(MODULES))
def test_messages_over_the_size_limit_are_refused_before_decoding(server_factory, tmp_path, service, caplog):
    server, address = server_factory(service, tmp_path, max_message_bytes=4096)
    (service_descriptor,) = MODULES[service].DESCRIPTOR.services_by_name.values()
    big = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT64, shape=[1024], data=bytes(8192))
    requests = {
        "vision": vision_pb2.ComputeReceptiveFieldRequest(
            plot=vision_pb2.PlotOptions(image=common_pb2.Image(encoded=bytes(8192)))
        ),
        "sequence": sequence_pb2.RunRecurrentRequest(inputs=big),
        "attention": attention_pb2.CheckPermutationEquivarianceRequest(
            attention=attention_pb2.SelfAttention(x=big)
        ),
    }
    method = service_descriptor.methods_by_name[
        {
            "vision": "ComputeReceptiveField",
            "sequence": "RunRecurrent",
            "attention": "CheckPermutationEquivariance",
        }[service]
    ]
    try:
        with grpc.insecure_channel(address) as channel, caplog.at_level(logging.DEBUG, "nnprobe.requests"):
            assert call(channel, method, requests[service]) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert serving(channel)
    finally:
        server.shutdown(0).wait()
    # The servicer never saw it: no request log line (not even "started") for the method.
    assert not [r for r in caplog.records if method.name in r.getMessage()], caplog.text


def test_sample_images_and_limits_are_consistent():
    """The fuzzer's own fixtures are what they claim (a guard against a silently weaker fuzz)."""
    assert SMALL_PNG.startswith(b"\x89PNG")
    assert struct.unpack(">II", IMAGE_BYTES[4][16:24]) == (100_000, 100_000)


@pytest.mark.parametrize("text", ["x" * 20_000, "😀" * 6000, "é" * 9000], ids=["ascii", "emoji", "accented"])
def test_an_error_quoting_a_huge_request_string_keeps_its_status(servers, text):
    """Regression: a NOT_FOUND quoting a 20 000-character job id overflowed the client's trailer limit,
    which turned it into RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"."""
    channel = servers["channels"]["sequence"]
    (service,) = sequence_pb2.DESCRIPTOR.services_by_name.values()
    for name, request in (
        ("CancelJob", sequence_pb2.CancelJobRequest(job_id=text)),
        ("EmbeddingDistance", sequence_pb2.EmbeddingDistanceRequest(job_id=servers["job_id"], word_a=text)),
    ):
        code, details = call_details(channel, service.methods_by_name[name], request)
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert len(details.encode()) <= 1000 and "characters in all]" in details


def test_every_seed_request_is_valid(servers):
    """Mutations start from valid requests; a seed that is itself refused would make them shallow."""
    for service, _descriptor, method in METHODS:
        seed = seeds(servers["job_id"], servers["corpus_id"]).get(method.name)
        if seed is None or method.name in ("CancelJob", "ResumeJob"):
            continue
        request = [seed] if method.client_streaming else seed
        code, details = call_details(servers["channels"][service], method, request)
        assert code == grpc.StatusCode.OK, f"{method.name}: {code.name} {details}"
        if method.name == "StartTraining":
            stop_active_jobs(servers["channels"][service])


def _huge(shape: tuple[int, ...]) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        dtype=common_pb2.DTYPE_FLOAT64, shape=list(shape), data=np.full(shape, 1e300).tobytes()
    )


SEQUENCE_REGRESSIONS = {
    # float64 weights that overflow float32 reached LAPACK's eigen-solver as inf: the process crashed.
    "float32 init_scale 1e300 (crashed the server)": (
        "AnalyzeGradients",
        sequence_pb2.AnalyzeGradientsRequest(
            hidden_size=4,
            sequence_length=6,
            spectral_radii=[0.9],
            init_scale=1e300,
            dtype=common_pb2.DTYPE_FLOAT32,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "float32 given weights 1e300 (crashed the server)": (
        "AnalyzeGradients",
        sequence_pb2.AnalyzeGradientsRequest(
            cells=[sequence_pb2.CELL_TYPE_RNN_LINEAR],
            sequence_length=5,
            dtype=common_pb2.DTYPE_FLOAT32,
            weights={"weight_ih_l0": _huge((2, 2)), "weight_hh_l0": _huge((2, 2))},
            spectral_radii=[],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    # Inputs that overflow float32 made the SVD fail: INTERNAL.
    "float32 input_scale 1e300 (was INTERNAL)": (
        "AnalyzeGradients",
        sequence_pb2.AnalyzeGradientsRequest(
            hidden_size=4,
            sequence_length=6,
            spectral_radii=[0.9],
            input_scale=1e300,
            dtype=common_pb2.DTYPE_FLOAT32,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    # A subnormal radius made the Jacobian product's exponent too large for one power of two: INTERNAL.
    "spectral radius 5e-324 (was INTERNAL)": (
        "AnalyzeGradients",
        sequence_pb2.AnalyzeGradientsRequest(hidden_size=4, sequence_length=6, spectral_radii=[5e-324]),
        grpc.StatusCode.OK,
    ),
    "RunRecurrent float32 with float64 weights 1e300": (
        "RunRecurrent",
        sequence_pb2.RunRecurrentRequest(
            cell=sequence_pb2.RecurrentCell(
                cell=sequence_pb2.CELL_TYPE_RNN_TANH,
                no_bias=True,
                weights={"weight_ih_l0": _huge((2, 2)), "weight_hh_l0": _huge((2, 2))},
            ),
            inputs=_f64((3, 1, 2)),
            dtype=common_pb2.DTYPE_FLOAT32,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("case", list(SEQUENCE_REGRESSIONS))
def test_values_that_overflow_the_working_precision_are_refused(servers, case):
    method_name, request, expected = SEQUENCE_REGRESSIONS[case]
    (service,) = sequence_pb2.DESCRIPTOR.services_by_name.values()
    channel = servers["channels"]["sequence"]
    code, details = call_details(channel, service.methods_by_name[method_name], request)
    assert code == expected, details
    assert serving(channel)


def test_sampling_at_a_subnormal_temperature_is_greedy(servers):
    """Regression: temperature 5e-324 overflowed logits / T to inf and the draw failed: INTERNAL."""
    (service,) = sequence_pb2.DESCRIPTOR.services_by_name.values()
    method = service.methods_by_name["Sample"]
    channel = servers["channels"]["sequence"]
    stub = channel.unary_unary(
        f"/{service.full_name}/Sample",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=sequence_pb2.SampleResponse.FromString,
    )
    common = dict(job_id=servers["job_id"], prompt="w1 w2", num_words=5, top_k=3, top_p=0.9)
    cold = stub(sequence_pb2.SampleRequest(temperature=5e-324, **common), timeout=30)
    greedy = stub(
        sequence_pb2.SampleRequest(strategy=sequence_pb2.SAMPLING_STRATEGY_GREEDY, **common), timeout=30
    )
    assert list(cold.word_ids) == list(greedy.word_ids)
    assert (
        call(channel, method, sequence_pb2.SampleRequest(temperature=1e-300, **common)) == grpc.StatusCode.OK
    )
