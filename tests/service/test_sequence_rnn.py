"""The SDK against an in-process SequenceService: RunRecurrent, AnalyzeGradients, CompareTruncation and
every error path."""

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, SequenceClient


@pytest.fixture(scope="module")
def sequence(module_server_factory, tmp_path_factory):
    server, address = module_server_factory(
        "sequence", tmp_path_factory.mktemp("sequence"), max_tensor_elements=2_000_000
    )
    with SequenceClient(address, timeout=120) as client:
        yield client
    server.shutdown(0).wait()


def weights_of(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_run_recurrent_equals_torch_nn(sequence, kind):
    torch.manual_seed(1)
    module = {
        "rnn_tanh": torch.nn.RNN(4, 6),
        "rnn_relu": torch.nn.RNN(4, 6, nonlinearity="relu"),
        "lstm": torch.nn.LSTM(4, 6),
        "gru": torch.nn.GRU(4, 6),
    }[kind]
    x = torch.randn(9, 2, 4)
    h0 = torch.randn(1, 2, 6)
    if kind == "lstm":
        c0 = torch.randn(1, 2, 6)
        expected, (_, c_n) = module(x, (h0, c0))
        result = sequence.run_recurrent(
            x.numpy(),
            cell=kind,
            weights=weights_of(module),
            initial_hidden=h0[0].numpy(),
            initial_cell=c0[0].numpy(),
            dtype="float32",
        )
        np.testing.assert_allclose(result.cell_states[-1], c_n[0].detach().numpy(), rtol=0, atol=1e-6)
    else:
        expected, _ = module(x, h0)
        result = sequence.run_recurrent(
            x.numpy(), cell=kind, weights=weights_of(module), initial_hidden=h0[0].numpy(), dtype="float32"
        )
        assert result.cell_states is None
    assert result.hidden_states.dtype == np.float32 and result.hidden_states.shape == (9, 2, 6)
    np.testing.assert_allclose(result.hidden_states, expected.detach().numpy(), rtol=0, atol=1e-6)


def test_run_recurrent_float64_is_exact_to_rounding(sequence):
    torch.manual_seed(2)
    module = torch.nn.GRU(3, 5).double()
    x = torch.randn(20, 3, 3, dtype=torch.float64)
    result = sequence.run_recurrent(x.numpy(), cell="gru", weights=weights_of(module))
    np.testing.assert_allclose(result.hidden_states, module(x)[0].detach().numpy(), rtol=0, atol=1e-15)


def test_same_input_every_step_gives_different_outputs_until_a_fixed_point(sequence):
    x = np.ones((40, 1, 3))
    result = sequence.run_recurrent(
        x, cell="rnn_tanh", hidden_size=3, seed=0, output_size=3, settle_tolerance=1e-9
    )
    assert result.outputs.shape == (40, 1, 3)
    assert np.abs(result.outputs[1] - result.outputs[0]).max() > 1e-2
    settled = result.settled_at[0]
    assert 2 < settled < 40
    changes = result.step_changes[:, 0]
    assert changes[settled - 2] > 1e-9 and (changes[settled - 1 :] <= 1e-9).all()
    np.testing.assert_allclose(result.outputs[-1], result.outputs[-2], rtol=0, atol=1e-8)
    w = result.weights
    h = result.hidden_states[-1, 0]
    np.testing.assert_allclose(result.outputs[-1, 0], w["output.weight"] @ h + w["output.bias"], atol=1e-14)
    assert sorted(w) == [
        "bias_hh_l0",
        "bias_ih_l0",
        "output.bias",
        "output.weight",
        "weight_hh_l0",
        "weight_ih_l0",
    ]


def test_run_recurrent_same_request_same_bytes(sequence):
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    a = sequence.run_recurrent(x, cell="lstm", hidden_size=4, seed=7, init="orthogonal", forget_bias=1.0)
    b = sequence.run_recurrent(x, cell="lstm", hidden_size=4, seed=7, init="orthogonal", forget_bias=1.0)
    assert a.raw.SerializeToString(deterministic=True) == b.raw.SerializeToString(deterministic=True)


def test_analyze_gradients_sweep_streams_progress(sequence):
    seen = []
    result = sequence.analyze_gradients(
        cells=["rnn_tanh", "rnn_linear"],
        spectral_radii=[0.5, 1.5],
        hidden_size=16,
        sequence_length=30,
        plot=True,
        on_progress=seen.append,
    )
    # 2 cells x 2 radii x 30 Jacobian steps, counted in one unit, the message naming the run.
    assert seen and (seen[-1].done, seen[-1].total) == (120, 120) and all(p.total == 120 for p in seen)
    assert {p.unit for p in seen} == {"jacobian steps"} and seen[-1].message == "rnn_linear rho=1.5"
    assert seen[-1].fraction == 1.0 and seen[-1].detail is None
    assert [(r.cell, r.target_spectral_radius) for r in result.runs] == [
        ("rnn_tanh", 0.5),
        ("rnn_tanh", 1.5),
        ("rnn_linear", 0.5),
        ("rnn_linear", 1.5),
    ]
    tanh = result.runs[0]
    assert tanh.regime == "vanishing" and result.runs[3].regime == "exploding"
    for run in result.runs:
        if run.cell == "rnn_linear":  # Gelfand: |W^n|^(1/n) -> rho(W); here |dh_T/dh_0| = |W^30|_2
            assert run.jacobian_norms[0] ** (1 / 30) == pytest.approx(run.target_spectral_radius, rel=0.1)
        assert (run.jacobian_norms <= run.bounds * (1 + 1e-12)).all()
        assert run.input_gradient_norms.shape == (30,) and list(run.distances) == list(range(30, 0, -1))
    assert result.plot_png.startswith(b"\x89PNG") and result.hidden_size == 16 and result.input_size == 16


def test_analyze_gradients_given_linear_weights_match_the_matrix_power(sequence):
    rng = np.random.default_rng(3)
    w_hh = rng.standard_normal((6, 6)) / 3
    weights = {"weight_ih_l0": rng.standard_normal((6, 2)), "weight_hh_l0": w_hh}
    result = sequence.analyze_gradients(cells=["rnn_linear"], weights=weights, sequence_length=25)
    run = result.runs[0]
    expected = [np.linalg.norm(np.linalg.matrix_power(w_hh, 25 - k), 2) for k in range(25)]
    np.testing.assert_allclose(run.jacobian_norms, expected, rtol=1e-12)
    assert run.target_spectral_radius == 0.0
    assert run.spectral_radius == pytest.approx(np.abs(np.linalg.eigvals(w_hh)).max(), rel=1e-12)
    assert result.input_size == 2 and result.plot_png is None


def test_analyze_gradients_lstm_against_tanh(sequence):
    result = sequence.analyze_gradients(
        cells=["rnn_tanh", "lstm"], spectral_radii=[0.5], hidden_size=32, sequence_length=50, forget_bias=1.0
    )
    tanh, lstm = result.runs
    assert tanh.jacobian_norms[0] == pytest.approx(5.2552e-21, rel=1e-4)
    assert lstm.jacobian_norms[0] == pytest.approx(2.8867e-05, rel=1e-4)
    assert lstm.bounds is None and lstm.derivative_bound is None and lstm.state_jacobian_norms.shape == (50,)


def test_analyze_gradients_is_deterministic(sequence):
    kwargs = dict(
        cells=["gru"],
        spectral_radii=[0.9],
        hidden_size=8,
        sequence_length=10,
        seed=4,
        input_distribution="uniform",
        random_initial_state=True,
        plot=True,
    )
    a, b = sequence.analyze_gradients(**kwargs), sequence.analyze_gradients(**kwargs)
    a.raw.seconds = b.raw.seconds = 0
    assert a.raw.SerializeToString(deterministic=True) == b.raw.SerializeToString(deterministic=True)


def test_compare_truncation(sequence):
    seen = []
    result = sequence.compare_truncation(
        vocab_size=50,
        embed_size=8,
        hidden_size=16,
        batch_size=3,
        chunk_length=4,
        chunk_counts=[1, 2, 4],
        plot=True,
        on_progress=lambda p: seen.append((p.done, p.total, p.unit)),
    )
    assert seen[-1] == (14, 14, "chunks")  # 2 modes x (1 + 2 + 4) chunks
    truncated, full = result.series("truncated"), result.series("full")
    assert len(set(p.saved_bytes for p in truncated)) == 1 and result.truncated_slope_bytes == 0.0
    assert result.full_slope_bytes / truncated[0].saved_bytes == pytest.approx(1.0, rel=0.05)
    assert full[-1].saved_bytes > 3.5 * full[0].saved_bytes
    assert result.device == "cpu" and result.plot_png.startswith(b"\x89PNG")
    assert all(p.peak_device_bytes == 0 for p in result.points)


def check_error(call, code, field):
    with pytest.raises(NnprobeError) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert [v.field for v in caught.value.field_violations] == [field], caught.value
    assert field in str(caught.value)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
X = np.zeros((3, 2, 4))


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"hidden_size": 0}, INVALID, "cell.hidden_size"),
        ({"hidden_size": -3}, INVALID, "cell.hidden_size"),
        ({"hidden_size": 4, "output_size": -1}, INVALID, "cell.output_size"),
        ({"hidden_size": 4, "init_scale": float("nan")}, INVALID, "cell.init_scale"),
        ({"hidden_size": 4, "settle_tolerance": -1.0}, INVALID, "settle_tolerance"),
        ({"hidden_size": 4, "initial_hidden": np.zeros((3, 4))}, INVALID, "initial_hidden"),
        ({"hidden_size": 4, "initial_cell": np.zeros((2, 4))}, INVALID, "initial_cell"),
        ({"hidden_size": 5000}, EXHAUSTED, "cell.hidden_size"),
        ({"weights": {"weight_ih_l0": np.zeros((4, 4))}}, INVALID, "cell.weights[weight_hh_l0]"),
        (
            {
                "weights": {
                    "weight_ih_l0": np.zeros((4, 4)),
                    "weight_hh_l0": np.zeros((4, 4)),
                    "bias_ih_l0": np.zeros(4),
                    "bias_hh_l0": np.zeros(4),
                    "weight_xx": np.zeros(1),
                }
            },
            INVALID,
            "cell.weights",
        ),
        (
            {
                "weights": {
                    "weight_ih_l0": np.zeros((4, 4)),
                    "weight_hh_l0": np.zeros((4, 4)),
                    "bias_ih_l0": np.zeros(4),
                    "bias_hh_l0": np.zeros(4),
                },
                "cell": "lstm",
            },
            INVALID,
            "cell.weights[weight_hh_l0]",
        ),
        (
            {
                "weights": {
                    "weight_ih_l0": np.zeros((4, 3)),
                    "weight_hh_l0": np.zeros((4, 4)),
                    "bias_ih_l0": np.zeros(4),
                    "bias_hh_l0": np.zeros(4),
                }
            },
            INVALID,
            "cell.weights[weight_ih_l0]",
        ),
        (
            {
                "weights": {
                    "weight_ih_l0": np.zeros((4, 4)),
                    "weight_hh_l0": np.full((4, 4), np.nan),
                    "bias_ih_l0": np.zeros(4),
                    "bias_hh_l0": np.zeros(4),
                }
            },
            INVALID,
            "cell.weights[weight_hh_l0]",
        ),
    ],
)
def test_run_recurrent_errors(sequence, kwargs, code, field):
    kwargs = {"cell": "rnn_tanh", **kwargs}
    check_error(lambda: sequence.run_recurrent(X, **kwargs), code, field)


def test_run_recurrent_input_errors(sequence):
    check_error(lambda: sequence.run_recurrent(np.zeros((3, 4)), hidden_size=2), INVALID, "inputs")
    check_error(lambda: sequence.run_recurrent(np.zeros((0, 1, 4)), hidden_size=2), INVALID, "inputs")
    check_error(lambda: sequence.run_recurrent(np.full((2, 1, 2), np.inf), hidden_size=2), INVALID, "inputs")
    check_error(
        lambda: sequence.run_recurrent(np.zeros((2, 1, 2), np.int64), hidden_size=2), INVALID, "inputs"
    )
    check_error(lambda: sequence.run_recurrent(np.zeros((3000, 200, 4)), hidden_size=2), EXHAUSTED, "inputs")


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"spectral_radii": []}, INVALID, "spectral_radii"),
        ({"spectral_radii": [0.5, 0.0]}, INVALID, "spectral_radii[1]"),
        ({"spectral_radii": [-1.0]}, INVALID, "spectral_radii[0]"),
        ({"spectral_radii": [float("inf")]}, INVALID, "spectral_radii[0]"),
        ({"hidden_size": 0}, INVALID, "hidden_size"),
        ({"sequence_length": 0}, INVALID, "sequence_length"),
        ({"sequence_length": -5}, INVALID, "sequence_length"),
        ({"sequence_length": 10_001}, EXHAUSTED, "sequence_length"),
        ({"sequence_length": 9000, "hidden_size": 64}, EXHAUSTED, "sequence_length"),
        ({"input_scale": -1.0}, INVALID, "input_scale"),
        ({"regime_tolerance": float("nan")}, INVALID, "regime_tolerance"),
        ({"spectral_radii": [0.5] * 65}, EXHAUSTED, "spectral_radii"),
        (
            {
                "weights": {"weight_ih_l0": np.zeros((4, 4)), "weight_hh_l0": np.zeros((4, 4))},
                "cells": ["rnn_tanh", "lstm"],
            },
            INVALID,
            "cells",
        ),
        (
            {
                "weights": {"weight_ih_l0": np.zeros((4, 4)), "weight_hh_l0": np.zeros((4, 5))},
                "hidden_size": 0,
            },
            INVALID,
            "weights[weight_hh_l0]",
        ),
        (
            {"weights": {"weight_ih_l0": np.zeros((4, 4)), "weight_hh_l0": np.zeros((4, 4))}},
            INVALID,
            "weights[weight_hh_l0]",
        ),
    ],
)
def test_analyze_gradients_errors(sequence, kwargs, code, field):
    kwargs = {"hidden_size": 4, "sequence_length": 5, "spectral_radii": [0.5], **kwargs}
    check_error(lambda: sequence.analyze_gradients(**kwargs), code, field)


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"chunk_counts": [1, 0]}, INVALID, "chunk_counts[1]"),
        ({"chunk_counts": [-2]}, INVALID, "chunk_counts[0]"),
        ({"chunk_counts": [257]}, EXHAUSTED, "chunk_counts[0]"),
        ({"vocab_size": -1}, INVALID, "vocab_size"),
        ({"batch_size": -1}, INVALID, "batch_size"),
        ({"chunk_length": -1}, INVALID, "chunk_length"),
        ({"hidden_size": 1024, "vocab_size": 10_000}, EXHAUSTED, "hidden_size"),
        ({"chunk_counts": [256], "vocab_size": 5000}, EXHAUSTED, "chunk_counts"),
    ],
)
def test_compare_truncation_errors(sequence, kwargs, code, field):
    kwargs = {
        "vocab_size": 20,
        "embed_size": 4,
        "hidden_size": 4,
        "batch_size": 2,
        "chunk_length": 3,
        **kwargs,
    }
    check_error(lambda: sequence.compare_truncation(**kwargs), code, field)


def test_given_weights_contradicting_hidden_size(sequence):
    weights = {"weight_ih_l0": np.zeros((4, 4)), "weight_hh_l0": np.eye(4)}
    check_error(
        lambda: sequence.analyze_gradients(weights=weights, hidden_size=3, sequence_length=4),
        INVALID,
        "hidden_size",
    )
    weights.update(bias_ih_l0=np.zeros(4), bias_hh_l0=np.zeros(4))
    check_error(
        lambda: sequence.run_recurrent(X, weights=weights, hidden_size=3), INVALID, "cell.hidden_size"
    )


def test_deadline_stops_long_work(sequence):
    with pytest.raises(NnprobeError) as caught:
        sequence.analyze_gradients(
            cells=["lstm"], spectral_radii=[0.5, 0.9, 1.1], hidden_size=32, sequence_length=400, timeout=0.5
        )
    assert caught.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    again = sequence.analyze_gradients(spectral_radii=[0.5], hidden_size=4, sequence_length=3)
    assert again.runs[0].regime == "vanishing"


def test_a_gate_block_without_spectral_radius_cannot_be_rescaled(sequence):
    """Only one LSTM gate block is zero: the largest radius is fine, the block is not."""
    hidden = 3
    lstm = torch.nn.LSTM(2, hidden)
    weights = {k: v.detach().double().numpy().copy() for k, v in lstm.state_dict().items()}
    weights["weight_hh_l0"][:hidden] = 0
    check_error(
        lambda: sequence.analyze_gradients(
            cells=["lstm"], weights=weights, spectral_radii=[1.0], sequence_length=4
        ),
        INVALID,
        "weights[weight_hh_l0]",
    )
    as_given = sequence.analyze_gradients(cells=["lstm"], weights=weights, sequence_length=4)
    assert len(as_given.runs) == 1  # analysed as given, no rescaling needed


def test_decomposition_cost_is_bounded(sequence):
    check_error(
        lambda: sequence.analyze_gradients(
            spectral_radii=[0.9], hidden_size=1025, input_size=1, sequence_length=1
        ),
        EXHAUSTED,
        "hidden_size",
    )


def test_recurrent_reply_larger_than_the_message_limit_is_refused_before_running(server_factory, tmp_path):
    server, address = server_factory("sequence", tmp_path, max_message_bytes=200_000)
    try:
        with SequenceClient(address) as client:
            check_error(
                lambda: client.run_recurrent(np.zeros((100, 50, 1)), hidden_size=10), EXHAUSTED, "inputs"
            )
            ok = client.run_recurrent(np.zeros((10, 5, 1)), hidden_size=10)
            assert ok.hidden_states.shape == (10, 5, 10)
            check_error(
                lambda: client.run_recurrent(np.zeros((10_001, 1, 1)), hidden_size=1), EXHAUSTED, "inputs"
            )
    finally:
        server.shutdown(0).wait()


def test_a_long_call_draws_a_bar_unless_asked_not_to(sequence, capsys):
    seen = []
    sequence.analyze_gradients(
        spectral_radii=[0.9], hidden_size=8, sequence_length=12, on_progress=seen.append
    )
    drawn = capsys.readouterr().err
    # tqdm's own bar on stderr, ending at the run's 12 Jacobian steps; the callback still sees each event.
    assert "gradients" in drawn and "12/12" in drawn and "jacobian steps" in drawn
    assert seen and seen[-1].done == 12
    sequence.analyze_gradients(
        spectral_radii=[0.9], hidden_size=8, sequence_length=12, progress=False, on_progress=seen.append
    )
    assert capsys.readouterr().err == ""
