"""Overlap-tile plans: every plan is checked by running the real network whole and tile by tile with a
crop-and-stitch loop written here (float64, random weights and biases, non-linear), independently of the
proof in ``tiling.prove``; a halo one pixel too small changes the map, so the halo is tight."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition, InvalidArgument
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import graph, tiling, workflow
from torch import nn

HALF = Fraction(1, 2)


def stitched(module, x: torch.Tensor, tile, halo, units_per_tile) -> torch.Tensor:
    """Crop-and-stitch written here: tile k keeps output units k * units_per_tile onwards and runs on the
    input rows k * tile - halo_before .. (k + 1) * tile - 1 + halo_after, clipped to the image."""
    height, width = x.shape[-2:]
    whole = module(x)
    out = torch.full_like(whole, float("nan"))
    jump = (tile[0] // units_per_tile[0], tile[1] // units_per_tile[1])
    for r0 in range(0, out.shape[-2], units_per_tile[0]):
        for c0 in range(0, out.shape[-1], units_per_tile[1]):
            top = max(r0 * jump[0] - halo[0], 0)
            left = max(c0 * jump[1] - halo[2], 0)
            bottom = min((r0 * jump[0]) + tile[0] + halo[1], height)
            right = min((c0 * jump[1]) + tile[1] + halo[3], width)
            piece = module(x[..., top:bottom, left:right])
            rows, cols = top // jump[0], left // jump[1]
            keep = piece[
                ..., r0 - rows : r0 - rows + units_per_tile[0], c0 - cols : c0 - cols + units_per_tile[1]
            ]
            out[..., r0 : r0 + keep.shape[-2], c0 : c0 + keep.shape[-1]] = keep
    return out


def max_difference(module, x, tile, halo, units_per_tile) -> float:
    with torch.no_grad():
        return float((stitched(module, x, tile, halo, units_per_tile) - module(x)).abs().max())


class UNetLike(nn.Module):
    """Two poolings down, nearest upsampling back, a skip concatenation at each level: a segmentation map
    at input resolution (no transposed convolutions)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.Tanh())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh())
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Sequential(nn.Conv2d(12, 4, 3, padding=1), nn.Tanh())
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(a)
        c = self.mid(b)
        d = self.dec2(torch.cat([self.up2(c), b], dim=1))
        return self.head(self.dec1(torch.cat([self.up1(d), a], dim=1)))


def dilated_stack(dilations) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dilations:
        layers += [nn.Conv2d(2, 2, 3, padding=d, dilation=d), nn.Tanh()]
    return nn.Sequential(*layers)


def _plan(module, size, tile, channels=3):
    analysis = graph.analyse_module(copy.deepcopy(module).float(), "net", size, HALF, None, channels=channels)
    return tiling.plan(
        analysis.fields, analysis.end_point, size, tile, global_context=analysis.global_context
    )


def test_a_unet_like_map_tiled_equals_the_whole_map_and_a_misaligned_grid_does_not():
    torch.manual_seed(0)
    net = UNetLike().double().eval()
    size = (40, 56)  # not a multiple of the tile: the last tiles are clipped
    plan = _plan(net, size, (16, 24))
    assert plan.alignment == (4, 4)  # two poolings of 2
    assert plan.output_size == size and plan.units_per_tile == (16, 24) and plan.tiles == (3, 3)
    # By hand: output row 1 reads dec1's rows 0..2, d's row 1 (nearest), dec2's rows 0..2, c's row 1, mid's
    # rows 0..2, b's rows 0..5 (pool), enc2's rows 0..6, a's rows 0..13 (pool), pixels 0..14: 13 beyond its
    # own row (row 2 reaches back 13 the same way); 13 rounded up to the alignment of 4 is 16.
    assert plan.halo == (16, 16, 16, 16)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    assert max_difference(net, x, plan.tile, plan.halo, plan.units_per_tile) < 1e-12
    # One interior tile (rows and columns 16..31 of a 64 x 64 image): its aligned window gives its units,
    # a window of the same size two pixels up and left (off the 4-pixel grid) does not, though it holds
    # every pixel those units read (rows 3..44).
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        whole = net(x)[..., 16:32, 16:32]
        aligned = net(x[..., 0:48, 0:48])[..., 16:32, 16:32]
        shifted = net(x[..., 2:50, 2:50])[..., 14:30, 14:30]
    assert float((aligned - whole).abs().max()) < 1e-12
    assert float((shifted - whole).abs().max()) > 1e-6


def test_a_tile_off_the_alignment_and_global_context_are_refused():
    net = UNetLike().double().eval()
    with pytest.raises(InvalidArgument) as odd:
        _plan(net, (32, 32), (16, 10))
    assert odd.value.field == "tiling.tile_width" and "multiple of 4" in odd.value.message
    with pytest.raises(FailedPrecondition) as context:
        analysis = graph.analyse_module(net.float(), "net", (32, 32), HALF, None)
        tiling.plan(analysis.fields, analysis.end_point, (32, 32), (16, 16), global_context="gate")
    assert context.value.field == "tiling" and "gate" in context.value.message


def test_the_halo_of_dilated_convolutions_is_tight():
    torch.manual_seed(1)
    net = dilated_stack([1, 2, 3]).double().eval()
    size = (30, 30)
    plan = _plan(net, size, (7, 5), channels=2)
    assert plan.halo == (6, 6, 6, 6) and plan.alignment == (1, 1)  # 1 + 2 + 3 on each side
    x = torch.randn(1, 2, *size, dtype=torch.float64)
    assert max_difference(net, x, plan.tile, plan.halo, plan.units_per_tile) < 1e-12
    for side in range(4):
        short = list(plan.halo)
        short[side] -= 1
        assert max_difference(net, x, plan.tile, tuple(short), plan.units_per_tile) > 1e-6


def test_the_proof_of_the_workflow_runs_the_layer_list_tiled():
    layers = [
        rf.LayerSpec("a", "conv", (3, 3), padding=(1, 1, 1, 1)),
        rf.LayerSpec("b", "conv", (5, 3), (2, 1)),
    ]
    request = workflow.FieldRequest(
        layers=layers, input_size=(36, 20), tiling=workflow.TilingOptions((8, 4), True)
    )
    result = workflow.compute(request, torch.device("cpu"), lambda: False)
    plan = result.tiling
    assert plan is not None and plan.proved and plan.weights == "random" and plan.dtype == "float64"
    assert plan.max_abs_diff < 1e-12
    # b (kernel 5 x 3, stride 2 x 1, no padding) over a (3 x 3, padding 1): jump (2, 1), alignment (2, 1);
    # row u of b owns pixels 2u, 2u + 1 and reads a's rows 2u .. 2u + 4, pixels 2u - 1 .. 2u + 5: 1 before
    # (2 on the grid of 2), 4 after; column u owns pixel u and reads pixels u - 1 .. u + 3: 1 before, 3 after.
    assert plan.alignment == (2, 1) and plan.halo == (2, 4, 1, 3)


@settings(max_examples=20, deadline=None)
@given(
    kernels=st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=3),
    dilations=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    tile=st.integers(3, 9),
    extra=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
@example(kernels=[1, 3, 5], dilations=[1, 1, 1], tile=3, extra=1, seed=0)  # saturated tanh layers
def test_every_plan_of_a_chain_is_exact_and_tight(kernels, dilations, tile, extra, seed):
    """Chains of 'same' convolutions of random kernels and dilations, on images with interior units
    (2 * reach + tile + extra pixels): tiled equals whole with the plan's halo, and differs with any side one
    pixel short (when that side has a halo). Tightness is shown on the chain without its tanh: saturated
    tanh layers can shrink a missing pixel's effect below any fixed threshold, while the positive weights of
    the linear chain pass it on undiminished."""
    specs, modules = [], []
    generator = torch.Generator().manual_seed(seed)
    for i, (k, d) in enumerate(zip(kernels, dilations, strict=False)):
        pad = (k - 1) * d // 2
        specs.append(rf.LayerSpec(f"c{i}", "conv", (k, k), dilation=(d, d), padding=(pad, pad, pad, pad)))
        conv = nn.Conv2d(1, 1, k, padding=pad, dilation=d).double()
        with torch.no_grad():
            conv.weight.copy_(torch.rand(conv.weight.shape, generator=generator, dtype=torch.float64) + 0.5)
            conv.bias.copy_(torch.rand(1, generator=generator, dtype=torch.float64))
        modules += [conv, nn.Tanh()]
    net = nn.Sequential(*modules)
    reach = sum((k - 1) * d // 2 for k, d in zip(kernels, dilations, strict=False))
    side = 2 * reach + tile + extra
    size = (side, side + 3)
    fields = rf.analyse_layers(specs, size, HALF)
    plan = tiling.plan(fields, fields[-1].name, size, (tile, tile))
    assert plan.halo == (reach,) * 4
    x = torch.randn(1, 1, *size, generator=generator, dtype=torch.float64)
    assert max_difference(net, x, plan.tile, plan.halo, plan.units_per_tile) < 1e-12
    linear = nn.Sequential(*modules[::2])
    for side_index in range(4) if reach else ():
        short = [reach] * 4
        short[side_index] -= 1
        assert max_difference(linear, x, plan.tile, tuple(short), plan.units_per_tile) > 1e-9


class TransposedUNet(nn.Module):
    """One pooling down, a 2 x 2 stride-2 transposed convolution back up, a skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.Tanh())
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        return self.head(self.dec(torch.cat([self.up(self.enc2(a)), a], dim=1)))


class BilinearHead(nn.Module):
    """A stride-4 backbone whose logits are resized bilinearly back to the input size (an FCN head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("net", "alignment"), [(TransposedUNet, (2, 2)), (BilinearHead, (4, 4))])
def test_maps_brought_back_by_transposed_convolutions_and_bilinear_resizing_tile_exactly(net, alignment):
    torch.manual_seed(2)
    module = net().double().eval()
    size = (32, 40)
    plan = _plan(module, size, (8, 8))
    assert plan.alignment == alignment and plan.output_size == size
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    assert max_difference(module, x, plan.tile, plan.halo, plan.units_per_tile) < 1e-12
    if net is BilinearHead:  # one alignment step less before a tile reads zero padding instead of the image
        for side in (0, 2):
            short = list(plan.halo)
            short[side] -= alignment[0]
            assert max_difference(module, x, plan.tile, tuple(short), plan.units_per_tile) > 1e-9


def test_torchvision_segmentation_models_are_planned_or_refused_by_their_global_context():
    """fcn_resnet50's logits (bilinear from a dilated stride-8 map) need the whole 96 x 96 image around
    every tile (its field is larger than the image, so the halo is as wide as the image); deeplabv3's ASPP
    pooling branch is global context, refused by name."""
    fcn = graph.analyse("fcn_resnet50", b"", (96, 96), HALF, None)
    plan = tiling.plan(fcn.fields, fcn.end_point, (96, 96), (32, 32), global_context=fcn.global_context)
    assert plan.alignment == (8, 8) and plan.tiles == (3, 3) and plan.halo == (96, 96, 96, 96)
    deeplab = graph.analyse("deeplabv3_resnet50", b"", (96, 96), HALF, None)
    with pytest.raises(FailedPrecondition) as refused:
        tiling.plan(
            deeplab.fields, deeplab.end_point, (96, 96), (32, 32), global_context=deeplab.global_context
        )
    assert refused.value.field == "tiling" and repr(deeplab.global_context) in refused.value.message
