"""plan_model_check: every malformed field is refused naming it; defaults as documented."""

import math

import numpy as np
import pytest
from nnprobe_services.attention.certificates.plans import ModelCheckSpec, plan_model_check
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ResourceExhausted


def plan(configured=(2, 4, 8), *, limit=10_000, perms=1_000_000, **fields):
    spec = ModelCheckSpec(model="enc", action=fields.pop("action", "equivariance"), **fields)
    return plan_model_check(spec, configured, max_tensor_elements=limit, max_permutations=perms)


def test_defaults():
    p = plan()
    assert (p.shape, p.exhaustive, p.samples, p.threshold, p.tolerance) == ((2, 4, 8), True, 0, 10.0, 1e-9)
    sampled = plan((1, 7, 3))
    assert not sampled.exhaustive and sampled.samples == 100
    assert plan((1, 8, 3), strategy="exhaustive").exhaustive
    assert plan(None, x=np.zeros((3, 5, 2), np.float32)).shape == (3, 5, 2)


@pytest.mark.parametrize(
    ("configured", "fields", "error", "field"),
    [
        (None, {}, FailedPrecondition, "x"),
        ((2, 4, 8), {"x": np.zeros((2, 5, 8))}, InvalidArgument, "x"),
        (None, {"x": np.zeros((2, 5), np.float64)}, InvalidArgument, "x"),
        (None, {"x": np.zeros((2, 5, 3), np.int64)}, InvalidArgument, "x"),
        (None, {"x": np.full((2, 5, 3), np.nan)}, InvalidArgument, "x"),
        ((2, 4, 8), {"model_version": -1}, InvalidArgument, "model_version"),
        ((2, 4, 8), {"threshold": 0.5}, InvalidArgument, "noise_ratio_threshold"),
        ((2, 4, 8), {"threshold": math.inf}, InvalidArgument, "noise_ratio_threshold"),
        ((2, 4, 8), {"tolerance": -1.0}, InvalidArgument, "permutations.tolerance"),
        ((2, 4, 8), {"strategy": "some"}, InvalidArgument, "permutations.strategy"),
        ((1, 9, 2), {"strategy": "exhaustive"}, InvalidArgument, "permutations.strategy"),
        ((1, 9, 2), {"num_samples": -3}, InvalidArgument, "permutations.num_samples"),
        ((1, 9, 2), {"num_samples": 2_000_000}, ResourceExhausted, "permutations.num_samples"),
        ((100, 100, 100), {}, ResourceExhausted, "x"),
    ],
)
def test_refusals_name_the_field(configured, fields, error, field):
    with pytest.raises(error) as raised:
        plan(configured, **fields)
    assert raised.value.field == field


def test_exhaustive_needs_t_factorial_within_the_permutation_limit():
    with pytest.raises(InvalidArgument) as raised:
        plan((1, 6, 2), perms=100)  # 6! = 720
    assert raised.value.field == "permutations.strategy" and "720" in raised.value.message


def test_a_model_of_token_ids_takes_integer_ids_within_its_vocabulary():
    def ids_plan(x=None, configured=(2, 4)):
        spec = ModelCheckSpec(model="enc", action="equivariance", x=x)
        return plan_model_check(
            spec, configured, max_tensor_elements=100, max_permutations=1000, vocabulary=10
        )

    assert ids_plan().shape == (2, 4)
    assert ids_plan(np.arange(8).reshape(2, 4)).shape == (2, 4)
    for bad, words in [
        (np.arange(8.0).reshape(2, 4), "token ids"),
        (np.full((2, 4), 10), "vocabulary is [0, 10)"),
        (np.full((2, 4), -1), "vocabulary is [0, 10)"),
        (np.zeros((2, 4, 3), np.int64), "has shape [2, 4, 3]"),
    ]:
        with pytest.raises(InvalidArgument) as raised:
            ids_plan(bad)
        assert raised.value.field == "x" and words in raised.value.message
