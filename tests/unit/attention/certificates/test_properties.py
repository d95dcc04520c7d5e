"""Property: a stack of permutation-equivariant pieces holds, and a position-dependent term added anywhere in
it is localised to the node that adds it."""

import copy
import operator

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.attention.certificates import certify, noise
from torch import nn

PIECES = ("linear", "tanh", "norm", "attention", "deep_sets")


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(D)) V, written out."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.scale = d**0.5

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / self.scale
        return torch.softmax(scores, dim=-1) @ self.v(x)


class DeepSets(nn.Module):
    """x + Linear(mean over tokens) (Zaheer et al., 2017): equivariant."""

    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, d)

    def forward(self, x):
        return x + self.linear(x.mean(dim=1, keepdim=True))


def piece(name, d):
    return {
        "linear": lambda: nn.Linear(d, d),
        "tanh": nn.Tanh,
        "norm": lambda: nn.LayerNorm(d),
        "attention": lambda: Attention(d),
        "deep_sets": lambda: DeepSets(d),
    }[name]()


class Stack(nn.Module):
    def __init__(self, names, t, d, position_at):
        super().__init__()
        self.pieces = nn.ModuleList(piece(n, d) for n in names)
        self.position_at = position_at
        self.positions = nn.Parameter(torch.randn(1, t, d)) if position_at is not None else None

    def forward(self, x):
        for i, layer in enumerate(self.pieces):
            if i == self.position_at:
                x = x + self.positions
            x = layer(x)
        if self.position_at == len(self.pieces):
            x = x + self.positions
        return x


def adding_node(graph):
    """The node that reads the positions parameter (found from the graph's edges)."""
    (parameter,) = (n for n in graph.graph.nodes if n.op == "get_attr" and n.target == "positions")
    (user,) = parameter.users
    assert user.target is operator.add
    return user


@st.composite
def stacks(draw):
    # D >= 3: LayerNorm over D = 2 maps every token to ±(1, -1), so tokens coincide and a position term
    # can vanish from the output (the model is then symmetric on that input).
    t, d = draw(st.integers(2, 5)), draw(st.integers(3, 6))
    names = draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=4))
    position_at = draw(st.none() | st.integers(0, len(names)))
    return t, d, names, position_at, draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(stacks())
def test_equivariant_pieces_hold_and_a_position_term_is_found(case):
    t, d, names, position_at, seed = case
    torch.manual_seed(seed)
    model = Stack(names, t, d, position_at)
    graph64 = torch.fx.symbolic_trace(copy.deepcopy(model).double())
    graph32 = torch.fx.symbolic_trace(copy.deepcopy(model).float())
    x = noise.draw_input((2, t, d), seed)
    perms = certify.permutations(t, exhaustive=False, samples=4, seed=seed)
    result = certify.certify(graph64, graph32, x, perms, action="equivariance", exhaustive=False)
    # Brute force on the eager model, any non-identity permutation: does the output move with the tokens?
    p = [*range(1, t), 0]
    with torch.no_grad():
        out, moved = model.double()(x), model.double()(x[:, p])
    if position_at is None:
        assert torch.allclose(moved, out[:, p], rtol=0, atol=1e-10)
        assert result.holds and result.ratio <= 10
        return
    assert not torch.allclose(moved, out[:, p], rtol=0, atol=1e-6)
    assert not result.holds
    assert result.breaking is not None and result.breaking.name == adding_node(graph64).name
