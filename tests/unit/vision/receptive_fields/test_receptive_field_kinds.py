"""Properties over whole kinds of networks: the analytic box of a unit equals the input-gradient support of
an independent real module (torch.autograd on nn.Conv2d/F.pad/F.interpolate with positive weights), for
every padding mode, upsampling, misaligned merges and squeeze-and-excitation gates (held constant)."""

import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.arithmetic import Window, output_size
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from torch import nn

HALF = Fraction(1, 2)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def positive(module: nn.Module) -> nn.Module:
    """Every weight 1, every bias 0: a linear network in which nothing cancels."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.fill_(1.0 if name.endswith("weight") else 0.0)
    return module


def support(module: nn.Module, size: int, unit: tuple[int, int], layer_out=lambda y: y) -> tuple[int, ...]:
    """The box (first row, last row, first column, last column) of non-zero input gradient of one unit."""
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = layer_out(copy.deepcopy(module).double()(x))
    (grad,) = torch.autograd.grad(y[0, :, unit[1], unit[0]].sum(), x)
    mask = grad[0, 0] != 0
    rows = torch.nonzero(mask.any(1)).flatten().tolist()
    cols = torch.nonzero(mask.any(0)).flatten().tolist()
    return (rows[0], rows[-1], cols[0], cols[-1]) if rows else (0, -1, 0, -1)


def analytic(module: nn.Module, size: int, unit: tuple[int, int], strict=False):
    graph = rf_graph.analyse_module(module, "net", (size, size), HALF, None, channels=1, strict=strict)
    u = unit_field(graph.fields, graph.end_point, *unit, (size, size), HALF)
    return graph, (*u.rows, *u.columns)


class PaddedChain(nn.Module):
    def __init__(self, mode: str, pad: int, k1: int, s1: int, up: int, k2: int):
        super().__init__()
        self.mode, self.pad, self.up = mode, pad, up
        self.conv1 = nn.Conv2d(1, 2, k1, stride=s1)
        self.conv2 = nn.Conv2d(2, 1, k2, padding=k2 // 2)

    def forward(self, x):
        x = self.conv1(F.pad(x, (self.pad, self.pad + 1, self.pad, self.pad), mode=self.mode))
        return self.conv2(F.interpolate(x, scale_factor=self.up, mode="nearest"))


@SETTINGS
@given(
    mode=st.sampled_from(["constant", "reflect", "replicate"]),
    pad=st.integers(0, 3),
    k1=st.integers(1, 4),
    s1=st.integers(1, 3),
    up=st.integers(1, 3),
    k2=st.integers(1, 5),
    size=st.integers(8, 14),
    data=st.data(),
)
def test_padding_modes_and_upsampling_give_the_gradient_box(mode, pad, k1, s1, up, k2, size, data):
    module = positive(PaddedChain(mode, pad, k1, s1, up, k2))
    assume(output_size(size + 2 * pad, Window(k1, s1)) >= 2)
    assume(s1 % up == 0 or up == 1)  # the jump stays a whole number of pixels
    out_h = output_size(size + 2 * pad, Window(k1, s1)) * up
    out_w = output_size(size + 2 * pad + 1, Window(k1, s1)) * up  # one more column of padding
    unit = (data.draw(st.integers(0, out_w - 1)), data.draw(st.integers(0, out_h - 1)))
    graph, box = analytic(module, size, unit)
    assert box == support(module, size, unit)
    assert graph.fields[-1].height.jump == s1 // up


def gentle(module: nn.Module) -> nn.Module:
    """A small gate weight: with weight 1 the gate's sigmoid saturates to exactly 1.0 in float64 (its input
    reaches 50), its gradient underflows to 0 and the gradient support misses the gate's context."""
    with torch.no_grad():
        module.se.weight.fill_(1 / 256)
    return module


class Branches(nn.Module):
    """a(x) + b(x) with different geometries, optionally gated by squeeze-and-excitation."""

    def __init__(self, ka, pa, kb, pb, stride, pool_b, gate, detach=False):
        super().__init__()
        self.a = nn.Conv2d(1, 1, ka, stride=stride, padding=pa)
        self.b = nn.AvgPool2d(kb, stride, pb) if pool_b else nn.Conv2d(1, 1, kb, stride=stride, padding=pb)
        self.gate, self.detach = gate, detach
        self.se = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        y = self.a(x) + self.b(x)
        if self.gate:
            g = torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
            y = y * (g.detach() if self.detach else g)
        return y


@SETTINGS
@given(
    ka=st.integers(1, 5),
    kb=st.integers(1, 5),
    stride=st.integers(1, 3),
    pool_b=st.booleans(),
    gate=st.booleans(),
    size=st.integers(6, 14),
    data=st.data(),
)
def test_merges_give_the_union_and_gates_the_local_field(ka, kb, stride, pool_b, gate, size, data):
    pa = data.draw(st.integers(0, ka // 2))  # PyTorch's pooling bound; the same for both branches
    n = output_size(size, Window(ka, stride, 1, pa, pa))
    same_size = [p for p in range(kb // 2 + 1) if output_size(size, Window(kb, stride, 1, p, p)) == n]
    assume(n >= 1 and same_size)
    pb = data.draw(st.sampled_from(same_size))
    unit = (data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1)))
    module = gentle(positive(Branches(ka, pa, kb, pb, stride, pool_b, gate)))
    graph, box = analytic(module, size, unit)
    # The gate held constant (the local field) in an independent copy of the module.
    local = gentle(positive(Branches(ka, pa, kb, pb, stride, pool_b, gate, detach=True)))
    assert box == support(local, size, unit)
    aligned = Fraction(ka - 1, 2) - pa == Fraction(kb - 1, 2) - pb
    assert (graph.misaligned == []) == aligned
    # The mean of a 1 x 1 map is its one unit: no context beyond the unit's own field.
    context = gate and n > 1
    assert (graph.global_context != "") == context
    if gate:  # with the gate live, a unit depends on every pixel that any unit of the map depends on
        everything = support(module, size, (0, 0), layer_out=lambda y: y.sum((2, 3), keepdim=True))
        assert support(module, size, unit) == everything
    if not aligned or context:
        with pytest.raises(rf_graph.Unsupported):
            analytic(module, size, unit, strict=True)
