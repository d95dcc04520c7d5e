"""The attention requests as plain values (``plans``): validation naming the request field, and the checks
they run, against closed forms computed here with NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nnprobe_services.attention import workflow as plans
from nnprobe_services.errors import Cancelled, InvalidArgument, ResourceExhausted, StopSignal

LIMITS = plans.Limits(max_tensor_elements=1_000_000, max_permutations=10_000)
CPU = torch.device("cpu")


def test_given_tensors_are_checked_over_every_permutation_and_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    weights = tuple(rng.standard_normal((4, 4)) for _ in range(3))
    spec = plans.AttentionSpec(x=x, weights=weights, scale=2.0)
    plan = plans.plan_permutation_check(spec, plans.PermutationOptions(), LIMITS)
    assert (plan.t, plan.d, plan.heads, plan.exhaustive, plan.tolerance) == (5, 4, 1, True, 1e-9)
    result = plans.run_equivariance(plan, CPU)
    assert result.holds and result.permutations_checked == math.factorial(5)
    q, k, v = (x @ w for w in weights)
    scores = q @ k.T / 2.0
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(result.reference, (e / e.sum(axis=1, keepdims=True)) @ v, atol=1e-12)


def test_pooling_of_drawn_inputs_with_sampled_permutations():
    spec = plans.AttentionSpec(sequence_length=12, model_dim=8, heads=2, seed=1, dtype="float32")
    plan = plans.plan_permutation_check(spec, plans.PermutationOptions(num_samples=20), LIMITS)
    assert not plan.exhaustive and plan.samples == 20 and plan.tolerance == 1e-4
    result = plans.run_pooling_invariance(plan, "sum", CPU)
    # identity + 11 adjacent transpositions + 20 drawn
    assert result.holds and result.permutations_checked == 1 + 11 + 20
    assert result.reference.shape == (8,) and result.reference.dtype == np.float32


@pytest.mark.parametrize(
    ("spec", "options", "error", "field"),
    [
        (
            plans.AttentionSpec(sequence_length=0, model_dim=4),
            {},
            InvalidArgument,
            "attention.sequence_length",
        ),
        (
            plans.AttentionSpec(sequence_length=4, model_dim=6, heads=4),
            {},
            InvalidArgument,
            "attention.heads",
        ),
        (plans.AttentionSpec(x=np.zeros((3, 4), np.int64)), {}, InvalidArgument, "attention.x"),
        (plans.AttentionSpec(x=np.zeros((3, 4)), model_dim=5), {}, InvalidArgument, "attention.model_dim"),
        (
            plans.AttentionSpec(x=np.zeros((3, 4)), weights=(np.eye(4), None, None)),
            {},
            InvalidArgument,
            "attention.w_key",
        ),
        (
            plans.AttentionSpec(sequence_length=4, model_dim=4, softmax="column"),
            {},
            InvalidArgument,
            "attention.softmax",
        ),
        (
            plans.AttentionSpec(sequence_length=4, model_dim=4, dtype="int8"),
            {},
            InvalidArgument,
            "attention.dtype",
        ),
        (
            plans.AttentionSpec(sequence_length=9, model_dim=4),
            {"strategy": "exhaustive"},
            InvalidArgument,
            "permutations.strategy",
        ),
        (
            plans.AttentionSpec(sequence_length=4, model_dim=4),
            {"tolerance": float("nan")},
            InvalidArgument,
            "permutations.tolerance",
        ),
        (
            plans.AttentionSpec(sequence_length=2000, model_dim=600),
            {},
            ResourceExhausted,
            "attention.model_dim",
        ),
        (
            plans.AttentionSpec(sequence_length=12, model_dim=4),
            {"num_samples": 10_001},
            ResourceExhausted,
            "permutations.num_samples",
        ),
        (
            plans.AttentionSpec(sequence_length=1001, model_dim=2),
            {},
            ResourceExhausted,
            "attention.sequence_length",
        ),
    ],
)
def test_permutation_plans_name_the_field_at_fault(spec, options, error, field):
    with pytest.raises(error) as info:
        plans.plan_permutation_check(spec, plans.PermutationOptions(**options), LIMITS)
    assert info.value.field == field


def test_feed_forward_defaults_and_parameters():
    plan = plans.plan_feed_forward(plans.FeedForwardSpec(model_dim=8, timing_repeats=1), LIMITS)
    assert plan.widths == [8, 32, 8] and plan.batch == (4, 16) and plan.tolerance == 1e-6
    result = plans.run_feed_forward(plan, CPU)
    assert result.equivalent and result.output.shape == (4, 16, 8)
    assert result.linear_parameters == result.conv_parameters == 8 * 32 + 32 + 32 * 8 + 8


@pytest.mark.parametrize(
    ("spec", "error", "field"),
    [
        (plans.FeedForwardSpec(widths=(8,)), InvalidArgument, "widths"),
        (plans.FeedForwardSpec(widths=(8, -1)), InvalidArgument, "widths[1]"),
        (plans.FeedForwardSpec(widths=(8, 8), model_dim=4), InvalidArgument, "model_dim"),
        (plans.FeedForwardSpec(x=np.zeros((2, 3, 5), np.float32), widths=(4, 4)), InvalidArgument, "widths"),
        (plans.FeedForwardSpec(activation="tanh"), InvalidArgument, "activation"),
        (plans.FeedForwardSpec(timing_repeats=1001), ResourceExhausted, "timing_repeats"),
        (plans.FeedForwardSpec(widths=(1000, 1000)), ResourceExhausted, "widths"),
        (
            plans.FeedForwardSpec(widths=(8, 8), batch_size=1000, sequence_length=1000),
            ResourceExhausted,
            "batch_size",
        ),
    ],
)
def test_feed_forward_plans_name_the_field_at_fault(spec, error, field):
    with pytest.raises(error) as info:
        plans.plan_feed_forward(spec, LIMITS)
    assert info.value.field == field


def test_a_set_stop_signal_ends_the_timing_repeats():
    stop = StopSignal()
    stop.set("the client cancelled")
    plan = plans.plan_feed_forward(plans.FeedForwardSpec(model_dim=4, timing_repeats=50), LIMITS)
    with pytest.raises(Cancelled, match="stopped after 0 of 50 timing repeats") as info:
        plans.run_feed_forward(plan, CPU, should_stop=stop)
    assert info.value.done == 0
