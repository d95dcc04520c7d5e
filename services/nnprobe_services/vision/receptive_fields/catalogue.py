"""The networks the receptive-field analysis can build by name: torchvision classifiers and every timm model.

Models are built with random weights (never downloaded), by default on the ``meta`` device, where building
costs no memory. Each model's default input size and final stride come from its own configuration (timm's
``pretrained_cfg`` and ``feature_info``; torchvision's papers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from nnprobe_services.vision.receptive_fields import model_options
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec, UnknownName
from nnprobe_services.vision.receptive_fields.model_options import ModelOptions

#: torchvision models: constructor keyword arguments and the default input size.
TORCHVISION: dict[str, tuple[dict[str, Any], int]] = {
    "alexnet": ({}, 224),
    "vgg11": ({}, 224),
    "vgg13": ({}, 224),
    "vgg16": ({}, 224),
    "vgg19": ({}, 224),
    "resnet18": ({}, 224),
    "resnet34": ({}, 224),
    "resnet50": ({}, 224),
    "resnet101": ({}, 224),
    "resnet152": ({}, 224),
    "mobilenet_v2": ({}, 224),
    "densenet121": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 299),
    # Segmentation (torchvision.models.segmentation): no auxiliary head; the capture takes the output 'out',
    # the logits at input resolution. 520: the evaluation size of their weights.
    "fcn_resnet50": ({"weights_backbone": None, "aux_loss": False}, 520),
    "deeplabv3_resnet50": ({"weights_backbone": None, "aux_loss": False}, 520),
    "deeplabv3_mobilenet_v3_large": ({"weights_backbone": None, "aux_loss": False}, 520),
    "lraspp_mobilenet_v3_large": ({"weights_backbone": None}, 520),
}
#: The stages of the ResNet paper (conv2_x ... conv5_x) by the modules that end them. Stage conv1 needs no
#: alias: the module ``conv1`` is that stage's convolution, and the ReLU after it has the same field.
RESNET_STAGES = {"conv2": "layer1", "conv3": "layer2", "conv4": "layer3", "conv5": "layer4"}


def torchvision_builder(name: str) -> Any:
    """The torchvision constructor of ``name`` (classifiers in ``torchvision.models``, segmentation models in
    ``torchvision.models.segmentation``)."""
    builder = getattr(torchvision.models, name, None)
    return builder if builder is not None else getattr(torchvision.models.segmentation, name)


def available_models() -> list[str]:
    """The torchvision names; any timm model name (``timm.list_models()``) is accepted as well."""
    return list(TORCHVISION)


def timm_name(name: str) -> str | None:
    """The timm name of ``name`` (``timm/`` prefix removed), or None when timm has no such model."""
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency of the services
        return None
    bare = name.removeprefix("timm/")
    return bare if timm.is_model(bare) else None


def build(name: str, device: torch.device | str = "meta", options: ModelOptions = ()) -> nn.Module:
    """The model ``name`` with random weights on ``device``, in eval mode, built with the constructor
    ``options`` (``model_options``). Raises ``UnknownName``, or ``InvalidSpec`` on ``model.options[...]``
    for options its constructor does not take or refuses."""
    with torch.device(device):
        if name in TORCHVISION:
            kwargs = option_arguments(name, options)
            model = _construct(
                name,
                options,
                lambda: torchvision_builder(name)(weights=None, **{**TORCHVISION[name][0], **kwargs}),
            )
        elif (bare := timm_name(name)) is not None:
            import timm

            kwargs = option_arguments(name, options)
            model = _construct(name, options, lambda: timm.create_model(bare, pretrained=False, **kwargs))
        else:
            raise UnknownName(
                f"unknown model {name!r}; available: {', '.join(TORCHVISION)}, or any timm model by name "
                f"(timm.list_models(), optionally prefixed 'timm/')",
                field="model.name",
            )
    return model.eval()


def _construct(name: str, options: ModelOptions, constructor: Callable[[], nn.Module]) -> nn.Module:
    """``constructor()``; with ``options``, the constructor's refusal of them is ``InvalidSpec``."""
    if not options:
        return constructor()
    try:
        return constructor()
    except Exception as error:  # it builds without options: any failure (ZeroDivisionError...) is theirs
        names = ", ".join(key for key, _ in options)
        reason = f": {str(error).strip()[:200]}" if str(error).strip() else " (it gives no reason)"
        raise InvalidSpec(
            f"{name} cannot be built with the options {names}: {type(error).__name__}{reason}",
            field="model.options",
        ) from None


def option_arguments(name: str, options: ModelOptions) -> dict[str, Any]:
    """``options`` as keyword arguments of model ``name``'s constructor, checked against its signature
    (``model_options.keyword_arguments``); ``{}`` without options."""
    if not options:
        return {}
    if name in TORCHVISION:
        builder = torchvision_builder(name)
        known = model_options.accepted(builder, _model_class(name), {})
        if timm_name(name) is not None:
            hint = f" (timm's {name}, with its own options, is named timm/{name})"
            return model_options.keyword_arguments(name, options, known, hint)
    else:
        from timm.models import model_entrypoint

        bare = timm_name(name) or name
        extra = model_options.TIMM_BUILD_OPTIONS
        known = model_options.accepted(model_entrypoint(bare), _model_class(name), extra)
    return model_options.keyword_arguments(name, options, known)


@functools.lru_cache(maxsize=64)
def _model_class(name: str) -> type:
    """The class of model ``name`` as built without options (on the meta device: no memory)."""
    return type(build(name, "meta"))


def default_input_size(name: str) -> int:
    """The side of the square input the model was trained at (timm's ``pretrained_cfg``); 224 otherwise."""
    if name in TORCHVISION:
        return TORCHVISION[name][1]
    bare = timm_name(name)
    if bare is not None:
        import timm

        size = timm.get_pretrained_cfg_value(bare, "input_size")
        if size:
            return int(size[-1])
    return 224


def default_size(name: str, options: ModelOptions = ()) -> tuple[int, int]:
    """The (height, width) model ``name`` built with ``options`` takes by default: its ``img_size`` option
    when given, else the square of ``default_input_size``."""
    size = model_options.input_side(options)
    if size is not None:
        return size
    side = default_input_size(name)
    return side, side


def final_stride(model: nn.Module) -> int | None:
    """The reduction of the last feature map as the model declares it (timm's ``feature_info``), or None."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and "reduction" in info[-1]:
        return int(info[-1]["reduction"])
    reduction = getattr(info, "reduction", None)
    if callable(reduction):
        return int(reduction()[-1])
    return None


def input_channels(model: nn.Module) -> int:
    """Channels of the first convolution (3 for RGB networks)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3
