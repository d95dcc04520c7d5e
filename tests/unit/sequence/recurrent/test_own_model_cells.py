"""A user's own cell: the products of its per-step Jacobians against torch.autograd of the unrolled map
h_k -> h_T on the original module, the fitted rate against numpy.polyfit, and the refusals."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import own_model_cells as cells

from tests.support.recurrent_models import F64, TwoStateCell, direct_cell_norms, exported, fitted_rate

REL = 1e-10


def finish(generator):
    """Run an analysis generator to its end: (yielded values, returned value)."""
    seen = []
    while True:
        try:
            seen.append(next(generator))
        except StopIteration as done:
            return seen, done.value


def make(kind, inputs, hidden, memory=0, seed=0):
    """(eager module, its state sizes, whether its two states travel as a tuple)."""
    torch.manual_seed(seed)
    if kind == "rnn":
        return torch.nn.RNNCell(inputs, hidden).to(F64), (hidden,), False
    if kind == "gru":
        return torch.nn.GRUCell(inputs, hidden).to(F64), (hidden,), False
    if kind == "lstm":
        return torch.nn.LSTMCell(inputs, hidden).to(F64), (hidden, hidden), True
    return TwoStateCell(inputs, hidden, memory).to(F64), (hidden, memory), False


def export_cell(module, inputs, sizes, nested):
    x = torch.zeros(1, inputs, dtype=F64)
    states = [torch.zeros(1, n, dtype=F64) for n in sizes]
    args = (x, tuple(states)) if nested else (x, *states)
    return exported(module, args)


def draw(inputs, sizes, steps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, inputs, generator=g, dtype=F64)
    return x, [torch.randn(n, generator=g, dtype=F64) for n in sizes]


@pytest.mark.parametrize(
    ("kind", "inputs", "hidden", "memory"),
    [("rnn", 3, 4, 0), ("gru", 3, 5, 0), ("lstm", 2, 4, 0), ("custom", 3, 4, 2)],
)
def test_exported_cell_norms_equal_direct_autograd(kind, inputs, hidden, memory):
    module, sizes, nested = make(kind, inputs, hidden, memory, seed=1)
    loaded = export_cell(module, inputs, sizes, nested)
    x, initial = draw(inputs, sizes, 7, seed=2)
    events, run = finish(cells.analyze_cell(cells.OwnCell(loaded, inputs, sizes), x, initial))
    assert [(e.done, e.total) for e in events] == [(k, 7) for k in range(1, 8)]
    want = direct_cell_norms(module, x, initial, nested=nested)
    assert run.distances == [7, 6, 5, 4, 3, 2, 1]
    np.testing.assert_allclose(run.hidden_norms, want["h"], rtol=REL, atol=0)
    np.testing.assert_allclose(run.step_norms, want["step"], rtol=REL, atol=0)
    np.testing.assert_allclose(run.cell_norms, want["c"], rtol=REL, atol=0)
    assert len(run.cell_norms) == (7 if len(sizes) == 2 else 0)
    assert run.growth_rate == pytest.approx(fitted_rate(run.distances, want["h"]), rel=REL)
    if len(sizes) == 2:
        assert run.cell_growth_rate == pytest.approx(fitted_rate(run.distances, want["c"]), rel=REL)
        assert run.cell_regime in ("vanishing", "stable", "exploding")
    expected = "vanishing" if run.growth_rate < 0.99 else "exploding" if run.growth_rate > 1.01 else "stable"
    assert run.regime == expected


def test_a_relu_cell_with_large_recurrent_weights_explodes_as_autograd_says():
    torch.manual_seed(4)
    module = torch.nn.RNNCell(2, 3, nonlinearity="relu").to(F64)
    with torch.no_grad():
        module.weight_hh.copy_(2.0 * torch.eye(3, dtype=F64))
        module.bias_hh.fill_(5.0)  # every unit stays in the linear part of the ReLU
    loaded = export_cell(module, 2, (3,), False)
    x, initial = draw(2, (3,), 12, seed=0)
    _, run = finish(cells.analyze_cell(cells.OwnCell(loaded, 2, (3,)), x, [initial[0].abs()]))
    want = direct_cell_norms(module, x, [initial[0].abs()])
    np.testing.assert_allclose(run.hidden_norms, want["h"], rtol=REL, atol=0)
    np.testing.assert_allclose(run.hidden_norms, [2.0**d for d in run.distances], rtol=1e-12)
    assert run.growth_rate == pytest.approx(2.0, rel=1e-12)
    assert run.regime == "exploding"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["rnn", "gru", "lstm", "custom"]),
    inputs=st.integers(1, 4),
    hidden=st.integers(1, 5),
    memory=st.integers(1, 3),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_property_cell_products_equal_direct_autograd(kind, inputs, hidden, memory, steps, seed):
    """The eager modules (their exported round trip is covered above), over random sizes, T and seeds."""
    module, sizes, nested = make(kind, inputs, hidden, memory, seed=seed)
    x, initial = draw(inputs, sizes, steps, seed=seed + 1)
    _, run = finish(cells.analyze_cell(cells.OwnCell(module, inputs, sizes), x, initial))
    want = direct_cell_norms(module, x, initial, nested=nested)
    np.testing.assert_allclose(run.hidden_norms, want["h"], rtol=REL, atol=1e-300)
    np.testing.assert_allclose(run.cell_norms, want["c"], rtol=REL, atol=1e-300)
    np.testing.assert_allclose(run.step_norms, want["step"], rtol=REL, atol=1e-300)


def test_a_cell_exported_for_a_batch_of_two_is_a_failed_precondition_on_model():
    torch.manual_seed(0)
    module = torch.nn.GRUCell(2, 3).to(F64)
    loaded = exported(module, (torch.zeros(2, 2, dtype=F64), torch.zeros(2, 3, dtype=F64)))
    x, initial = draw(2, (3,), 4, seed=0)
    with pytest.raises(FailedPrecondition) as error:
        finish(cells.analyze_cell(cells.OwnCell(loaded, 2, (3,)), x, initial))
    assert error.value.field == "model" and "(1, I)" in error.value.message


def test_a_cell_whose_output_is_not_its_state_is_refused():
    torch.manual_seed(0)
    module = torch.nn.LSTMCell(2, 3).to(F64)  # declared with one state: it wants two
    x, initial = draw(2, (3,), 3, seed=0)
    with pytest.raises(FailedPrecondition) as error:
        finish(cells.analyze_cell(cells.OwnCell(module, 2, (3,)), x, initial))
    assert error.value.field == "model"
    wrong = torch.nn.Linear(2 + 3, 4).to(F64)  # a state of width 4 for a declared width 3
    with pytest.raises(FailedPrecondition, match=r"expected \(1, 3\)"):
        finish(cells.analyze_cell(cells.OwnCell(_Concat(wrong), 2, (3,)), x, initial))


class _Concat(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, h):
        return self.inner(torch.cat([x, h], dim=1))


def test_limits_name_the_field():
    module = torch.nn.RNNCell(1, 1).to(F64)
    with pytest.raises(ResourceExhausted) as error:
        cells.check_cell(cells.OwnCell(module, 1, (cells.MAX_STATE_WIDTH, 1)), 3, "sequence_length")
    assert error.value.field == "model"
    with pytest.raises(ResourceExhausted) as error:
        cells.check_cell(cells.OwnCell(module, 1, (1,)), cells.MAX_STEPS + 1, "sequence_length")
    assert error.value.field == "sequence_length"
    with pytest.raises(InvalidArgument) as invalid:
        cells.check_cell(cells.OwnCell(module, 1, (1, 1, 1)), 3, "sequence_length")
    assert invalid.value.field == "model"


def test_the_stop_signal_ends_the_products():
    module, sizes, _ = make("lstm", 2, 3)
    x, initial = draw(2, sizes, 20, seed=0)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 25

    with pytest.raises(Cancelled) as error:
        finish(cells.analyze_cell(cells.OwnCell(module, 2, sizes), x, initial, should_stop=stop))
    assert error.value.done is not None and 0 <= error.value.done < 20


def test_a_zero_product_is_vanishing_with_minus_infinite_log():
    module = torch.nn.RNNCell(1, 2).to(F64)
    with torch.no_grad():
        module.weight_hh.zero_()
    x, initial = draw(1, (2,), 3, seed=0)
    _, run = finish(cells.analyze_cell(cells.OwnCell(module, 1, (2,)), x, initial))
    assert run.hidden_norms == [0.0, 0.0, 0.0] and run.log_hidden_norms == [-math.inf] * 3
    assert run.regime == "vanishing"
