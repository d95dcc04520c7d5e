"""Gradient flow: exact Jacobian products against matrix powers and brute force, the bound, regimes."""

import math

import numpy as np
import pytest
import torch
from nnprobe_services.errors import Cancelled
from nnprobe_services.sequence.recurrent import gradients, rnn

F64 = torch.float64


def analyse(
    kind, hidden, steps, rho, *, seed=0, forget_bias=0.0, scheme="pytorch", initial=None, weights=None
):
    weights = weights or rnn.init_weights(
        kind, hidden, hidden, seed=seed, scheme=scheme, forget_bias=forget_bias
    )
    cell = rnn.Cell(kind, weights)
    x = gradients.draw_inputs(steps, cell.input_size, "normal", 1.0, seed, F64)
    start = torch.zeros(cell.state_size, dtype=F64) if initial is None else initial
    events = list(gradients.sweep([cell], [rho], x, [start], forget_bias=forget_bias))
    assert all(isinstance(e, gradients.Progress) for e in events[:-1])
    assert events[-2].done == events[-2].total == steps
    return events[-1].runs[0], cell, x


def test_linear_cell_jacobian_product_is_the_matrix_power():
    run, _, _ = analyse("rnn_linear", 8, 40, 1.5, seed=3)
    w = rnn.rescale_spectral_radius(rnn.init_weights("rnn_linear", 8, 8, seed=3)["weight_hh_l0"], 1.5)
    expected = [
        torch.linalg.matrix_norm(torch.linalg.matrix_power(w, 40 - k), ord=2).item() for k in range(40)
    ]
    for got, want in zip(run.jacobian_norms, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-13)
    assert run.distances == list(range(40, 0, -1))
    assert np.abs(np.linalg.eigvals(w.numpy())).max() == pytest.approx(1.5, rel=1e-12)  # numpy, not rnn
    assert run.spectral_radius == pytest.approx(1.5, rel=1e-13)
    assert run.regime == "exploding" and run.growth_rate > 1.4


def test_linear_cell_input_gradients_have_a_closed_form():
    run, cell, x = analyse("rnn_linear", 5, 12, 0.9, seed=1)
    w = cell.weights
    w_hh = rnn.rescale_spectral_radius(w["weight_hh_l0"], 0.9)
    h = torch.zeros(5, dtype=F64)
    for t in range(12):
        h = w["weight_ih_l0"] @ x[t] + w["bias_ih_l0"] + w_hh @ h + w["bias_hh_l0"]
    assert run.loss == pytest.approx(0.5 * float(h @ h), rel=1e-13)
    for k in range(1, 13):  # dL/dx_k = W_ih^T (W_hh^T)^(T-k) h_T
        grad = w["weight_ih_l0"].T @ torch.linalg.matrix_power(w_hh.T, 12 - k) @ h
        assert run.input_gradient_norms[k - 1] == pytest.approx(
            torch.linalg.vector_norm(grad).item(), rel=1e-12
        )


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_jacobian_norms_equal_brute_force(kind):
    """Against torch.autograd.functional.jacobian of the unrolled map h_k -> h_T."""
    initial = gradients.draw_initial_state(2 * 6 if kind == "lstm" else 6, 5, F64)
    run, cell, x = analyse(
        kind, 6, 9, 0.8, seed=5, initial=initial, forget_bias=1.0 if kind == "lstm" else 0.0
    )
    scaled = rnn.Cell(
        kind, dict(cell.weights, weight_hh_l0=rnn.rescale_spectral_radius(cell.weights["weight_hh_l0"], 0.8))
    )
    states = [initial]
    for t in range(9):
        states.append(scaled.step(states[-1], x[t]))

    def unroll(state, k):
        for t in range(k, 9):
            state = scaled.step(state, x[t])
        return state[:6]

    for k in range(9):
        jac = torch.autograd.functional.jacobian(lambda s, k=k: unroll(s, k), states[k])[:, :6]
        assert run.jacobian_norms[k] == pytest.approx(torch.linalg.matrix_norm(jac, ord=2).item(), rel=1e-11)
    if kind == "lstm":
        assert len(run.state_jacobian_norms) == 9 and run.bounds == [] and run.derivative_bound is None
        assert all(
            s >= h * (1 - 1e-12) for s, h in zip(run.state_jacobian_norms, run.jacobian_norms, strict=True)
        )


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "rnn_linear"])
@pytest.mark.parametrize("rho", [0.5, 1.0, 1.5])
def test_product_norm_never_exceeds_the_bound(kind, rho):
    run, cell, _ = analyse(kind, 16, 30, rho, seed=2)
    assert run.derivative_bound == 1.0
    gamma_w = torch.linalg.matrix_norm(
        rnn.rescale_spectral_radius(cell.weights["weight_hh_l0"], rho), ord=2
    ).item()
    assert run.weight_norm == pytest.approx(gamma_w, rel=1e-13)
    for d, norm, bound in zip(run.distances, run.jacobian_norms, run.bounds, strict=True):
        assert bound == pytest.approx(gamma_w**d, rel=1e-12)
        assert norm <= bound * (1 + 1e-12)


def test_regimes_tanh_vanishes_linear_explodes_orthogonal_is_stable():
    tanh, _, _ = analyse("rnn_tanh", 32, 50, 0.5)
    assert tanh.regime == "vanishing" and tanh.jacobian_norms[0] < 1e-18 and tanh.growth_rate < 0.45
    linear, _, _ = analyse("rnn_linear", 32, 50, 1.5)
    assert linear.regime == "exploding" and linear.jacobian_norms[0] > 1e8 and linear.growth_rate > 1.45
    orthogonal, _, _ = analyse("rnn_linear", 16, 50, 0.0, scheme="orthogonal")
    assert orthogonal.regime == "stable" and orthogonal.growth_rate == pytest.approx(1.0, abs=1e-12)
    assert all(n == pytest.approx(1.0, rel=1e-12) for n in orthogonal.jacobian_norms)


def test_lstm_keeps_gradients_orders_of_magnitude_above_tanh():
    """H = 32, T = 50, rho = 0.5: tanh 5.26e-21; LSTM 2.89e-05 with forget bias 1, 5.88e-11 without."""
    tanh, _, _ = analyse("rnn_tanh", 32, 50, 0.5)
    lstm, _, _ = analyse("lstm", 32, 50, 0.5, forget_bias=1.0)
    plain, _, _ = analyse("lstm", 32, 50, 0.5)
    assert tanh.jacobian_norms[0] == pytest.approx(5.2552e-21, rel=1e-4)
    assert lstm.jacobian_norms[0] == pytest.approx(2.8867e-05, rel=1e-4)
    assert plain.jacobian_norms[0] == pytest.approx(5.8768e-11, rel=1e-4)
    assert lstm.jacobian_norms[0] / tanh.jacobian_norms[0] > 1e15
    assert plain.jacobian_norms[0] / tanh.jacobian_norms[0] > 1e9


def test_norms_beyond_the_float_range_keep_exact_logarithms():
    w = {
        "weight_ih_l0": torch.eye(2, dtype=F64),
        "weight_hh_l0": torch.diag(torch.tensor([3.0, 0.5], dtype=F64)),
    }
    run, _, _ = analyse("rnn_linear", 2, 700, 0.0, weights=w)
    assert run.jacobian_norms[0] == math.inf and run.bounds[0] == math.inf
    assert run.log_jacobian_norms[0] == pytest.approx(700 * math.log(3.0), rel=1e-14)
    assert run.growth_rate == pytest.approx(3.0, rel=1e-12) and run.regime == "exploding"


def test_growth_rate_and_regime_helpers():
    assert gradients.growth_rate(
        [3, 2, 1], [3 * math.log(0.5), 2 * math.log(0.5), math.log(0.5)]
    ) == pytest.approx(0.5)
    assert gradients.growth_rate([1], [math.log(0.25)]) == pytest.approx(0.25)
    assert gradients.growth_rate([2, 1], [-math.inf, -math.inf]) == 0.0
    assert gradients.regime(0.995, [0.0], 0.01) == "stable"
    assert gradients.regime(1.0, [-math.inf], 0.01) == "vanishing"
    assert gradients.regime(1.02, [0.0], 0.01) == "exploding"


def test_inputs_are_deterministic():
    a = gradients.draw_inputs(5, 3, "constant", 2.0, 9, F64)
    assert torch.equal(a, gradients.draw_inputs(5, 3, "constant", 2.0, 9, F64))
    assert torch.equal(a[0], a[4])
    u = gradients.draw_inputs(100, 3, "uniform", 0.5, 1, F64)
    assert u.abs().max() <= 0.5
    assert not gradients.draw_inputs(4, 2, "zero", 1.0, 0, F64).any()


def test_should_stop_raises():
    cell = rnn.Cell("rnn_tanh", rnn.init_weights("rnn_tanh", 3, 3, seed=0))
    x = gradients.draw_inputs(10, 3, "normal", 1.0, 0, F64)
    with pytest.raises(Cancelled):
        list(gradients.sweep([cell], [0.5], x, [torch.zeros(3, dtype=F64)], should_stop=lambda: True))
