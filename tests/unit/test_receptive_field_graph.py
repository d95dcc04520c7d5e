"""Traced models: published receptive fields, branch alignment, unmappable operations, the proof."""

from fractions import Fraction

import pytest
import torch
import torch.fx as fx
from nnprobe_services.vision import rf_empirical, rf_graph
from nnprobe_services.vision.receptive_field import InvalidSpec, UnknownName, Unsupported, unit_field
from torch import nn

HALF = Fraction(1, 2)


@pytest.mark.parametrize(
    ("name", "size", "end", "out", "receptive", "padding"),
    [
        # Araujo, Norris & Sim (Distill 2019), table of popular networks: r, effective stride 32, padding.
        ("vgg16", 224, "features_30", 7, 212, 90),
        ("inception_v3", 299, "cat_14", 8, 1311, 618),
        # torchvision's own architectures (they differ from the TF-slim ResNets of the table).
        ("alexnet", 224, "features_12", 6, 195, 66),
        ("resnet18", 224, "layer4_1_relu_1", 7, 435, 217),
        ("resnet50", 224, "layer4_2_relu_2", 7, 427, 213),
    ],
)
def test_published_receptive_fields(name, size, end, out, receptive, padding):
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    last = graph.fields[-1]
    assert graph.end_point == last.name == end
    for axis in (last.height, last.width):
        assert (axis.size, axis.jump, axis.receptive, axis.effective_padding(HALF)) == (
            out,
            32,
            receptive,
            padding,
        )


def test_stage_aliases_and_module_paths_resolve():
    graph = rf_graph.analyse_model("resnet50", (224, 224), HALF, None)
    assert graph.resolve("conv5", "units") == graph.resolve("layer4", "units") == "layer4_2_relu_2"
    assert graph.resolve("layer1.0.conv1", "units") == "layer1_0_conv1"
    with pytest.raises(InvalidSpec, match="no layer 'layer9'") as error:
        graph.resolve("layer9", "units[0].layer")
    assert error.value.field == "units[0].layer"


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(UnknownName, match="resnet50, resnet101") as error:
        rf_graph.build("resnet5000")
    assert error.value.field == "model.name"


class TwoBranches(nn.Module):
    """x -> a(x) + b(x), optionally through an operation the tracer cannot map."""

    def __init__(self, a: nn.Module, b: nn.Module, upsample: bool = False):
        super().__init__()
        self.a, self.b = a, b
        self.up = nn.Upsample(scale_factor=1) if upsample else nn.Identity()

    def forward(self, x):
        return self.up(self.a(x)) + self.b(x)


def trace(module):
    with torch.device("meta"):
        return fx.symbolic_trace(module)


def test_aligned_branches_take_the_largest_field():
    gm = trace(TwoBranches(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 5, padding=2)))
    graph = rf_graph.analyse_graph(gm, "two", (16, 16), HALF, None)
    assert [(f.name, f.kind, f.height.receptive, f.inputs) for f in graph.fields] == [
        ("x", "input", 1, ()),
        ("a", "conv", 3, ("x",)),
        ("up", "other", 3, ("a",)),
        ("b", "conv", 5, ("x",)),
        ("add", "merge", 5, ("up", "b")),
    ]


def test_misaligned_branches_say_where():
    # Both give 8 x 8 from 16 x 16, but a's units are centred on start 0.5, b's on 1.0.
    gm = trace(TwoBranches(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 2, stride=2)))
    with pytest.raises(Unsupported) as error:
        rf_graph.analyse_graph(gm, "two", (16, 16), HALF, None)
    assert "misaligned branches at node 'add'" in error.value.message
    assert "the start is 0.5 through up but 1.0 through b" in error.value.message


def test_unmappable_operation_is_named():
    gm = trace(TwoBranches(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1), upsample=True))
    with pytest.raises(Unsupported, match="module Upsample \\(node 'up'\\) cannot be mapped"):
        rf_graph.analyse_graph(gm, "two", (16, 16), HALF, None)
    # An end point before the unmappable node is fine.
    assert rf_graph.analyse_graph(gm, "two", (16, 16), HALF, "a").end_point == "a"


def test_global_context_broadcast_is_refused():
    with pytest.raises(Unsupported, match="squeeze-and-excitation"):
        rf_graph.analyse_model("efficientnet_b0", (64, 64), HALF, None)


def test_input_too_small_names_the_node():
    with pytest.raises(InvalidSpec, match="exceeds the padded input") as error:
        rf_graph.analyse_model("inception_v3", (40, 40), HALF, None)
    assert error.value.field == "input_size"


@pytest.mark.parametrize(("name", "size"), [("resnet18", 48), ("googlenet", 48), ("inception_v3", 79)])
def test_gradient_box_equals_connected_pixels(name, size):
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    end = graph.fields[-1]
    units = [(end.name, 0, 0), (end.name, end.width.size - 1, end.height.size // 2)]
    middle = graph.fields[len(graph.fields) // 3]
    units += [(middle.name, 0, middle.height.size - 1), (middle.name, middle.width.size // 2, 1)]
    probe, channels = rf_empirical.model_probe(
        name, [u[0] for u in units], torch.device("cpu"), weights="transparent"
    )
    boxes = rf_empirical.gradient_boxes(
        probe, channels, (size, size), torch.device("cpu"), units, lambda: False
    )
    for (layer, x, y), box in zip(units, boxes, strict=True):
        unit = unit_field(graph.fields, layer, x, y, (size, size), HALF)
        assert (box.first_row, box.last_row, box.first_column, box.last_column) == (*unit.rows, *unit.columns)
