"""plan_model_check on the sizes a request asks for: a given x may take any B and T its model's configuration
does not fix, and the sampled permutation table ((T + num_samples) x T) stays within the server's limits or
is refused with RESOURCE_EXHAUSTED naming x or permutations.num_samples."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.attention.certificates import certify
from nnprobe_services.attention.certificates.plans import ModelCheckSpec, plan_model_check
from nnprobe_services.errors import InvalidArgument, ResourceExhausted


def plan(x, configured, fixed, *, limit=1_000_000, perms=1_000_000, **fields):
    spec = ModelCheckSpec(model="enc", action="equivariance", x=x, **fields)
    return plan_model_check(
        spec, configured, max_tensor_elements=limit, max_permutations=perms, fixed_axes=fixed
    )


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6),
    t=st.integers(1, 12),
    d=st.integers(1, 6),
    fixed_b=st.booleans(),
    fixed_t=st.booleans(),
)
def test_a_given_x_must_match_only_the_axes_the_configuration_fixes(b, t, d, fixed_b, fixed_t):
    configured = (2, 5, 4)  # B = 2, T = 5 (declared or the probe's defaults), d_model = 4
    x = np.zeros((b, t, d), np.float32)
    matches = (not fixed_b or b == 2) and (not fixed_t or t == 5) and d == 4
    if matches:
        assert plan(x, configured, (fixed_b, fixed_t, True)).shape == (b, t, d)
    else:
        with pytest.raises(InvalidArgument) as raised:
            plan(x, configured, (fixed_b, fixed_t, True))
        assert raised.value.field == "x"
        expected = f"[{2 if fixed_b else 'B'}, {5 if fixed_t else 'T'}, 4]"
        assert expected in raised.value.message


def test_without_fixed_axes_every_axis_is_fixed():
    with pytest.raises(InvalidArgument, match=r"takes \[2, 5, 4\]"):
        plan(np.zeros((2, 6, 4), np.float32), (2, 5, 4), None)


@settings(max_examples=80, deadline=None)
@given(
    t=st.integers(7, 400),
    samples=st.integers(0, 300),
    limit=st.integers(100, 60_000),
    perms=st.integers(10, 500),
)
def test_sampled_table_within_limits_or_refused(t, samples, limit, perms):
    x = np.zeros((1, t, 1), np.float32)
    count = t + (samples or 100)  # identity + (t - 1) adjacent transpositions + the draws
    fits = count <= perms and count * t <= limit and t <= limit and (samples or 100) <= perms
    try:
        p = plan(x, None, None, limit=limit, perms=perms, strategy="sampled", num_samples=samples)
    except ResourceExhausted as error:
        assert not fits
        too_long = t * t > limit or t > perms
        if t <= limit and (samples or 100) <= perms:
            assert error.field == ("x" if too_long else "permutations.num_samples")
        return
    assert fits
    table = certify.permutations(t, exhaustive=False, samples=p.samples, seed=0)
    assert table.shape == (count, t) and table.numel() <= limit


def test_a_hundred_thousand_tokens_are_refused_on_x_before_any_allocation():
    x = np.zeros((1, 100_000, 8), np.float32)
    with pytest.raises(ResourceExhausted) as raised:
        plan(x, None, None, limit=50_000_000, perms=1_000_000)
    assert raised.value.field == "x" and "T < 7,070" in raised.value.message
