"""Segmentation networks and U-Nets through the SDK: transposed convolutions, bilinear upsampling to the
input resolution and the global context of broadcast pooled maps. The boxes of output units (the logits at
input resolution) equal back-propagation through the real network made transparent in the test
(``tests/support/positive_networks``), and the service's own proof agrees."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import nn

from tests.support.positive_networks import support, transparent

SIZE = 64


class TinyUNet(nn.Module):
    """Two levels: conv, down (max-pool), conv, up (ConvTranspose k=2 s=2 and k=3 s=2 p=1 op=1),
    concatenation with the skip, conv to logits."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dec1 = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(a)
        c = self.bottom(b)
        d = self.dec2(torch.cat([self.up2(c), b], 1))
        return self.dec1(torch.cat([self.up1(d), a], 1))


def _onnx(model: nn.Module, size: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


UNITS = [(0, 0), (1, 1), (SIZE // 2, SIZE // 2 + 1), (SIZE - 1, 37), (SIZE - 2, SIZE - 1)]


def test_a_unet_from_onnx_is_analysed_per_unit_and_proved(vision):
    torch.manual_seed(0)
    model = TinyUNet()
    result = vision.compute_receptive_field(
        onnx=_onnx(model, SIZE), verify=True, units=[("/dec1/Conv", x, y) for x, y in UNITS]
    )
    assert result.verified and result.end_point == "/dec1/Conv"
    up = result.layer("/up2/ConvTranspose")
    assert up.height.jump_fraction == (2, 1) and up.height.varies and up.height.period == 2
    truth = support(transparent(model), (SIZE, SIZE), UNITS)
    for unit, (rows, columns) in zip(result.units, truth, strict=True):
        assert (unit.rows, unit.columns) == (rows, columns)
        assert unit.verification.matches


SEGMENTATION = [
    # name, the end point (the logits resized to the input), the global context expected
    ("fcn_resnet50", "upsample_bilinear2d", ""),
    ("deeplabv3_mobilenet_v3_large", "upsample_bilinear2d_1", "mul"),
    ("lraspp_mobilenet_v3_large", "upsample_bilinear2d_1", "mul"),
]


@pytest.mark.parametrize(("name", "end", "context"), SEGMENTATION)
def test_segmentation_models_by_name(vision, name, end, context):
    result = vision.compute_receptive_field(
        model=name, input_size=SIZE, verify=True, units=[(end, x, y) for x, y in UNITS]
    )
    assert result.end_point == end and result.verified and result.global_context == context
    logits = result.layer(end)
    assert (logits.height.size, logits.width.size, logits.height.jump) == (SIZE, SIZE, 1)
    assert logits.height.varies and logits.height.receptive_min <= logits.height.receptive_max
    build = getattr(torchvision.models.segmentation, name)
    options = {"aux_loss": False} if "lraspp" not in name else {}
    model = build(weights=None, weights_backbone=None, **options)
    truth = support(transparent(model), (SIZE, SIZE), UNITS)
    for unit, (rows, columns) in zip(result.units, truth, strict=True):
        assert (unit.rows, unit.columns) == (rows, columns), (name, unit.x, unit.y)
        assert unit.verification.matches


def test_the_cli_table_says_where_a_field_varies(vision, tmp_path, capsys):
    from nnprobe.cli import main

    path = tmp_path / "up.onnx"
    path.write_bytes(_onnx(nn.Sequential(nn.ConvTranspose2d(3, 2, 3, 2, 1, 1)), 12))
    assert main(["rf", "--address", vision.address, "--onnx", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("/0/ConvTranspose"))
    # jump 1/2; even outputs read one input pixel, odd ones two: the field varies from 1 to 2, period 2
    assert "1/2" in row and "varies 1..2 /2" in row, out
    result = vision.compute_receptive_field(onnx=path, units=[("/0/ConvTranspose", 4, 5)], verify=True)
    layer = result.layer("/0/ConvTranspose")
    assert (layer.height.jump, layer.height.jump_fraction, layer.height.receptive_size) == (0, (1, 2), 2)
    assert (layer.height.receptive_min, layer.height.receptive_max, layer.height.period) == (1, 2, 2)
    [unit] = result.units
    assert (unit.rows, unit.columns, unit.verification.matches) == ((2, 3), (2, 2), True)


def test_deeplabv3_resnet50_is_built_by_name_without_downloads():
    from nnprobe_services.vision.receptive_fields import catalogue

    name = "deeplabv3_resnet50"  # the other segmentation names are analysed above
    model = catalogue.build(name)  # the meta device: no weights are downloaded or allocated
    assert name in catalogue.available_models() and catalogue.default_input_size(name) == 520
    out = model(torch.zeros(1, 3, 32, 32, device="meta"))
    assert set(out) == {"out"} and tuple(out["out"].shape[-2:]) == (32, 32)
