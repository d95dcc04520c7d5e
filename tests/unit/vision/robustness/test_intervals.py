"""The Wilson score interval: Newcombe's published values, and the score test's roots found by bisection."""

import math
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.robustness.intervals import wilson_interval

# Newcombe 1998, "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction), 95%.
NEWCOMBE = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE)
def test_wilson_matches_newcombes_table(counts, published):
    low, high = wilson_interval(*counts)
    assert low == pytest.approx(published[0], abs=6e-5)
    assert high == pytest.approx(published[1], abs=6e-5)


def _score_root(successes: int, total: int, z: float, upper: bool) -> float:
    """The p on one side of p̂ where (p̂ - p)² = z² p (1 - p) / n, by bisection (the score test's boundary)."""
    observed = successes / total

    def outside(p: float) -> bool:
        return (observed - p) ** 2 > z * z * p * (1 - p) / total

    low, high = (observed, 1.0) if upper else (0.0, observed)
    if not outside(1.0 if upper else 0.0):
        return 1.0 if upper else 0.0
    for _ in range(200):
        middle = (low + high) / 2
        if outside(middle) == upper:
            high = middle
        else:
            low = middle
    return (low + high) / 2


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5000), share=st.floats(0, 1), confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_endpoints_are_the_score_tests_roots(total, share, confidence):
    successes = round(share * total)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    low, high = wilson_interval(successes, total, confidence)
    assert low == pytest.approx(_score_root(successes, total, z, upper=False), abs=1e-9)
    assert high == pytest.approx(_score_root(successes, total, z, upper=True), abs=1e-9)
    assert low <= successes / total <= high


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 4, confidence=1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert math.isclose(wilson_interval(10, 10)[1], 1.0)
