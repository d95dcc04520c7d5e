"""A robustness job's request is refused exactly when one of its fields is wrong, naming that field: the
ε list against an oracle written here (positive, finite, strictly increasing, at most 1 in L-infinity)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.robustness.requests import EvaluationRequest, checked

EPS = st.one_of(
    st.floats(-0.5, 2.0), st.sampled_from([0.0, math.inf, -math.inf, math.nan, 1 / 255, 4 / 255, 1.0])
)


def _first_fault(eps: list[float], norm: str) -> str | None:
    """The field a correct check names for ``eps``, or None when the list is acceptable."""
    if not eps:
        return "epsilons"
    for i, value in enumerate(eps):
        if not (value > 0 and value < math.inf):
            return f"epsilons[{i}]"
        if i and not value > eps[i - 1]:
            return f"epsilons[{i}]"
    if norm == "linf" and eps[-1] > 1:
        return "epsilons"
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(EPS, max_size=5), st.sampled_from(["linf", "l2"]))
def test_an_epsilon_list_is_refused_exactly_when_the_oracle_refuses_it(eps, norm):
    request = EvaluationRequest("tiny", "data", tuple(eps), norm=norm, attacks=("pgd",))
    fault = _first_fault(eps, norm)
    if fault is None:
        assert checked(request, 1000).epsilons == tuple(eps)
    else:
        with pytest.raises(InvalidArgument) as caught:
            checked(request, 1000)
        assert caught.value.field == fault


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(model=" "), "model"),
        (dict(dataset="../up"), "dataset"),
        (dict(norm="l1"), "norm"),
        (dict(attacks=("pgd", "cw")), "attacks"),
        (dict(max_queries=-1), "max_queries"),
        (dict(max_queries=100_001), "max_queries"),
        (dict(max_queries=2**31 - 1), "max_queries"),
        (dict(steps=1001), "steps"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_each_bad_field_is_named(change, field):
    values = dict(model="tiny", dataset="data", epsilons=(0.01,), attacks=("standard",)) | change
    with pytest.raises(InvalidArgument) as caught:
        checked(EvaluationRequest(**values), 1000)
    assert caught.value.field == field


def test_the_standard_ensemble_resolves_to_its_four_attacks_and_settings_follow_the_request():
    request = checked(EvaluationRequest("tiny", "data", (0.01,), steps=7, max_queries=33), 1000)
    assert request.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    settings_ = request.settings()
    assert (settings_.apgd.steps, settings_.fab.steps, settings_.pgd.steps, settings_.square.queries) == (
        7,
        7,
        7,
        33,
    )
    assert EvaluationRequest.from_dict({**request.to_dict(), "extra": 1}) == request


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 300), norm=st.sampled_from(["linf", "l2"]))
def test_an_epsilon_list_longer_than_64_is_refused_as_too_much_work(count, norm):
    """``count`` valid, increasing ε (k/1000): accepted up to 64, RESOURCE_EXHAUSTED on ``epsilons``
    beyond."""
    eps = tuple(k / 1000 for k in range(1, count + 1))
    request = EvaluationRequest("tiny", "data", eps, norm=norm, attacks=("pgd",))
    if count <= 64:
        assert checked(request, 1000).epsilons == eps
        return
    with pytest.raises(ResourceExhausted) as caught:
        checked(request, 1000)
    assert caught.value.field == "epsilons" and f"{count} ε given; at most 64" in str(caught.value)
