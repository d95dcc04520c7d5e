"""Transposed convolutions, exactly: the analysis' connected pixels and per-unit boxes against
back-propagation through the real ``nn.ConvTranspose2d`` (weights of ones, float64), over kernel, stride,
padding, output padding, dilation and groups; the phase of a strided transposed convolution in closed form;
the proof through the graph's own operator, and a wrong mapping that the proof catches."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import empirical, field_rules
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.varying import variation
from torch import nn

HALF = Fraction(1, 2)
CPU = torch.device("cpu")


def support(model: nn.Module, size: int, layer: int, x: int, y: int) -> tuple[tuple[int, int], ...]:
    """Rows and columns (first, last) of the input pixels whose gradient reaches unit (x, y) of the output
    of ``model[:layer + 1]`` (weights of ones, no bias, float64)."""
    image = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = model[: layer + 1].double()(image)
    (grad,) = torch.autograd.grad(out[0, :, y, x].sum(), image)
    hit = grad[0, 0] != 0
    rows, columns = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    if rows.numel() == 0:
        return (0, -1), (0, -1)
    return (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))


def ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(0.0 if name.endswith("bias") else 1.0)
    return model.eval()


geometry = st.tuples(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(0, 3), st.integers(0, 2)
)  # kernel, stride, dilation, padding, output padding


@settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(
    height=geometry, width=geometry, groups=st.sampled_from([1, 2]), size=st.integers(3, 7),
    picks=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=3),
)  # fmt: skip
def test_connected_pixels_are_the_gradient_support(height, width, groups, size, picks):
    (kh, sh, dh, ph, oh), (kw, sw, dw, pw, ow) = height, width
    ph, pw = min(ph, dh * (kh - 1)), min(pw, dw * (kw - 1))  # PyTorch needs padding <= d (k - 1)
    oh, ow = oh % max(sh, dh), ow % max(sw, dw)  # and output padding < max(stride, dilation)
    for k, s, d, p, o in ((kh, sh, dh, ph, oh), (kw, sw, dw, pw, ow)):
        assume((size - 1) * s - 2 * p + d * (k - 1) + 1 + o >= 1)
    model = ones(
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ConvTranspose2d(2, 2, (kh, kw), (sh, sw), (ph, pw), (oh, ow), groups, dilation=(dh, dw)),
            nn.Conv2d(2, 1, 3, padding=1),
        )
    )
    graph = rf_graph.analyse_module(model, "t", (size, size), HALF, None, channels=1)
    names = [f.name for f in graph.fields]
    transposed, last = names[-2], names[-1]
    probe, channels = empirical.twin_probe(graph.capture, [transposed, last], CPU)
    for index, name in ((1, transposed), (2, last)):
        layer = graph.fields[names.index(name)]
        units = [(name, int(a * (layer.width.size - 1)), int(b * (layer.height.size - 1))) for a, b in picks]
        proofs = empirical.gradient_boxes(probe, channels, (size, size), CPU, units, lambda: False)
        for (_, x, y), proof in zip(units, proofs, strict=True):
            unit = unit_field(graph.fields, name, x, y, (size, size), HALF)
            truth = support(model, size, index, x, y)
            assert (unit.rows, unit.columns) == truth
            assert (proof.first_row, proof.last_row, proof.first_column, proof.last_column) == (
                *truth[0],
                *truth[1],
            )
            if truth[0][0] <= truth[0][1]:  # the unclipped box holds every connected pixel
                assert unit.vertical.first <= truth[0][0] and truth[0][1] <= unit.vertical.last
                assert unit.horizontal.first <= truth[1][0] and truth[1][1] <= unit.horizontal.last


def test_the_phase_of_a_strided_transposed_convolution():
    # k=3, s=2, p=1, output_padding=1: output 2m reads input m alone, output 2m + 1 reads m and m + 1.
    model = ones(nn.Sequential(nn.ConvTranspose2d(1, 1, 3, 2, 1, 1)))
    graph = rf_graph.analyse_module(model, "t", (6, 6), HALF, None, channels=1)
    layer = graph.fields[-1]
    assert layer.height.size == 12 and layer.height.jump == Fraction(1, 2)
    for o in range(11):
        unit = unit_field(graph.fields, layer.name, o, o, (6, 6), HALF)
        m = o // 2
        expected = (m, m) if o % 2 == 0 else (m, m + 1)
        assert (unit.vertical.first, unit.vertical.last) == expected
        assert unit.rows == expected == support(model, 6, 0, o, o)[0]
    spread = variation(layer.height)
    assert (spread.varies, spread.receptive_min, spread.receptive_max, spread.period) == (True, 1, 2, 2)


def test_a_transposed_convolution_with_stride_equal_to_kernel_is_uniform_per_phase():
    # The U-Net up-convolution (k=2, s=2): every output reads one input; boxes of one pixel, period 2.
    model = ones(nn.Sequential(nn.Conv2d(1, 1, 2, 2), nn.ConvTranspose2d(1, 1, 2, 2)))
    graph = rf_graph.analyse_module(model, "t", (8, 8), HALF, None, channels=1)
    layer = graph.fields[-1]
    for o in range(8):
        unit = unit_field(graph.fields, layer.name, o, 0, (8, 8), HALF)
        assert (unit.horizontal.first, unit.horizontal.last) == (o // 2 * 2, o // 2 * 2 + 1)
    assert variation(layer.width).receptive_max == 2


def test_a_wrong_mapping_fails_the_proof(monkeypatch):
    model = ones(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ConvTranspose2d(1, 1, 3, 2, 1, 1)))

    def shifted(n_in, n_out, window):  # every output reads one input further on
        return tuple(tuple(i + 1 for i in taps) for taps in right(n_in, n_out, window))

    right = field_rules.transposed_taps
    monkeypatch.setattr(field_rules, "transposed_taps", shifted)
    graph = rf_graph.analyse_module(model, "t", (6, 6), HALF, None, channels=1)
    name = graph.fields[-1].name
    probe, channels = empirical.twin_probe(graph.capture, [name], CPU)
    (proof,) = empirical.gradient_boxes(probe, channels, (6, 6), CPU, [(name, 4, 4)], lambda: False)
    unit = unit_field(graph.fields, name, 4, 4, (6, 6), HALF)
    assert (proof.first_row, proof.last_row) == support(model, 6, 1, 4, 4)[0] == (1, 3)
    assert unit.rows != (proof.first_row, proof.last_row)
