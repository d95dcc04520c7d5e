"""The checkpoint survives JSON unchanged, and the summary's counts and intervals are those of its records
(counted here again, the interval from the closed form written out in the test)."""

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.robustness.diagnostics import RobustnessWarning
from nnprobe_services.vision.robustness.results import EvaluationState, ImageRecord, summarise

STATUSES = st.sampled_from(["misclassified", "robust", "broken"])


@st.composite
def states(draw):
    count_eps = draw(st.integers(1, 3))
    records = []
    for _ in range(draw(st.integers(1, 6))):
        status = draw(st.lists(STATUSES, min_size=count_eps, max_size=count_eps))
        pixels = [
            np.frombuffer(draw(st.binary(min_size=12, max_size=12)), dtype=np.uint8).reshape(3, 2, 2).copy()
            if s == "broken"
            else None
            for s in status
        ]
        label = draw(st.integers(0, 4))
        prediction = label if status[0] != "misclassified" else (label + 1) % 5
        records.append(
            ImageRecord(
                label, prediction, list(status), ["square" if s == "broken" else None for s in status],
                draw(st.lists(st.integers(0, 5000), min_size=count_eps, max_size=count_eps)), pixels,
                draw(st.none() | st.floats(0.001, 1.0)),
            )
        )  # fmt: skip
    epsilons = sorted(
        draw(st.lists(st.floats(0.001, 1.0), min_size=count_eps, max_size=count_eps, unique=True))
    )
    warnings = [RobustnessWarning("randomised", "changed", (0,))] if draw(st.booleans()) else []
    return EvaluationState(epsilons, draw(st.sampled_from(["linf", "l2"])), ["pgd"], 3, 4, records, warnings)


@settings(max_examples=100, deadline=None)
@given(state=states())
def test_checkpoint_round_trips_through_json(state):
    again = EvaluationState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert (again.epsilons, again.norm, again.attacks, again.seed, again.batch_size, again.warnings) == (
        state.epsilons, state.norm, state.attacks, state.seed, state.batch_size, state.warnings,
    )  # fmt: skip
    for a, b in zip(again.records, state.records, strict=True):
        assert (a.label, a.prediction, a.status, a.broken_by, a.queries, a.smallest_epsilon) == (
            b.label, b.prediction, b.status, b.broken_by, b.queries, b.smallest_epsilon,
        )  # fmt: skip
        for x, y in zip(a.adversarial, b.adversarial, strict=True):
            assert (x is None and y is None) or (x.dtype == np.uint8 and np.array_equal(x, y))


@settings(max_examples=100, deadline=None)
@given(state=states())
def test_summary_counts_its_records(state):
    result = summarise(state)
    n = len(state.records)
    z = 1.959963984540054
    for k, summary in enumerate(result.per_epsilon):
        robust = sum(r.status[k] == "robust" for r in state.records)
        p = robust / n
        centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert (summary.robust, summary.total) == (robust, n)
        assert math.isclose(summary.low, max(0.0, (centre - spread) / (1 + z * z / n)), abs_tol=1e-12)
        assert math.isclose(summary.high, min(1.0, (centre + spread) / (1 + z * z / n)), abs_tol=1e-12)
    assert result.clean_correct == sum(r.status[0] != "misclassified" for r in state.records)
    assert "RobustnessResult(clean" in repr(result) and len(repr(result)) < 400
