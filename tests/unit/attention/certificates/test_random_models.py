"""A model with random outputs (dropout left in training mode, a random operator) cannot be certified: its
randomness would be measured as float32 noise and hide any asymmetry, so certify refuses it on ``model``.
Deterministic models are checked to pass the repeat test in test_certify.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.attention.certificates import certify, noise
from nnprobe_services.errors import FailedPrecondition
from torch import nn

from tests.support.token_models import export_bytes, load_exported

B, T, D = 2, 4, 8


class Jittered(nn.Module):
    """Linear(x) (equivariant) plus ``scale`` * N(0, 1) drawn anew at every call; ``scale`` a buffer."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(D, D)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y + self.scale * torch.randn_like(y)


class TrainingDropout(nn.Module):
    """Linear then dropout(p) kept in training mode when exported."""

    def __init__(self, p: float):
        super().__init__()
        self.linear = nn.Linear(D, D)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.linear(x), self.p, training=True)


@pytest.fixture(scope="module")
def jittered():
    torch.manual_seed(0)
    data = export_bytes(Jittered(), (B, T, D))
    return load_exported(data, torch.float64), load_exported(data, torch.float32)


def certify_all(graph64, graph32, action):
    x = noise.draw_input((B, T, D), 0)
    perms = certify.permutations(T, exhaustive=True, samples=0, seed=0)
    return certify.certify(graph64, graph32, x, perms, action=action, exhaustive=True)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_in_training_mode_is_refused_on_model(p):
    torch.manual_seed(1)
    data = export_bytes(TrainingDropout(p), (B, T, D))
    graph64, graph32 = load_exported(data, torch.float64), load_exported(data, torch.float32)
    with pytest.raises(FailedPrecondition, match=r"not deterministic.*eval mode") as raised:
        certify_all(graph64, graph32, "equivariance")
    assert raised.value.field == "model"


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(min_value=1e-7, max_value=1e3),
    action=st.sampled_from(["equivariance", "invariance"]),
)
def test_any_random_output_above_float64_rounding_is_refused(jittered, scale, action):
    graph64, graph32 = jittered
    for graph in (graph64, graph32):
        graph.scale.fill_(scale)
    # Independent of the service: two float64 evaluations of one input really differ.
    x = noise.draw_input((B, T, D), 0)
    with torch.no_grad():
        assert not torch.equal(graph64(x), graph64(x))
    with pytest.raises(FailedPrecondition, match="not deterministic") as raised:
        certify_all(graph64, graph32, action)
    assert raised.value.field == "model"


def test_zero_randomness_is_deterministic_and_holds(jittered):
    graph64, graph32 = jittered
    for graph in (graph64, graph32):
        graph.scale.fill_(0.0)
    result = certify_all(graph64, graph32, "equivariance")
    assert result.holds and result.ratio <= 3
