"""The step-by-step cells against torch.nn.RNN/LSTM/GRU, weight drawing and spectral rescaling."""

import pytest
import torch
from nnprobe_services.errors import Cancelled
from nnprobe_services.sequence.recurrent import rnn

MODULES = {
    "rnn_tanh": lambda d, h, bias: torch.nn.RNN(d, h, nonlinearity="tanh", bias=bias),
    "rnn_relu": lambda d, h, bias: torch.nn.RNN(d, h, nonlinearity="relu", bias=bias),
    "lstm": lambda d, h, bias: torch.nn.LSTM(d, h, bias=bias),
    "gru": lambda d, h, bias: torch.nn.GRU(d, h, bias=bias),
}


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("bias", [True, False])
def test_cells_equal_torch_nn(kind, bias):
    torch.manual_seed(0)
    module = MODULES[kind](5, 7, bias).double()
    cell = rnn.Cell(kind, {k: v.detach() for k, v in module.state_dict().items()})
    x = torch.randn(11, 3, 5, dtype=torch.float64)
    h0, c0 = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    trajectory = rnn.run(cell, x, cell.initial_state(h0, c0 if kind == "lstm" else None, 3))
    if kind == "lstm":
        expected, (h_n, c_n) = module(x, (h0[None], c0[None]))
        torch.testing.assert_close(trajectory.cell[-1], c_n[0], rtol=0, atol=1e-15)
    else:
        expected, h_n = module(x, h0[None])
    torch.testing.assert_close(trajectory.hidden, expected.detach(), rtol=0, atol=1e-15)
    torch.testing.assert_close(trajectory.hidden[-1], h_n[0].detach(), rtol=0, atol=1e-15)


def test_linear_cell_is_the_affine_recurrence():
    weights = rnn.init_weights("rnn_linear", 3, 4, seed=1, output_size=2)
    cell = rnn.Cell("rnn_linear", weights)
    x = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    trajectory = rnn.run(cell, x, cell.initial_state(None, None, 2))
    h = torch.zeros(2, 4, dtype=torch.float64)
    w = weights
    for t in range(6):
        h = x[t] @ w["weight_ih_l0"].T + w["bias_ih_l0"] + h @ w["weight_hh_l0"].T + w["bias_hh_l0"]
        torch.testing.assert_close(trajectory.hidden[t], h, rtol=0, atol=1e-14)
        y = h @ w["output.weight"].T + w["output.bias"]
        torch.testing.assert_close(trajectory.outputs[t], y, rtol=0, atol=1e-14)


def test_step_changes_and_settling_under_a_constant_input():
    """Same input at every step: the outputs differ while the state moves, then settle at a fixed point."""
    weights = rnn.init_weights("rnn_tanh", 3, 3, seed=0)
    cell = rnn.Cell("rnn_tanh", weights)
    x = torch.ones(60, 1, 3, dtype=torch.float64)
    trajectory = rnn.run(cell, x, cell.initial_state(None, None, 1), settle_tolerance=1e-9)
    h = trajectory.hidden[:, 0]
    changes = torch.linalg.vector_norm(
        torch.diff(torch.cat([torch.zeros(1, 3, dtype=h.dtype), h]), dim=0), dim=1
    )
    torch.testing.assert_close(trajectory.step_changes[:, 0], changes, rtol=0, atol=0)
    assert changes[0] > 0.1 and changes[1] > 1e-3  # the output is different step to step at first
    settled = trajectory.settled_at[0]
    assert 1 < settled <= 60
    assert changes[settled - 2] > 1e-9 and (changes[settled - 1 :] <= 1e-9).all()
    fixed = h[-1]
    step = torch.tanh(
        weights["weight_ih_l0"] @ x[0, 0]
        + weights["bias_ih_l0"]
        + weights["weight_hh_l0"] @ fixed
        + weights["bias_hh_l0"]
    )
    torch.testing.assert_close(step, fixed, rtol=0, atol=1e-9)


def test_settled_steps():
    changes = torch.tensor([[1.0, 1.0], [0.5, 1e-9], [1e-8, 1e-9], [0.0, 2.0]])
    assert rnn.settled_steps(changes, 1e-7) == [3, -1]


def test_init_is_deterministic_and_follows_the_scheme():
    a = rnn.init_weights("lstm", 3, 5, seed=4, forget_bias=1.0)
    b = rnn.init_weights("lstm", 3, 5, seed=4, forget_bias=1.0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = rnn.init_weights("lstm", 3, 5, seed=4)
    torch.testing.assert_close(a["bias_ih_l0"][5:10], plain["bias_ih_l0"][5:10] + 1.0, rtol=0, atol=0)
    assert a["weight_hh_l0"].abs().max() <= 5**-0.5
    orthogonal = rnn.init_weights("gru", 3, 6, seed=0, scheme="orthogonal", scale=2.0)
    for block in rnn.gate_blocks(orthogonal["weight_hh_l0"]):
        torch.testing.assert_close(block @ block.T, 4 * torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-13)
    assert not any(orthogonal[name].any() for name in rnn.CELL_BIASES)


def test_rescale_spectral_radius():
    w = rnn.init_weights("lstm", 4, 6, seed=2)["weight_hh_l0"]
    scaled = rnn.rescale_spectral_radius(w, 0.7)
    for block in rnn.gate_blocks(scaled):
        assert abs(torch.linalg.eigvals(block).abs().max().item() - 0.7) < 1e-12
    assert abs(rnn.spectral_radius(scaled) - 0.7) < 1e-12
    with pytest.raises(ValueError, match="spectral radius 0"):
        rnn.rescale_spectral_radius(torch.zeros(3, 3, dtype=torch.float64), 1.0)


def test_should_stop_raises():
    cell = rnn.Cell("gru", rnn.init_weights("gru", 2, 2, seed=0))
    with pytest.raises(Cancelled):
        rnn.run(
            cell,
            torch.zeros(5, 1, 2, dtype=torch.float64),
            cell.initial_state(None, None, 1),
            should_stop=lambda: True,
        )
