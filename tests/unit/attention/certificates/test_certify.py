"""certify on exported token models, each verdict and number checked by brute force written in the test."""

import copy

import pytest
import torch
from nnprobe_services.attention.certificates import certify, noise
from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument

from tests.support.token_models import EncoderModel, brute_force_errors, export_bytes, load_exported

B, T, D = 2, 4, 8


def loads(model, shape=(B, T, D)):
    data = export_bytes(model, shape)
    return load_exported(data, torch.float64), load_exported(data, torch.float32)


def run(model, action, t=T, *, exhaustive=True, samples=0, seed=0, **options):
    torch.manual_seed(seed)
    graph64, graph32 = loads(model, (B, t, D))
    x = noise.draw_input((B, t, D), seed)
    perms = certify.permutations(t, exhaustive=exhaustive, samples=samples, seed=seed)
    result = certify.certify(graph64, graph32, x, perms, action=action, exhaustive=exhaustive, **options)
    return result, graph64, graph32, x


def own_noise(graph64, graph32, x):
    with torch.no_grad():
        return float((graph32(x.float()).double() - graph64(x)).abs().max())


def test_encoder_layer_without_positions_holds_over_all_permutations():
    torch.manual_seed(0)
    result, graph64, graph32, x = run(EncoderModel(T, D), "equivariance")
    assert result.holds and result.exhaustive and result.permutations_checked == 24  # 4!
    errors32 = brute_force_errors(graph32, x.float(), invariant=False, t=T)
    errors64 = brute_force_errors(graph64, x, invariant=False, t=T)
    assert result.deviation == max(errors32.values())
    assert result.deviation_float64 == max(errors64.values())
    assert result.noise == own_noise(graph64, graph32, x)
    assert result.ratio == pytest.approx(result.deviation / max(result.noise, result.noise_floor))
    # A symmetric model's permuted float32 output differs by rounding only: the ratio is near 1.
    assert result.ratio <= 3.0
    assert result.deviation_float64 <= 1e-13 * float(abs(result.output).max())
    assert list(errors32)[max(range(24), key=lambda i: list(errors32.values())[i])] == tuple(
        result.worst_permutation
    )
    assert result.breaking is None
    with torch.no_grad():
        for p in errors32:
            assert torch.allclose(graph64(x[:, list(p)]), graph64(x)[:, list(p)], rtol=0, atol=1e-12)


def test_learned_positional_embedding_fails_at_the_add():
    torch.manual_seed(1)
    model = EncoderModel(T, D, positions=True)
    result, graph64, _, x = run(model, "equivariance")
    assert not result.holds and result.ratio > 1e4
    errors64 = brute_force_errors(graph64, x, invariant=False, t=T)
    assert result.deviation_float64 == pytest.approx(max(errors64.values()), rel=1e-12)
    node = result.breaking
    assert node is not None
    assert (node.name, node.op, node.target) == ("add", "call_function", "aten.add.Tensor")
    p = result.worst_permutation
    pos = model.positions.detach().double()
    # (x[:, p] + pos) - (x + pos)[:, p]: a (B, T, D) value must move with the tokens.
    assert node.deviation == pytest.approx(float((pos - pos[:, p]).abs().max()), rel=1e-12)
    assert node.shape == [B, T, D]


def test_mean_pooling_holds_and_first_token_pooling_fails_at_the_select():
    torch.manual_seed(2)
    mean, graph64, graph32, x = run(EncoderModel(T, D, pool="mean"), "invariance")
    assert mean.holds and mean.ratio <= 3.0 and mean.output.shape == (B, D)
    assert mean.deviation == max(brute_force_errors(graph32, x.float(), invariant=True, t=T).values())
    torch.manual_seed(2)
    first, graph64, _, x = run(EncoderModel(T, D, pool="first"), "invariance")
    assert not first.holds
    errors = brute_force_errors(graph64, x, invariant=True, t=T)
    assert first.deviation_float64 == pytest.approx(max(errors.values()), rel=1e-12)
    assert first.breaking is not None
    assert first.breaking.name.startswith("select") and first.breaking.target == "aten.select.int"
    assert first.breaking.deviation == pytest.approx(errors[tuple(first.worst_permutation)], rel=1e-12)


class Float32Inside(torch.nn.Module):
    """Self-attention computed in float32 whatever its parameters' precision (a cast inside the graph)."""

    def __init__(self, d):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(d, 2, batch_first=True)

    def forward(self, x):
        y = x.float()
        w = self.attention.in_proj_weight.float()
        q, k, v = (y @ w.T).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
        return a.to(x.dtype)


def test_a_model_computed_in_float32_holds_on_the_noise_floor():
    torch.manual_seed(3)
    model = Float32Inside(D)
    graph64 = torch.fx.symbolic_trace(model).to(torch.float64)
    graph32 = torch.fx.symbolic_trace(Float32Inside(D)).to(torch.float32)
    graph32.load_state_dict({k: v.float() for k, v in graph64.state_dict().items()})
    x = noise.draw_input((B, T, D), 3)
    perms = certify.permutations(T, exhaustive=True, samples=0, seed=0)
    result = certify.certify(graph64, graph32, x, perms, action="equivariance", exhaustive=True)
    assert result.noise == 0.0  # both loads compute the same float32 numbers
    with torch.no_grad():
        scale = float(graph64(x).abs().max())
    assert result.noise_floor == pytest.approx(2.0**-23 * scale, rel=1e-12)
    assert result.deviation == max(brute_force_errors(graph32, x.float(), invariant=False, t=T).values())
    assert result.holds and result.ratio == pytest.approx(result.deviation / result.noise_floor)
    assert result.ratio <= 4.0  # a few float32 units of the output's scale


def test_sampled_permutations_are_seeded():
    torch.manual_seed(4)
    model = EncoderModel(7, D, positions=True)
    first, *_ = run(model, "equivariance", t=7, exhaustive=False, samples=5, seed=11)
    second, *_ = run(model, "equivariance", t=7, exhaustive=False, samples=5, seed=11)
    assert first.permutations_checked == 1 + 6 + 5  # identity, adjacent transpositions, drawn
    assert not first.exhaustive
    assert first.worst_permutation == second.worst_permutation and first.deviation == second.deviation
    assert sorted(first.worst_permutation) == list(range(7))


def test_equivariance_of_a_pooled_output_is_refused_naming_the_model():
    with pytest.raises(InvalidArgument) as error:
        run(EncoderModel(T, D, pool="mean"), "equivariance")
    assert error.value.field == "model" and "CheckPoolingInvariance" in error.value.message


class Explodes(torch.nn.Module):
    def forward(self, x):
        return x / 0.0


def test_a_non_finite_output_is_a_failed_precondition():
    graph = torch.fx.symbolic_trace(Explodes())
    x = noise.draw_input((B, T, D), 0)
    with pytest.raises(FailedPrecondition) as error:
        certify.certify(
            graph,
            graph,
            x,
            certify.permutations(T, exhaustive=True, samples=0, seed=0),
            action="equivariance",
            exhaustive=True,
        )
    assert error.value.field == "model"


def test_the_stop_signal_ends_the_scan():
    graph = torch.fx.symbolic_trace(torch.nn.Linear(D, D).double())
    x = noise.draw_input((B, T, D), 0)
    with pytest.raises(Cancelled):
        certify.certify(
            graph,
            copy.deepcopy(graph).float(),
            x,
            certify.permutations(T, exhaustive=True, samples=0, seed=0),
            action="equivariance",
            exhaustive=True,
            should_stop=lambda: True,
        )


def test_a_shape_the_export_fixed_is_invalid_on_x():
    data = export_bytes(EncoderModel(T, D), (B, T, D))
    graph64, graph32 = load_exported(data, torch.float64), load_exported(data, torch.float32)
    x = noise.draw_input((B, T + 1, D), 0)  # the export fixed T
    with pytest.raises(InvalidArgument) as error:
        certify.certify(
            graph64,
            graph32,
            x,
            certify.permutations(T + 1, exhaustive=True, samples=0, seed=0),
            action="equivariance",
            exhaustive=True,
        )
    assert error.value.field == "x" and "Guard failed: x.size()[1] == 4" in error.value.message


class NegativeCholesky(torch.nn.Module):
    """Cholesky of -(X Xᵀ + I), never positive definite: the operator itself fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = x @ x.transpose(1, 2) + torch.eye(x.shape[1], dtype=x.dtype)
        return torch.linalg.cholesky(-gram)


def test_a_model_that_fails_on_its_input_is_a_failed_precondition():
    graph = NegativeCholesky()
    x = noise.draw_input((B, T, D), 0)
    with pytest.raises(FailedPrecondition) as error:
        certify.certify(
            graph,
            graph,
            x,
            certify.permutations(T, exhaustive=True, samples=0, seed=0),
            action="equivariance",
            exhaustive=True,
        )
    assert error.value.field == "model" and "the model failed on its input" in error.value.message


def test_all_720_permutations_of_six_tokens():
    torch.manual_seed(7)
    result, _, graph32, x = run(EncoderModel(6, D), "equivariance", t=6)
    assert result.holds and result.exhaustive and result.permutations_checked == 720  # 6!
    errors32 = brute_force_errors(graph32, x.float(), invariant=False, t=6)
    assert len(errors32) == 720 and result.deviation == max(errors32.values())
    assert result.ratio <= 3.0
