"""Today's networks: every family returns a field whose jump is the model's own final stride (read from timm
here), and back-propagation through the transparent twin proves the boxes (local boxes where there is global
context). ONNX exports give the same geometry at every layer as the PyTorch capture."""

import io
from fractions import Fraction

import pytest
import timm
import torch
from nnprobe_services.vision.receptive_fields import catalogue
from nnprobe_services.vision.receptive_fields import empirical as rf_empirical
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec, Unsupported
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from torch import nn

CPU = torch.device("cpu")
HALF = Fraction(1, 2)
SIZE = 64

#: The families of the work list, then more: SE/ECA/SK/split-attention gates, GroupNorm-free NF nets, channel
#: splits (MixConv, CSP, Ghost), upsampling (HRNet), NHWC blocks (ConvNeXt), TF "same" padding.
REQUIRED = [
    "tf_efficientnet_lite0",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "regnety_016",
    "resnet50d",
    "convnext_tiny",
    "resnext50_32x4d",
]
MORE = [
    "vgg11_bn",
    "mixnet_s",
    "ghostnet_100",
    "repvgg_a0",
    "mnasnet_100",
    "rexnet_100",
    "selecsls42b",
    "skresnet18",
    "resnest14d",
    "regnetx_002",
    "dla34",
    "cs3darknet_s",
    "nf_resnet26",
    "lcnet_050",
    "hardcorenas_a",
    "tinynet_a",
    "gernet_s",
    "seresnet18",
    "ecaresnet26t",
    "hrnet_w18_small",
    "mobilenetv4_conv_small",
    "semnasnet_050",
]


def timm_final_stride(name: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return int(model.feature_info[-1]["reduction"])


@pytest.mark.parametrize("name", REQUIRED + MORE)
def test_the_field_has_the_models_final_stride_and_is_proved(name):
    graph = rf_graph.analyse_model(name, (SIZE, SIZE), HALF, None)
    end = graph.fields[-1]
    stride = timm_final_stride(name)
    assert end.height.jump == end.width.jump == stride
    assert end.height.size == end.width.size == -(-SIZE // stride) or end.height.size == SIZE // stride
    middle = graph.fields[len(graph.fields) // 2]
    units = [
        (end.name, 0, 0),
        (end.name, end.width.size - 1, end.height.size - 1),
        (middle.name, middle.width.size // 2, middle.height.size - 1),
    ]
    probe, channels = rf_empirical.model_probe(
        name, sorted({u[0] for u in units}), CPU, weights="transparent", input_size=(SIZE, SIZE)
    )
    boxes = rf_empirical.gradient_boxes(probe, channels, (SIZE, SIZE), CPU, units, lambda: False)
    for (layer, x, y), box in zip(units, boxes, strict=True):
        unit = unit_field(graph.fields, layer, x, y, (SIZE, SIZE), HALF)
        assert (box.first_row, box.last_row, box.first_column, box.last_column) == (*unit.rows, *unit.columns)


@pytest.mark.parametrize(
    ("name", "size", "receptive", "context", "misaligned"),
    [
        # The default classifier at its own size: the local field quoted for EfficientNet-Lite0.
        ("tf_efficientnet_lite0", 224, 851, "", 0),
        ("efficientnet_b0", 224, 851, "blocks.0.0.se", 0),
        # ResNet-D: the average-pool shortcut shifts each downsampling block's second path.
        ("resnet50d", 224, 431, "", 6),
    ],
)
def test_default_sizes_global_context_and_misaligned_merges(name, size, receptive, context, misaligned):
    assert catalogue.default_input_size(name) == size
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    assert graph.fields[-1].height.receptive == receptive and graph.final_stride == 32
    assert graph.global_context_module == context and len(graph.misaligned) == misaligned
    assert graph.frontend == "torch.export"


def test_models_with_their_own_input_size_default_to_it():
    assert catalogue.default_input_size("inception_v3") == 299
    assert catalogue.default_input_size("tf_efficientnet_b3") == 300


# -- ONNX ---------------------------------------------------------------------------------------------
def onnx_bytes(module: nn.Module, size: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "tf_efficientnet_lite0", "efficientnet_b0"])
def test_onnx_exports_give_the_pytorch_geometry_at_every_layer(name):
    size = 64
    capture = rf_onnx.read(onnx_bytes(catalogue.build(name, "cpu"), size), None, name)
    assert capture.input_size == (size, size) and capture.frontend == "onnx"
    onnx_graph = rf_graph.analyse_capture(capture, HALF, None)
    torch_graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    by_module = {f.module: f for f in torch_graph.fields if f.kind in ("conv", "pool")}
    compared = 0
    for layer in onnx_graph.fields:
        if layer.kind in ("conv", "pool"):
            twin = by_module[layer.module]
            for a, b in ((layer.height, twin.height), (layer.width, twin.width)):
                assert (a.size, a.jump, a.receptive, a.start) == (b.size, b.jump, b.receptive, b.start)
            compared += 1
    assert compared == len(by_module) > 10
    assert onnx_graph.fields[-1].height == torch_graph.fields[-1].height
    assert (onnx_graph.global_context != "") == (torch_graph.global_context != "")
    end = onnx_graph.fields[-1]
    probe, channels = rf_empirical.twin_probe(capture, [end.name], CPU)
    [box] = rf_empirical.gradient_boxes(probe, channels, (size, size), CPU, [(end.name, 1, 0)], lambda: False)
    unit = unit_field(onnx_graph.fields, end.name, 1, 0, (size, size), HALF)
    assert (box.first_row, box.last_row, box.first_column, box.last_column) == (*unit.rows, *unit.columns)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y @ y


def test_onnx_failures_name_the_field_or_the_node():
    with pytest.raises(InvalidSpec, match="is not an ONNX model") as error:
        rf_onnx.read(b"not a model", (8, 8))
    assert error.value.field == "model.onnx"
    capture = rf_onnx.read(onnx_bytes(Attention(), 10), None, "attention")
    with pytest.raises(Unsupported, match="MatMul \\(node '/MatMul'\\) cannot be mapped") as error:
        rf_graph.analyse_capture(capture, HALF, None)
    assert error.value.field == "model.name"
    with pytest.raises(InvalidSpec, match="shape inference fails") as error:
        rf_onnx.read(onnx_bytes(Attention(), 10), (2, 2))
    assert error.value.field == "input_size"
