"""first_breaking_node on small traced graphs, each expected node and deviation worked out in the test."""

import pytest
import torch
from nnprobe_services.attention.certificates.localize import first_breaking_node

B, T, D = 2, 5, 6
PERM = [2, 0, 4, 1, 3]


def x64(seed=0):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class PositionThenRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(1, T, D, dtype=torch.float64))
        self.linear = torch.nn.Linear(D, D, dtype=torch.float64)

    def forward(self, x):
        return torch.relu(self.linear(x) + self.positions) * 2


def test_the_add_is_first_and_what_follows_it_is_not():
    model = PositionThenRelu()
    graph = torch.fx.symbolic_trace(model)
    x = x64()
    node = first_breaking_node(graph, x, PERM, action="equivariance")
    assert node is not None and node.name == "add" and node.op == "call_function"
    pos = model.positions.detach()
    with torch.no_grad():
        h = model.linear(x)
    # (h[:, p] + pos) against (h + pos)[:, p]: a (B, T, D) value must move with the tokens.
    assert node.deviation == pytest.approx(float((pos - pos[:, PERM]).abs().max()), rel=1e-12)
    assert node.tolerance == pytest.approx(1e-9 * max(1.0, float((h + pos).abs().max())), rel=1e-12)


class Transposed(torch.nn.Module):
    """Tokens moved to axis 0, merged with the batch, scores T x T: every node commutes."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(D, D, dtype=torch.float64)

    def forward(self, x):
        y = x.transpose(0, 1)  # (T, B, D)
        flat = self.linear(y.reshape(T * B, D)).reshape(T, B, D).transpose(0, 1)  # via (T*B, D)
        flat2 = x.reshape(B * T, D).relu().reshape(B, T, D)  # via (B*T, D)
        scores = torch.softmax(flat @ flat2.transpose(1, 2), dim=-1)  # (B, T, T)
        return scores @ x + flat.mean(dim=1, keepdim=True)


def test_transposed_merged_and_square_token_axes_commute():
    graph = torch.fx.symbolic_trace(Transposed())
    x = x64(1)
    with torch.no_grad():
        assert torch.allclose(graph(x[:, PERM]), graph(x)[:, PERM], rtol=0, atol=1e-12)
    assert first_breaking_node(graph, x, PERM, action="equivariance") is None


class FirstToken(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)[:, 0] + x.mean(dim=1)


def test_first_token_pooling_breaks_at_the_getitem():
    graph = torch.fx.symbolic_trace(FirstToken())
    x = x64(2)
    node = first_breaking_node(graph, x, PERM, action="invariance")
    assert node is not None and node.name == "getitem" and node.target == "getitem"
    expected = float((torch.tanh(x[:, PERM[0]]) - torch.tanh(x[:, 0])).abs().max())
    assert node.deviation == pytest.approx(expected, rel=1e-12) and node.shape == [B, D]


class Equivariant(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x) * 3


def test_an_equivariant_output_asked_to_be_invariant_breaks_at_the_last_node():
    graph = torch.fx.symbolic_trace(Equivariant())
    x = x64(3)
    node = first_breaking_node(graph, x, PERM, action="invariance")
    assert node is not None and node.name == "mul"
    assert node.deviation == pytest.approx(
        float((3 * torch.tanh(x[:, PERM]) - 3 * torch.tanh(x)).abs().max())
    )
    assert first_breaking_node(graph, x, PERM, action="equivariance") is None


def test_an_unknown_action_is_a_value_error():
    with pytest.raises(ValueError, match="action"):
        first_breaking_node(torch.fx.symbolic_trace(Equivariant()), x64(), PERM, action="rotation")


class CoincidingTokens(torch.nn.Module):
    """Every token of ``y`` equal (a broadcast mean), then a position term: the add is where it breaks."""

    def __init__(self, t, d):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(1, t, d, dtype=torch.float64))

    def forward(self, x):
        y = x.mean(dim=1, keepdim=True).expand_as(x) * 2
        return torch.tanh(y + self.positions)


def test_a_position_term_on_coinciding_tokens_breaks_at_the_add():
    graph = torch.fx.symbolic_trace(CoincidingTokens(T, D))
    node = first_breaking_node(graph, x64(4), PERM, action="equivariance")
    assert node is not None and node.name == "add"  # y[:, p] + pos == y + pos: unchanged, yet not moved


class DeepSetsLayer(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear = torch.nn.Linear(d, d, dtype=torch.float64)

    def forward(self, x):
        pooled = self.linear(x.mean(dim=1, keepdim=True))  # (B, 1, D)
        return x + pooled, x.mean(dim=1)  # (B, T, D) and (B, D)


def test_pooled_values_are_not_taken_for_tokens_when_b_t_and_d_coincide():
    n = 3
    graph = torch.fx.symbolic_trace(DeepSetsLayer(n))
    x = torch.randn(n, n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    perm = [1, 2, 0]
    with torch.no_grad():
        (a, pooled), (a_moved, pooled_moved) = graph(x), graph(x[:, perm])
    assert torch.allclose(a_moved, a[:, perm], rtol=0, atol=1e-12)
    assert torch.allclose(pooled_moved, pooled, rtol=0, atol=1e-12)
    for node in graph.graph.nodes:
        if node.op == "output":
            node.args = (node.args[0][0],)  # hold the (B, T, D) output to equivariance
    graph.recompile()
    assert first_breaking_node(graph, x, perm, action="equivariance") is None
