"""Dense outputs: every unit of a segmentation map at input resolution (a fully convolutional net without
transposed convolutions, returning a dict as torchvision's segmentation models do) has its box and
connected pixels, equal to where autograd through the real module (random weights, float64) is non-zero,
and ``verify`` proves them."""

from __future__ import annotations

import copy
from fractions import Fraction

import torch
from nnprobe_services.vision.receptive_fields import boxes, empirical, graph
from torch import nn

SIZE = (20, 28)


class DictFCN(nn.Module):
    """Backbone with a stride-4 map, a classifier on it, nearest upsampling back to the input size, and an
    auxiliary head on the stride-2 map: {'out': (N, 3, H, W), 'aux': (N, 3, H, W)}."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh())
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2), nn.Tanh())
        self.classifier = nn.Conv2d(4, 3, 3, padding=1)
        self.aux = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stem(x)
        out = nn.functional.interpolate(self.classifier(self.body(low)), size=x.shape[-2:], mode="nearest")
        aux = nn.functional.interpolate(self.aux(low), size=x.shape[-2:], mode="nearest")
        return {"out": out, "aux": aux}


def _support(net: nn.Module, key: str, x: int, y: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns where autograd of unit (x, y) of output ``key`` through the module is non-zero."""
    pixels = torch.randn(1, 3, *SIZE, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(pixels)[key][0, :, y, x].sum(), pixels)
    mask = grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


def test_every_sampled_unit_of_both_dense_outputs_has_its_exact_connected_pixels_and_is_proven():
    torch.manual_seed(0)
    net = DictFCN().eval()
    units = [(x, y) for x in (0, 1, 5, 13, 27) for y in (0, 2, 7, 19)]
    # the default end point is the last map (the auxiliary output); the main one is named by its node
    for key, end_point in (("aux", None), ("out", "upsample_nearest2d")):
        analysis = graph.analyse_module(copy.deepcopy(net), "fcn", SIZE, Fraction(1, 2), end_point)
        layer = analysis.end_point
        assert (
            analysis.fields[-1].name == layer
            and (analysis.fields[-1].height.size, analysis.fields[-1].width.size) == SIZE
        )
        twin, channels = empirical.twin_probe(analysis.capture, [layer], torch.device("cpu"))
        proven = empirical.gradient_boxes(
            twin, channels, SIZE, torch.device("cpu"), [(layer, x, y) for x, y in units], lambda: False
        )
        for (x, y), box in zip(units, proven, strict=True):
            unit = boxes.unit_field(analysis.fields, layer, x, y, SIZE, Fraction(1, 2))
            assert (unit.rows, unit.columns) == _support(copy.deepcopy(net).double(), key, x, y)
            assert (unit.rows, unit.columns) == (
                (box.first_row, box.last_row),
                (box.first_column, box.last_column),
            )
