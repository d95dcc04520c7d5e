"""Fields where 0 is a value, not "the default": attention tolerances and scale, the recurrent cells'
init_scale, input_scale, settle and regime tolerances. Unset takes the documented default; an explicit 0
reaches the computation (checked against closed forms computed here) or is refused naming the field."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import NnprobeError
from nnprobe.api.attention.v1 import attention_pb2 as apb
from nnprobe.api.attention.v1 import attention_pb2_grpc
from nnprobe.api.common.v1 import common_pb2 as cpb
from nnprobe.api.sequence.v1 import sequence_pb2 as spb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc

ULP_CASE = np.array([[1.0], [2.0**-53], [2.0**-53], [0.0]])
EXACT_CASE = np.array([[1.0], [2.0], [3.0], [4.0]])
#: Wq = Wk = 0 makes every score 0, so each output row is the plain mean of V = X (1/4 is exact).
NO_SCORES = [np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1))]


def _sums(values: list[float]) -> set[float]:
    """Every float64 result of summing ``values`` in any order and grouping (brute force)."""
    if len(values) == 1:
        return {values[0]}
    results = set()
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            rest = [v for k, v in enumerate(values) if k not in (i, j)]
            results |= _sums([*rest, values[i] + values[j]])
    return results


def test_the_cases_are_what_they_claim():
    """The exact case sums to one float in every order; the other to two floats one ulp apart."""
    assert _sums(list(EXACT_CASE[:, 0] / 4)) == {2.5}
    assert _sums(list(ULP_CASE[:, 0] / 4)) == {0.25, math.nextafter(0.25, 1.0)}


def test_tolerance_zero_holds_for_an_exact_check(attention):
    result = attention.check_permutation_equivariance(EXACT_CASE, weights=NO_SCORES, tolerance=0)
    assert result.tolerance == 0.0 and result.permutations_checked == 24
    assert result.holds and result.max_deviation == 0.0
    np.testing.assert_array_equal(result.output, np.full((4, 1), 2.5))


@pytest.mark.parametrize("check", ["equivariance", "first_token"])
def test_tolerance_zero_fails_one_ulp_that_the_default_accepts(attention, check):
    one_ulp = math.nextafter(0.25, 1.0) - 0.25  # 2^-54: the two sums of ULP_CASE / 4
    if check == "equivariance":
        run = lambda **kw: attention.check_permutation_equivariance(ULP_CASE, weights=NO_SCORES, **kw)  # noqa: E731
    else:
        run = lambda **kw: attention.check_pooling_invariance(  # noqa: E731
            ULP_CASE, weights=NO_SCORES, pooling="first_token", **kw
        )
    exact = run(tolerance=0)
    assert exact.tolerance == 0.0 and not exact.holds and exact.max_deviation == one_ulp
    default = run()
    assert default.tolerance == 1e-9 and default.holds and default.max_deviation == one_ulp


def test_pooling_tolerance_zero_on_an_exact_sum(attention):
    result = attention.check_pooling_invariance(EXACT_CASE, weights=NO_SCORES, pooling="sum", tolerance=0)
    assert result.holds and result.tolerance == 0.0 and result.max_deviation == 0.0
    np.testing.assert_array_equal(result.output, [10.0])


def test_feed_forward_tolerance_zero_is_exact_equality(attention):
    zeros = attention.check_feed_forward_equivalence(
        np.zeros((2, 3, 4)), widths=[4, 4], dtype="float64", tolerance=0
    )  # one layer: both stacks answer their bias exactly
    assert zeros.tolerance == 0.0 and zeros.equivalent and zeros.max_deviation == 0.0
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 16))
    strict = attention.check_feed_forward_equivalence(x, widths=[16, 64, 16], dtype="float64", tolerance=0)
    assert strict.tolerance == 0.0 and strict.equivalent == (strict.max_deviation == 0.0)
    default = attention.check_feed_forward_equivalence(x, widths=[16, 64, 16], dtype="float64")
    assert default.tolerance == 1e-12 and default.max_deviation == strict.max_deviation


def test_scale_is_used_when_set_and_zero_is_refused(attention):
    rng = np.random.default_rng(5)
    x, weights = rng.standard_normal((3, 4)), [rng.standard_normal((4, 4)) for _ in range(3)]

    def reference(scale: float) -> np.ndarray:
        scores = (x @ weights[0]) @ (x @ weights[1]).T / scale
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)) @ (x @ weights[2])

    default = attention.check_permutation_equivariance(x, weights=weights)
    np.testing.assert_allclose(default.output, reference(2.0), atol=1e-12)  # sqrt(D) = 2
    half = attention.check_permutation_equivariance(x, weights=weights, scale=0.5)
    np.testing.assert_allclose(half.output, reference(0.5), atol=1e-12)
    with pytest.raises(NnprobeError) as refused:
        attention.check_permutation_equivariance(x, weights=weights, scale=0)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field_violations[0].field == "attention.scale" and "> 0" in str(refused.value)


def test_init_scale_zero_draws_zero_weights(sequence):
    inputs = np.random.default_rng(0).standard_normal((4, 2, 3))
    zero = sequence.run_recurrent(inputs, cell="rnn_tanh", hidden_size=5, init_scale=0, settle_tolerance=0)
    assert all(not w.any() for w in zero.weights.values())
    assert not zero.hidden_states.any() and zero.settled_at == [1, 1]  # tanh(0 x + 0 h + 0) = 0 exactly
    unset = sequence.run_recurrent(inputs, cell="rnn_tanh", hidden_size=5)
    bound = 1 / math.sqrt(5)  # PyTorch's U(-1/sqrt(H), 1/sqrt(H)) at scale 1
    assert all(0 < np.abs(w).max() <= bound for w in unset.weights.values())


def test_settle_tolerance_zero_waits_for_no_change(sequence):
    """A linear cell h_t = 1e-9 x_t fed 1, 1, 1, 0, 0, 0: changes 1e-9 sqrt(2) at steps 1 and 4, else 0."""
    weights = {
        "weight_ih_l0": 1e-9 * np.eye(2),
        "weight_hh_l0": np.zeros((2, 2)),
        "bias_ih_l0": np.zeros(2),
        "bias_hh_l0": np.zeros(2),
    }
    inputs = np.array([1, 1, 1, 0, 0, 0], dtype=np.float64)[:, None, None] * np.ones((6, 1, 2))
    exact = sequence.run_recurrent(inputs, cell="rnn_linear", weights=weights, settle_tolerance=0)
    expected = np.array([1e-9 * math.sqrt(2), 0, 0, 1e-9 * math.sqrt(2), 0, 0])
    np.testing.assert_allclose(exact.step_changes[:, 0], expected, rtol=1e-12, atol=0)
    assert exact.settle_tolerance == 0.0 and exact.settled_at == [5]
    default = sequence.run_recurrent(inputs, cell="rnn_linear", weights=weights)
    assert default.settle_tolerance == 1e-6 and default.settled_at == [1]


def test_input_scale_zero_feeds_zeros(sequence):
    options = dict(
        cells=["rnn_linear"], spectral_radii=[0.9], hidden_size=3, sequence_length=6, seed=1, init="normal"
    )  # the normal scheme draws zero biases
    zero = sequence.analyze_gradients(input_scale=0, **options)
    assert zero.runs[0].loss == 0.0 and not any(zero.runs[0].input_gradient_norms)  # h_T = 0
    unset = sequence.analyze_gradients(**options)
    assert unset.runs[0].loss > 0


def test_gradient_init_scale_zero_is_refused_naming_it(sequence):
    with pytest.raises(NnprobeError) as refused:
        sequence.analyze_gradients(spectral_radii=[1.0], hidden_size=3, sequence_length=4, init_scale=0)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field_violations[0].field == "init_scale"


@pytest.mark.parametrize(("gain", "regime_at_zero"), [(1.0, "stable"), (1.001, "exploding")])
def test_regime_tolerance_zero_calls_only_a_rate_of_one_stable(sequence, gain, regime_at_zero):
    """W_hh = gain * I in a linear cell: every Jacobian product is gain^(T-k) I, the rate exactly gain."""
    weights = {"weight_ih_l0": np.eye(2), "weight_hh_l0": gain * np.eye(2)}
    exact = sequence.analyze_gradients(
        cells=["rnn_linear"], weights=weights, sequence_length=8, regime_tolerance=0
    )
    run = exact.runs[0]
    np.testing.assert_allclose(run.jacobian_norms, [gain ** (8 - k) for k in range(8)], rtol=1e-12)
    assert exact.regime_tolerance == 0.0 and run.regime == regime_at_zero
    assert abs(run.growth_rate - gain) <= 1e-12
    default = sequence.analyze_gradients(cells=["rnn_linear"], weights=weights, sequence_length=8)
    assert default.regime_tolerance == 0.01 and default.runs[0].regime == "stable"


# -- every such field over set/unset/0/negative/NaN/inf ------------------------------------------------------
#: field -> (how to set it on a small valid request, whether 0 is a value (else refused), the field named).
CASES = {
    "attention.scale": ("equivariance", False),
    "permutations.tolerance": ("equivariance", True),
    "ffn.tolerance": ("ffn", True),
    "cell.init_scale": ("recurrent", True),
    "settle_tolerance": ("recurrent", True),
    "input_scale": ("gradients", True),
    "init_scale": ("gradients", False),
    "regime_tolerance": ("gradients", True),
}
VALUES = [None, 0.0, -0.0, 1e-300, 0.5, 2.0, -1e-300, -1.0, math.inf, -math.inf, math.nan]


def _request(rpc: str, field: str, value: float | None):
    if rpc in ("equivariance", "ffn"):
        if rpc == "ffn":
            request = apb.CheckFeedForwardEquivalenceRequest(widths=[2, 3], batch_size=1, sequence_length=2)
            target, name = request, "tolerance"
        else:
            request = apb.CheckPermutationEquivarianceRequest(
                attention=apb.SelfAttention(sequence_length=3, model_dim=2)
            )
            part, name = field.split(".")
            target = getattr(request, part)
        if value is not None:
            setattr(target, name, value)
        return request
    if rpc == "recurrent":
        request = spb.RunRecurrentRequest(
            cell=spb.RecurrentCell(cell=spb.CELL_TYPE_RNN_TANH, hidden_size=2),
            inputs=cpb.Tensor(dtype=cpb.DTYPE_FLOAT64, shape=[2, 1, 1], data=np.ones(2, "<f8").tobytes()),
        )
    else:
        request = spb.AnalyzeGradientsRequest(hidden_size=2, sequence_length=3, spectral_radii=[1.0])
    target, name = (request.cell, "init_scale") if field == "cell.init_scale" else (request, field)
    if value is not None:
        setattr(target, name, value)
    return request


def _expected(field: str, value: float | None) -> grpc.StatusCode:
    zero_ok = CASES[field][1]
    if value is None or (math.isfinite(value) and (value > 0 or (value == 0 and zero_ok))):
        return grpc.StatusCode.OK
    return grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stubs(attention_server, sequence_server):
    with grpc.insecure_channel(attention_server) as a, grpc.insecure_channel(sequence_server) as s:
        yield attention_pb2_grpc.AttentionServiceStub(a), sequence_pb2_grpc.SequenceServiceStub(s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(CASES)), value=st.sampled_from(VALUES))
def test_every_optional_number_gets_its_documented_status(stubs, field, value):
    attention_stub, sequence_stub = stubs
    rpc = CASES[field][0]
    request = _request(rpc, field, value)
    call = {
        "equivariance": attention_stub.CheckPermutationEquivariance,
        "ffn": attention_stub.CheckFeedForwardEquivalence,
        "recurrent": sequence_stub.RunRecurrent,
        "gradients": lambda r, timeout: list(sequence_stub.AnalyzeGradients(r, timeout=timeout)),
    }[rpc]
    try:
        call(request, timeout=60)
        status, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        status, details = error.code(), error.details()
    assert status == _expected(field, value), (field, value, details)
    if status != grpc.StatusCode.OK:
        assert field.split(".")[-1] in details  # the message names the field
