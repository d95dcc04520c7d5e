"""The SDK against an in-process AttentionService: every RPC, every error path."""

import grpc
import numpy as np
import pytest
from nnprobe import NnprobeError
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.attention.v1 import attention_pb2_grpc
from nnprobe.api.common.v1 import common_pb2


def test_equivariance_holds_exhaustively_float64(attention):
    result = attention.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0)
    assert result.holds and result.exhaustive and result.permutations_checked == 120
    assert result.max_deviation <= 1e-12
    assert result.output.shape == (5, 8) and result.output.dtype == np.float64


@pytest.mark.parametrize("options", [{"positional_encoding": "sinusoidal"}, {"causal_mask": True}])
def test_position_information_breaks_equivariance(attention, options):
    result = attention.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0, **options)
    assert not result.holds and result.max_deviation > 1e-3


def test_given_tensors_match_the_notebook_case(attention):
    rng = np.random.default_rng(7)
    x = rng.integers(10, size=(5, 5)).astype(np.float64)
    weights = [rng.random((5, 5)) for _ in range(3)]
    result = attention.check_permutation_equivariance(x, weights=weights, scale=2, softmax="matrix")
    assert result.holds and result.max_deviation <= 1e-12
    scores = (x @ weights[0]) @ (x @ weights[1]).T / 2
    e = np.exp(scores - scores.max())
    np.testing.assert_allclose(result.output, (e / e.sum()) @ (x @ weights[2]), atol=1e-12)


def test_multi_head_and_float32(attention):
    result = attention.check_permutation_equivariance(
        sequence_length=6, model_dim=16, heads=4, seed=1, dtype="float32"
    )
    assert result.holds and result.output.dtype == np.float32 and result.max_deviation <= 1e-5


def test_sampling_beyond_t_8_includes_fixed_permutations(attention):
    result = attention.check_permutation_equivariance(sequence_length=12, model_dim=8, num_samples=50)
    assert not result.exhaustive and result.permutations_checked == 50 + 12
    assert result.holds


@pytest.mark.parametrize(
    ("pooling", "invariant"), [("mean", True), ("sum", True), ("max", True), ("first_token", False)]
)
def test_pooling(attention, pooling, invariant):
    result = attention.check_pooling_invariance(pooling=pooling, sequence_length=5, model_dim=8, seed=0)
    assert result.holds is invariant and result.output.shape == (8,)
    assert (result.max_deviation <= 1e-12) if invariant else (result.max_deviation > 1e-3)


@pytest.mark.parametrize(("dtype", "bound"), [("float32", 1e-6), ("float64", 1e-12)])
def test_feed_forward_equivalence(attention, dtype, bound):
    result = attention.check_feed_forward_equivalence(
        widths=[32, 64, 16], batch_size=3, sequence_length=7, dtype=dtype, seed=2
    )
    assert result.equivalent and result.max_deviation <= bound and result.tolerance == bound
    assert result.linear_parameters == result.conv_parameters == 32 * 64 + 64 + 64 * 16 + 16
    assert result.output.shape == (3, 7, 16)
    assert result.linear_forward_seconds > 0 and result.conv_forward_seconds > 0


def test_feed_forward_with_given_input(attention):
    x = np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32)
    result = attention.check_feed_forward_equivalence(x, widths=[12, 24, 12], activation="after_every_layer")
    assert result.equivalent and (result.output >= 0).all() and result.output.shape == (2, 5, 12)


def test_same_request_same_bytes(attention):
    first = attention.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=3, causal_mask=True)
    second = attention.check_permutation_equivariance(
        sequence_length=5, model_dim=8, seed=3, causal_mask=True
    )
    a, b = first.raw, second.raw
    a.ClearField("seconds")
    b.ClearField("seconds")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    other = attention.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=4, causal_mask=True)
    assert not np.array_equal(other.output, first.output)


def expect_error(call, code, field, fragment):
    with pytest.raises(NnprobeError) as info:
        call()
    error = info.value
    assert error.code == code, error
    assert [v.field for v in error.field_violations] == [field], error
    assert fragment in error.message, error
    assert "Traceback" not in error.message
    return error


BAD_EQUIVARIANCE = [
    ({"sequence_length": 0, "model_dim": 4}, "attention.sequence_length", "must be positive"),
    ({"sequence_length": 4, "model_dim": -2}, "attention.model_dim", "must be positive"),
    ({"sequence_length": 4, "model_dim": 6, "heads": 4}, "attention.heads", "divisor of model_dim=6"),
    ({"sequence_length": 9, "model_dim": 4, "strategy": "exhaustive"}, "permutations.strategy", "T <= 8"),
    ({"x": np.full((3, 4), np.nan)}, "attention.x", "NaN or Inf"),
    ({"x": np.array([[1.0, np.inf]])}, "attention.x", "NaN or Inf"),
    ({"x": np.zeros((3, 4, 2))}, "attention.x", "must have 2 dimensions"),
    ({"x": np.zeros((3, 4), np.int64)}, "attention.x", "must be float32 or float64"),
    (
        {"x": np.zeros((3, 4)), "weights": [np.zeros((4, 4))] * 2 + [np.zeros((3, 4))]},
        "attention.w_value",
        "must have shape [4, 4]",
    ),
    (
        {"x": np.zeros((3, 4)), "weights": [np.zeros((4, 4)), np.zeros((4, 4)), np.full((4, 4), np.nan)]},
        "attention.w_value",
        "NaN or Inf",
    ),
    ({"x": np.zeros((3, 4)), "sequence_length": 5}, "attention.sequence_length", "x has shape [3, 4]"),
    ({"sequence_length": 4, "model_dim": 4, "scale": float("nan")}, "attention.scale", "finite"),
    ({"sequence_length": 4, "model_dim": 4, "tolerance": -1.0}, "permutations.tolerance", ">= 0"),
    (
        {"sequence_length": 4, "model_dim": 4, "num_samples": -5, "strategy": "sampled"},
        "permutations.num_samples",
        "must be positive",
    ),
]


@pytest.mark.parametrize(("kwargs", "field", "fragment"), BAD_EQUIVARIANCE)
def test_invalid_equivariance_requests(attention, kwargs, field, fragment):
    expect_error(
        lambda: attention.check_permutation_equivariance(**kwargs),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
        fragment,
    )


def test_size_limits_are_resource_exhausted(attention):
    expect_error(
        lambda: attention.check_permutation_equivariance(sequence_length=100_000, model_dim=100_000),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "attention.model_dim",
        "limit",
    )
    expect_error(
        lambda: attention.check_permutation_equivariance(
            sequence_length=20, model_dim=4, strategy="sampled", num_samples=10**9
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "permutations.num_samples",
        "limit is 1000000",
    )
    expect_error(
        lambda: attention.check_feed_forward_equivalence(widths=[100_000, 100_000]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "widths",
        "parameters",
    )


def raw_stub(address):
    channel = grpc.insecure_channel(address)
    return channel, attention_pb2_grpc.AttentionServiceStub(channel)


def test_tensor_bytes_must_match_shape(attention_server):
    channel, stub = raw_stub(attention_server)
    bad = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT64, shape=[3, 4], data=b"\0" * 95)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.CheckPermutationEquivariance(
            pb.CheckPermutationEquivarianceRequest(attention=pb.SelfAttention(x=bad)), timeout=10
        )
    error = NnprobeError.from_rpc_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0].field == "attention.x"
    assert "95 bytes but shape [3, 4] of float64 needs 96" in error.message


def test_unknown_enum_values_and_dtypes_are_rejected(attention_server):
    channel, stub = raw_stub(attention_server)
    cases = [
        (pb.SelfAttention(sequence_length=3, model_dim=2, softmax=99), "attention.softmax"),
        (pb.SelfAttention(sequence_length=3, model_dim=2, dtype=common_pb2.DTYPE_INT32), "attention.dtype"),
    ]
    with channel:
        for spec, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                stub.CheckPermutationEquivariance(
                    pb.CheckPermutationEquivarianceRequest(attention=spec), timeout=10
                )
            error = NnprobeError.from_rpc_error(info.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.field_violations[0].field == field
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckPoolingInvariance(
                pb.CheckPoolingInvarianceRequest(
                    attention=pb.SelfAttention(sequence_length=3, model_dim=2), pooling=42
                ),
                timeout=10,
            )
        assert NnprobeError.from_rpc_error(info.value).field_violations[0].field == "pooling"


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"widths": [8]}, "widths", "at least two"),
        ({"widths": [8, 0, 4]}, "widths[1]", "must be positive"),
        ({"x": np.zeros((2, 3, 5), np.float32), "widths": [4, 4]}, "widths", "last dimension 5"),
        ({"x": np.zeros((2, 3), np.float32)}, "x", "must have 3 dimensions"),
        ({"x": np.full((1, 2, 4), np.nan, np.float32)}, "x", "NaN or Inf"),
        ({"timing_repeats": -1}, "timing_repeats", "must be positive"),
        ({"batch_size": -3}, "batch_size", "must be positive"),
    ],
)
def test_invalid_feed_forward_requests(attention, kwargs, field, fragment):
    expect_error(
        lambda: attention.check_feed_forward_equivalence(**kwargs),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
        fragment,
    )


def test_oversized_message_is_refused_before_decoding(server_factory):
    from nnprobe import AttentionClient

    _, address = server_factory("attention", max_message_bytes=4096)
    with AttentionClient(address) as client, pytest.raises(NnprobeError) as info:
        client.check_permutation_equivariance(np.zeros((64, 64)))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unexpected_errors_are_internal_without_details(attention, monkeypatch, caplog):
    from nnprobe_services.attention import checks

    def explode(*args, **kwargs):
        raise RuntimeError("secret server detail")

    monkeypatch.setattr(checks, "check_feed_forward", explode)
    with pytest.raises(NnprobeError) as info:
        attention.check_feed_forward_equivalence()
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert info.value.message == "internal error"
    assert "secret" not in str(info.value)
    assert "secret server detail" in caplog.text  # logged on the server, with its traceback


def test_deadline_stops_the_server_work(attention_server, caplog, monkeypatch):
    """A check that would run for minutes stops soon after the client's deadline."""
    import logging
    import time

    from nnprobe import AttentionClient
    from nnprobe_services.attention import checks

    monkeypatch.setattr(checks, "CHUNK_ELEMENTS", 50_000)
    caplog.set_level(logging.INFO, logger="nnprobe.requests")
    with AttentionClient(attention_server) as client, pytest.raises(NnprobeError) as info:
        client.check_permutation_equivariance(
            sequence_length=64, model_dim=64, strategy="sampled", num_samples=1_000_000, timeout=0.5
        )
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    line = "CheckPermutationEquivariance DEADLINE_EXCEEDED"
    while line not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in caplog.text


def test_health_and_reflection(attention_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from nnprobe import AttentionClient

    with AttentionClient(attention_server) as client:
        assert client.health() == "SERVING"
    with grpc.insecure_channel(attention_server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "nnprobe.attention.v1.AttentionService" in names and "grpc.health.v1.Health" in names


def test_unreachable_server_is_unavailable():
    from nnprobe import AttentionClient

    with AttentionClient("127.0.0.1:1", timeout=2) as client, pytest.raises(NnprobeError) as info:
        client.check_feed_forward_equivalence()
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
