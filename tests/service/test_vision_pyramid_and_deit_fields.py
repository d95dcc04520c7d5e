"""A feature pyramid (torchvision's ``FeaturePyramidNetwork`` on a small ResNet body, from ONNX) and DeiT by
name through the SDK. The boxes of the pyramid's finest output equal back-propagation through the real network
made transparent in the test; DeiT's patch tokens equal autograd through the real timm model with every
attention's result held constant. An antialiased ONNX downsampling (opset 18) answers per unit, proved."""

from __future__ import annotations

import io

import timm
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork

from tests.support.positive_networks import support, transparent

SIZE = 64


class PyramidNet(nn.Module):
    """A two-block ResNet body (stem stride 2, then blocks of stride 1, 2, 2) and an FPN over its last three
    maps (strides 2, 4, 8); the output is the pyramid's finest level."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, 2, _down(8, 16))
        self.layer3 = BasicBlock(16, 16, 2, _down(16, 16))
        self.fpn = FeaturePyramidNetwork([8, 16, 16], 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return self.fpn({"c1": c1, "c2": c2, "c3": c3})["c1"]


def _down(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 1, 2, bias=False), nn.BatchNorm2d(outputs))


def _onnx(model: nn.Module, size: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


UNITS = [(0, 0), (5, 9), (16, 16), (31, 30), (31, 0)]


def test_the_finest_level_of_a_feature_pyramid_is_proved_per_unit(vision):
    torch.manual_seed(0)
    model = PyramidNet()
    data = _onnx(model, SIZE)
    whole = vision.compute_receptive_field(onnx=data)
    end = whole.end_point
    assert whole.layer(end).height.size == SIZE // 2 and whole.layer(end).height.jump == 2
    result = vision.compute_receptive_field(onnx=data, verify=True, units=[(end, x, y) for x, y in UNITS])
    assert result.verified
    truth = support(transparent(model), (SIZE, SIZE), UNITS)
    for unit, (rows, columns) in zip(result.units, truth, strict=True):
        assert (unit.rows, unit.columns) == (rows, columns), (unit.x, unit.y)
        assert unit.verification.matches
    # the top-down path brings the coarse levels in: 55 pixels, where the finest path alone (stem, layer1,
    # the lateral 1 x 1 and the output 3 x 3) reads 15
    assert truth[2] == ((1, 55), (1, 55))


def _held(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
    return output.detach()


def test_deit_tiny_patch_tokens_by_name_equal_autograd_with_attention_held(vision):
    name, tokens = "deit_tiny_patch16_224", [(0, 0), (9, 4)]
    result = vision.compute_receptive_field(
        model=name, units=[("norm", x, y) for x, y in tokens], verify=True
    )
    assert result.verified and result.global_context_module == "blocks.0.attn"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().double()
    assert model.num_prefix_tokens == 1
    for module in model.modules():
        if type(module).__name__ == "Attention":
            module.register_forward_hook(_held)
    image = torch.rand(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    out = model.forward_features(image)
    for unit, (x, y) in zip(result.units, tokens, strict=True):  # channel 0: a sum over the norm is constant
        (grad,) = torch.autograd.grad(out[0, 1 + 14 * y + x, 0], image, retain_graph=True)
        hit = grad[0].abs().sum(0) != 0
        rows, columns = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
        truth = (int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))
        assert (unit.rows, unit.columns) == truth == ((16 * y, 16 * y + 15), (16 * x, 16 * x + 15))
        assert unit.verification.matches


def test_an_antialiased_onnx_downsampling_answers_per_unit_and_is_proved(vision):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    ones = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "W")
    scales = numpy_helper.from_array(np.array([1, 1, 0.4, 0.4], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["C"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["C", "", "scales"], ["Y"], name="down", mode="linear", antialias=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 20, 20])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=[ones, scales],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    result = vision.compute_receptive_field(
        onnx=model.SerializeToString(), verify=True, units=[("down", 3, 0)]
    )
    assert result.verified and result.layer("down").height.jump_fraction == (5, 2)
    # unit 3 sits at 3.5 / 0.4 - 0.5 = 8.25 in the conv map; a triangle of half-width 2.5 there reads conv
    # units 6..10, i.e. pixels 5..11; unit 0 sits at 0.75 and reads conv units 0..3, i.e. pixels 0..4
    [unit] = result.units
    assert (unit.columns, unit.rows, unit.verification.matches) == ((5, 11), (0, 4), True)
