"""A repository model's ``config.yaml``: schema, validation with field-named errors, and the allowed names
and versions (Triton's model-repository layout, simplified to image classification).

Example::

    task: image_classification
    input: {height: 224, width: 224, channel_order: rgb, value_range: [0, 1], layout: nchw, dtype: float32}
    preprocessing: {resize: 256, interpolation: bilinear, mean: [0.485, 0.456, 0.406],
                    std: [0.229, 0.224, 0.225]}
    labels: labels.txt
    default_version: 1
    output: logits              # or probabilities: the network ends in a softmax
    num_classes: 1000           # optional; checked against the network's output (labels' count wins)

Pixels reach a model as ``(x * value_range[1] - mean) / std`` per channel, channels in ``channel_order``,
``x`` the [0, 1] RGB pixels after resizing the shorter side to ``resize`` and centre-cropping to
``input.height`` x ``input.width`` (torchvision's evaluation transform). ``mean`` and ``std`` are in the units
of ``value_range``. ``layout: nhwc`` feeds the tensor as (N, H, W, 3); ``dtype: uint8`` feeds the [0, 255]
pixels rounded to integers (value range [0, 255], no mean or std: the network normalises them itself).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.names import (
    MAX_LABELS,
    MAX_VERSION,
    NAME_PATTERN,
    check_name,
    check_version,
    decode,
    is_version_name,
    parse_labels,
)
from nnprobe_services.repository.quoting import quote
from nnprobe_services.repository.schema import MAX_CONFIG_BYTES, load_document
from nnprobe_services.repository.schema import choice as _choice
from nnprobe_services.repository.schema import integer as _integer
from nnprobe_services.repository.schema import mapping as _mapping
from nnprobe_services.repository.schema import unknown_keys as _unknown

TASKS = ("image_classification",)
CHANNEL_ORDERS = ("rgb", "bgr")
INTERPOLATIONS = ("bilinear", "bicubic")
#: The input tensor's layout and element type (Triton's FORMAT_NCHW/FORMAT_NHWC, TYPE_FP32/TYPE_UINT8).
LAYOUTS = ("nchw", "nhwc")
DTYPES = ("float32", "uint8")
#: What the network returns: ``logits`` (the server applies softmax) or ``probabilities`` (a softmax's).
OUTPUTS = ("logits", "probabilities")
KEYS = ("task", "input", "preprocessing", "labels", "default_version", "output", "num_classes")
VALUE_RANGES = ((0.0, 1.0), (0.0, 255.0))
#: Names shared with every repository (``repository.names``), read here by their older import path too.
__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_LABELS",
    "MAX_VERSION",
    "NAME_PATTERN",
    "ModelConfig",
    "check_name",
    "check_version",
    "decode",
    "is_version_name",
    "parse",
    "parse_labels",
    "parse_yaml",
]
#: Labels files: a plain file name inside the model's folder.
LABELS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SIDE = 4096


@dataclass(frozen=True)
class ModelConfig:
    """A validated ``config.yaml``. Sizes in pixels; ``mean``/``std`` in units of ``value_range``."""

    task: str
    height: int
    width: int
    channel_order: str
    value_range: tuple[float, float]
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: str | None
    default_version: int | None
    output: str = "logits"
    num_classes: int | None = None
    layout: str = "nchw"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """The YAML document this config is read from (round-trips through ``parse``)."""
        document: dict[str, Any] = {
            "task": self.task,
            "input": {
                "height": self.height,
                "width": self.width,
                "channel_order": self.channel_order,
                "value_range": list(self.value_range),
                "layout": self.layout,
                "dtype": self.dtype,
            },
            "preprocessing": {
                "resize": self.resize,
                "interpolation": self.interpolation,
                "mean": list(self.mean),
                "std": list(self.std),
            },
        }
        if self.labels is not None:
            document["labels"] = self.labels
        if self.default_version is not None:
            document["default_version"] = self.default_version
        if self.output != "logits":
            document["output"] = self.output
        if self.num_classes is not None:
            document["num_classes"] = self.num_classes
        return document

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"must be a number, got {quote(value)}", field=field)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise InvalidArgument(f"must be a finite number, got {quote(value)}", field=field)
    return number


def _numbers(value: Any, field: str, count: int, what: str) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != count:
        raise InvalidArgument(f"must be a list of {count} numbers ({what}), got {quote(value)}", field=field)
    return [_number(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _triple(value: Any, field: str, *, positive: bool) -> tuple[float, float, float]:
    numbers = _numbers(value, field, 3, "one per channel")
    for i, number in enumerate(numbers):
        if positive and number <= 0:
            raise InvalidArgument(f"must be positive, got {quote(value[i])}", field=f"{field}[{i}]")
    return numbers[0], numbers[1], numbers[2]


def _input(root: dict[str, Any], field: str) -> tuple[int, int, str, tuple[float, float], str, str]:
    """(height, width, channel_order, value_range, layout, dtype) of ``input``."""
    if "input" not in root:
        raise InvalidArgument("is required (height and width of the model's input)", field=f"{field}.input")
    spec = _mapping(root["input"], f"{field}.input")
    _unknown(spec, ("height", "width", "channel_order", "value_range", "layout", "dtype"), f"{field}.input")
    if "height" not in spec or "width" not in spec:
        raise InvalidArgument("needs height and width", field=f"{field}.input")
    height = _integer(spec["height"], f"{field}.input.height", 1, MAX_SIDE)
    width = _integer(spec["width"], f"{field}.input.width", 1, MAX_SIDE)
    channel_order = _choice(spec.get("channel_order", "rgb"), CHANNEL_ORDERS, f"{field}.input.channel_order")
    layout = _choice(spec.get("layout", "nchw"), LAYOUTS, f"{field}.input.layout")
    dtype = _choice(spec.get("dtype", "float32"), DTYPES, f"{field}.input.dtype")
    raw_range = spec.get("value_range", [0, 255] if dtype == "uint8" else [0, 1])
    low, high = _numbers(raw_range, f"{field}.input.value_range", 2, "low and high")
    if (low, high) not in VALUE_RANGES:
        raise InvalidArgument(
            f"must be [0, 1] or [0, 255], got {quote(raw_range)}", field=f"{field}.input.value_range"
        )
    if dtype == "uint8" and high != 255:
        raise InvalidArgument(
            "must be [0, 255] for a uint8 input (input.dtype: uint8 takes integers 0..255)",
            field=f"{field}.input.value_range",
        )
    return height, width, channel_order, (low, high), layout, dtype


def _uint8_plain(dtype: str, mean: tuple[float, ...], std: tuple[float, ...], field: str) -> None:
    """A uint8 input takes the pixels themselves: mean and std would be rounded away."""
    if dtype != "uint8":
        return
    for key, values, neutral in (("mean", mean, 0.0), ("std", std, 1.0)):
        if any(value != neutral for value in values):
            raise InvalidArgument(
                f"must be left out for a uint8 input (input.dtype: uint8 feeds the integer pixels 0..255; "
                f"the network normalises them itself), got {list(values)}",
                field=f"{field}.preprocessing.{key}",
            )


def _labels_file(labels: Any, field: str) -> str | None:
    if labels is not None and not (isinstance(labels, str) and LABELS_PATTERN.fullmatch(labels)):
        raise InvalidArgument(
            f"must be a file name inside the model's folder (no path), got {quote(labels)}", field=field
        )
    return labels


def parse(document: Any, field: str = "config") -> ModelConfig:
    """Validate a parsed YAML document; every problem is ``InvalidArgument`` naming ``field.key.path``."""
    if not isinstance(document, dict | None):
        raise InvalidArgument(
            f"must be a YAML mapping (key: value lines), got {type(document).__name__}", field=field
        )
    root = _mapping(document, field)
    _unknown(root, KEYS, field)
    task = _choice(root.get("task", "image_classification"), TASKS, f"{field}.task")
    height, width, channel_order, value_range, layout, dtype = _input(root, field)
    prep = _mapping(root.get("preprocessing"), f"{field}.preprocessing")
    _unknown(prep, ("resize", "interpolation", "mean", "std"), f"{field}.preprocessing")
    resize = _integer(
        prep.get("resize", max(height, width)), f"{field}.preprocessing.resize", 1, 4 * MAX_SIDE
    )
    if resize < max(height, width):
        raise InvalidArgument(
            f"must be at least the input's larger side {max(height, width)}, got {resize}",
            field=f"{field}.preprocessing.resize",
        )
    default_version = root.get("default_version")
    num_classes = root.get("num_classes")
    mean = _triple(prep.get("mean", [0, 0, 0]), f"{field}.preprocessing.mean", positive=False)
    std = _triple(prep.get("std", [1, 1, 1]), f"{field}.preprocessing.std", positive=True)
    _uint8_plain(dtype, mean, std, field)
    return ModelConfig(
        task=task,
        height=height,
        width=width,
        channel_order=channel_order,
        value_range=value_range,
        resize=resize,
        interpolation=_choice(
            prep.get("interpolation", "bilinear"), INTERPOLATIONS, f"{field}.preprocessing.interpolation"
        ),
        mean=mean,
        std=std,
        labels=_labels_file(root.get("labels"), f"{field}.labels"),
        default_version=None
        if default_version is None
        else check_version(default_version, f"{field}.default_version"),
        output=_choice(root.get("output", "logits"), OUTPUTS, f"{field}.output"),
        num_classes=None
        if num_classes is None
        else _integer(num_classes, f"{field}.num_classes", 1, MAX_LABELS),
        layout=layout,
        dtype=dtype,
    )


def parse_yaml(text: str | bytes, field: str = "config") -> ModelConfig:
    """``parse`` of YAML text or UTF-8 bytes (``schema.load_document``: plain data, no aliases, bounded
    depth, no repeated keys); at most ``MAX_CONFIG_BYTES``. Every problem is ``InvalidArgument`` naming
    ``field``."""
    return parse(load_document(text, field), field)
