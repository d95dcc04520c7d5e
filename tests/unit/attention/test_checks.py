"""Core attention checks against closed forms and brute force (no gRPC)."""

import itertools
import math

import numpy as np
import pytest
import torch
from nnprobe_services.attention import checks
from nnprobe_services.errors import Cancelled


def layer_and_input(t=5, d=8, seed=0, dtype=torch.float64, **options):
    x = checks.random_input(t, d, seed, dtype)
    return x, checks.SelfAttention(*checks.random_weights(d, seed, dtype), **options)


def numpy_attention(x, wq, wk, wv, scale, matrix_softmax=False):
    """The textbook formula in NumPy, for comparison."""
    scores = (x @ wq) @ (x @ wk).T / scale
    if matrix_softmax:
        e = np.exp(scores - scores.max())
        weights = e / e.sum()
    else:
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        weights = e / e.sum(axis=1, keepdims=True)
    return weights @ (x @ wv)


@pytest.mark.parametrize("matrix", [False, True])
def test_attention_matches_numpy_formula(matrix):
    x, layer = layer_and_input(softmax="matrix" if matrix else "row", scale=2.0)
    w = [m.numpy() for m in (layer.w_query, layer.w_key, layer.w_value)]
    expected = numpy_attention(x.numpy(), *w, 2.0, matrix)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=0, atol=1e-14)


def test_multi_head_is_concatenation_of_single_heads():
    x, layer = layer_and_input(d=8, heads=2)
    out = layer(x).numpy()
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        wq, wk, wv = (m.numpy()[:, cols] for m in (layer.w_query, layer.w_key, layer.w_value))
        np.testing.assert_allclose(out[:, cols], numpy_attention(x.numpy(), wq, wk, wv, 2.0), atol=1e-14)


def test_default_scale_is_sqrt_head_width():
    assert layer_and_input(d=12, heads=3)[1].effective_scale == 2.0
    assert layer_and_input(d=8)[1].effective_scale == math.sqrt(8)


def test_exhaustive_permutations_are_all_distinct():
    perms = checks.exhaustive_permutations(5)
    assert perms.shape == (120, 5)
    assert {tuple(p) for p in perms.tolist()} == set(itertools.permutations(range(5)))
    with pytest.raises(ValueError, match="T <= 8"):
        checks.exhaustive_permutations(9)


def test_sampled_permutations_include_identity_and_adjacent_transpositions():
    perms = checks.sampled_permutations(6, 10, seed=3)
    assert perms.shape == (6 + 10, 6)
    rows = [tuple(p) for p in perms.tolist()]
    assert rows[0] == (0, 1, 2, 3, 4, 5)
    assert rows[1] == (1, 0, 2, 3, 4, 5) and rows[5] == (0, 1, 2, 3, 5, 4)
    assert all(sorted(r) == list(range(6)) for r in rows)
    assert torch.equal(perms, checks.sampled_permutations(6, 10, seed=3))
    assert not torch.equal(perms, checks.sampled_permutations(6, 10, seed=4))


def run(x, layer, **kwargs):
    return checks.check_equivariance(
        x, layer, checks.exhaustive_permutations(x.shape[0]), tolerance=1e-9, exhaustive=True, **kwargs
    )


def test_equivariance_holds_for_all_120_permutations_to_1e_12():
    x, layer = layer_and_input(t=5, d=8)
    result = run(x, layer)
    assert result.holds and result.permutations_checked == 120
    assert result.max_deviation <= 1e-12


def test_the_notebook_setting_holds_too():
    """Integer X in [0, 10), uniform weights, scale 2, softmax over the whole matrix (scipy without axis)."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(10, size=(5, 5)), dtype=torch.float64)
    w = [torch.tensor(rng.random((5, 5))) for _ in range(3)]
    result = run(x, checks.SelfAttention(*w, scale=2.0, softmax="matrix"))
    assert result.holds and result.max_deviation <= 1e-12


@pytest.mark.parametrize("options", [{"positional": "sinusoidal"}, {"causal": True}])
def test_position_information_breaks_equivariance(options):
    x, layer = layer_and_input(t=5, d=8, **options)
    result = run(x, layer)
    assert not result.holds and result.max_deviation > 1e-3
    assert result.worst_permutation != [0, 1, 2, 3, 4]


def test_deviation_is_computed_per_permutation_exactly():
    """Brute force: one permutation at a time, as the notebook did."""
    x, layer = layer_and_input(t=4, d=4, causal=True)
    result = run(x, layer)
    s_x = layer(x)
    brute = [float((layer(x[list(p)]) - s_x[list(p)]).abs().max()) for p in itertools.permutations(range(4))]
    np.testing.assert_allclose(result.deviations, brute, rtol=0, atol=0)
    assert result.max_deviation == max(brute)


@pytest.mark.parametrize(
    ("pooling", "invariant"), [("mean", True), ("sum", True), ("max", True), ("first_token", False)]
)
def test_pooling_invariance(pooling, invariant):
    x, layer = layer_and_input(t=5, d=8)
    result = checks.check_pooling(
        x, layer, checks.exhaustive_permutations(5), pooling, tolerance=1e-9, exhaustive=True
    )
    assert result.holds is invariant
    if invariant:
        assert result.max_deviation <= 1e-12
    else:
        assert result.max_deviation > 1e-3
    assert result.reference.shape == (8,)


def test_float32_deviation_is_at_float32_precision():
    x, layer = layer_and_input(t=6, d=16, dtype=torch.float32)
    result = checks.check_equivariance(
        x, layer, checks.exhaustive_permutations(6), tolerance=1e-4, exhaustive=True
    )
    assert result.holds and 0 <= result.max_deviation <= 1e-5


def test_should_stop_interrupts_between_chunks(monkeypatch):
    monkeypatch.setattr(checks, "CHUNK_ELEMENTS", 1)
    x, layer = layer_and_input(t=5, d=4)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="after 3 of 120"):
        run(x, layer, should_stop=stop)


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("activation", ["between", "after_every_layer"])
def test_feed_forward_linear_equals_conv1d(dtype, bound, activation):
    x = checks.random_batch(4, 16, 64, seed=0, dtype=dtype)
    result = checks.check_feed_forward(
        [64, 256, 128, 64], x, activation=activation, seed=0, tolerance=bound, repeats=2
    )
    assert result.equivalent and result.max_deviation <= bound
    expected = 64 * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64
    assert result.linear_parameters == result.conv_parameters == expected
    assert result.output.shape == (4, 16, 64)
    if activation == "after_every_layer":
        assert (result.output >= 0).all()
    else:
        assert (result.output < 0).any()


def test_conv_initialisation_follows_pytorch_default_bounds():
    convs = checks.conv_stack([100, 30], seed=1, dtype=torch.float64)
    bound = 1 / math.sqrt(100)
    assert convs[0].weight.abs().max() <= bound and convs[0].weight.abs().max() > 0.9 * bound
    assert torch.equal(convs[0].weight, checks.conv_stack([100, 30], seed=1, dtype=torch.float64)[0].weight)


def test_sinusoidal_encoding_values():
    pe = checks.sinusoidal_encoding(3, 4, dtype=torch.float64)
    expected = [
        [0, 1, 0, 1],
        [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
        [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
    ]
    np.testing.assert_allclose(pe.numpy(), expected, atol=1e-15)
