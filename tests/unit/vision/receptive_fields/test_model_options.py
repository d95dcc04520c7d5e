"""Constructor options of named models (``model_options``, ``catalogue.build``): checked against the model's
own signature (an unknown name or a value of another type is INVALID_ARGUMENT naming the option and listing
the accepted ones), part of the capture's cache key, and they change the geometry as the model's own
layers say: a timm ResNet with ``output_stride=8`` has the receptive field its dilated layers give, which
the test sums itself from the modules of a model timm builds."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import timm
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import catalogue, graph, model_options
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec
from torch import nn

SIZE = (64, 64)


def _options(**values) -> model_options.ModelOptions:
    return model_options.canonical({k: json.dumps(v) for k, v in values.items()})


def _walk(model: nn.Module, stages: list[str]) -> tuple[int, int]:
    """(receptive size, jump) after ``stages`` of a timm ResNet of basic blocks, summed from the modules'
    own kernel, stride and dilation: r += (k - 1) * d * j, j *= s along the main path."""
    receptive, jump = 1, 1

    def step(kernel: int, stride: int, dilation: int) -> None:
        nonlocal receptive, jump
        receptive += (kernel - 1) * dilation * jump
        jump *= stride

    step(model.conv1.kernel_size[0], model.conv1.stride[0], model.conv1.dilation[0])
    pool = model.maxpool
    step(pool.kernel_size, pool.stride, pool.dilation)
    for stage in stages:
        for block in getattr(model, stage):
            for conv in (block.conv1, block.conv2):
                step(conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    return receptive, jump


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_a_dilated_resnet_has_the_field_its_dilated_layers_give(stride):
    analysis = graph.analyse(
        "timm/resnet18", b"", SIZE, Fraction(1, 2), None, options=_options(output_stride=stride)
    )
    end = next(f for f in analysis.fields if f.name == analysis.end_point)
    reference = timm.create_model("resnet18", pretrained=False, output_stride=stride)
    receptive, jump = _walk(reference, ["layer1", "layer2", "layer3", "layer4"])
    assert (end.height.jump, end.width.jump) == (jump, jump) == (stride, stride)
    assert (end.height.receptive, end.height.size) == (receptive, SIZE[0] // stride)
    assert analysis.final_stride == stride  # timm's feature_info of the dilated model


def test_features_only_answers_each_feature_map_as_an_end_point():
    options = _options(features_only=True, out_indices=[1, 2])
    reference = timm.create_model("resnet18", pretrained=False)
    for end_point, stages in ((None, ["layer1", "layer2"]), ("layer1", ["layer1"])):
        analysis = graph.analyse("timm/resnet18", b"", SIZE, Fraction(1, 2), end_point, options=options)
        end = next(f for f in analysis.fields if f.name == analysis.end_point)
        assert (end.height.receptive, end.height.jump) == _walk(reference, stages)
    names = {f.module for f in analysis.fields}
    assert not any(name.startswith(("layer3", "layer4", "fc")) for name in names)


def test_img_size_sets_a_vision_transformers_default_input():
    assert catalogue.default_size("timm/vit_tiny_patch16_224", _options(img_size=[96, 64])) == (96, 64)
    assert catalogue.default_size("timm/vit_tiny_patch16_224", ()) == (224, 224)
    model = catalogue.build("timm/vit_tiny_patch16_224", "meta", _options(img_size=96))
    assert model.patch_embed.grid_size == (6, 6)


def test_torchvision_options_are_the_builders_and_the_classs():
    options = _options(num_classes=7, replace_stride_with_dilation=[False, True, True])
    model = catalogue.build("resnet50", "meta", options)
    assert model.fc.out_features == 7 and model.layer4[1].conv2.dilation == (4, 4)
    with pytest.raises(InvalidSpec) as error:
        catalogue.build("resnet50", "meta", _options(output_stride=8))
    assert error.value.field == "model.options[output_stride]"
    assert "replace_stride_with_dilation" in error.value.message and "timm/resnet50" in error.value.message
    with pytest.raises(InvalidSpec) as error:  # torchvision's basic blocks refuse dilation
        catalogue.build("resnet18", "meta", options)
    assert error.value.field == "model.options" and "NotImplementedError" in error.value.message


def test_a_value_the_constructor_refuses_is_invalid_with_its_reason():
    with pytest.raises(InvalidSpec) as error:
        catalogue.build("timm/resnet18", "meta", _options(output_stride=7))
    assert error.value.field == "model.options" and "output_stride" in error.value.message


def test_a_value_that_is_not_json_is_invalid():
    with pytest.raises(InvalidSpec) as error:
        model_options.canonical({"output_stride": "eight"})
    assert error.value.field == "model.options[output_stride]" and '"eight"' in error.value.message


KNOWN = model_options.accepted(
    timm.models.model_entrypoint("resnet18"),
    type(catalogue.build("timm/resnet18")),
    model_options.TIMM_BUILD_OPTIONS,
)


@settings(max_examples=40, deadline=None)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20).filter(lambda n: n not in KNOWN)
)
def test_an_unknown_option_is_named_with_the_accepted_ones(name):
    with pytest.raises(InvalidSpec) as error:
        model_options.keyword_arguments("timm/resnet18", _options(**{name: 1}), KNOWN)
    assert error.value.field == f"model.options[{name}]"
    assert f'"{name}"' in error.value.message and "output_stride" in error.value.message
    assert "features_only" in error.value.message


#: JSON values by kind, and the parameters of a timm ResNet whose default is of each kind.
VALUES = {
    "bool": st.booleans(),
    "int": st.integers(-5, 64),
    "float": st.floats(-1, 1, allow_nan=False),
    "text": st.text(max_size=8),
    "list": st.lists(st.integers(0, 4), max_size=3),
}
PARAMETERS = {"output_stride": "int", "features_only": "bool", "drop_rate": "float", "global_pool": "text"}
FITS = {"int": {"int"}, "bool": {"bool"}, "float": {"int", "float"}, "text": {"text"}}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PARAMETERS)), st.sampled_from(sorted(VALUES)), st.data())
def test_a_value_of_another_type_than_the_default_is_invalid(name, kind, data):
    value = data.draw(VALUES[kind])
    options = _options(**{name: value})
    if kind in FITS[PARAMETERS[name]]:
        assert model_options.keyword_arguments("timm/resnet18", options, KNOWN) == {name: value}
        return
    with pytest.raises(InvalidSpec) as error:
        model_options.keyword_arguments("timm/resnet18", options, KNOWN)
    assert error.value.field == f"model.options[{name}]" and "must be" in error.value.message
    assert "b'" not in error.value.message and "<class" not in error.value.message


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["patch_size", "img_size", "num_heads", "mlp_ratio"]), value=st.integers(-3, 2))
def test_a_geometry_value_the_constructor_cannot_use_is_invalid_naming_the_options(name, value):
    """A vision transformer built with a small or non-positive geometry value (a patch of 0 pixels divides
    by zero inside timm): it builds, or answers InvalidSpec on ``model.options`` naming the option, whatever
    exception the constructor raised (an oracle: timm's own constructor called here with the same value)."""
    try:
        timm.create_model("vit_tiny_patch16_224", pretrained=False, **{name: value}, device="meta")
        builds = True
    except Exception:
        builds = False
    if builds:
        assert catalogue.build("timm/vit_tiny_patch16_224", "meta", _options(**{name: value})) is not None
        return
    with pytest.raises(InvalidSpec) as error:
        catalogue.build("timm/vit_tiny_patch16_224", "meta", _options(**{name: value}))
    assert error.value.field == "model.options" and name in error.value.message
