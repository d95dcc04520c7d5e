"""A repository model's ``config.yaml``: schema, validation with field-named errors, and the allowed names
and versions (Triton's model-repository layout, simplified to image classification).

Example::

    task: image_classification
    input: {height: 224, width: 224, channel_order: rgb, value_range: [0, 1]}
    preprocessing: {resize: 256, interpolation: bilinear, mean: [0.485, 0.456, 0.406],
                    std: [0.229, 0.224, 0.225]}
    labels: labels.txt
    default_version: 1

Pixels reach a model as ``(x * value_range[1] - mean) / std`` per channel, channels in ``channel_order``,
``x`` the [0, 1] RGB pixels after resizing the shorter side to ``resize`` and centre-cropping to
``input.height`` x ``input.width`` (torchvision's evaluation transform). ``mean`` and ``std`` are in the units
of ``value_range``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from nnprobe_services.errors import InvalidArgument

TASKS = ("image_classification",)
CHANNEL_ORDERS = ("rgb", "bgr")
INTERPOLATIONS = ("bilinear", "bicubic")
VALUE_RANGES = ((0.0, 1.0), (0.0, 255.0))
#: Model names: what Triton allows, minus anything that could leave the repository folder.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Labels files: a plain file name inside the model's folder.
LABELS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SIDE = 4096
MAX_LABELS = 100_000
MAX_CONFIG_BYTES = 64 * 1024
MAX_VERSION = 10**9


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is a valid model name (letters, digits, ``_ . -``, at most 64, not starting with a
    dot or dash); else ``InvalidArgument`` naming ``field``."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"{name!r} is not a model name: use 1 to 64 letters, digits, '_', '.', '-', starting with a "
            "letter or digit, without '..'",
            field=field,
        )
    return name


def is_version_name(text: str) -> bool:
    """Whether ``text`` names a version folder: ASCII decimal digits without a leading zero. (``str.isdigit``
    alone also accepts other scripts' digits and superscripts, which ``int`` reads differently or refuses.)"""
    return text.isascii() and text.isdigit() and not text.startswith("0")


def check_version(version: str | int, field: str = "version") -> int:
    """A model version: a positive integer (Triton's folder names ``1``, ``2``...)."""
    text = str(version)
    if not is_version_name(text) or not 1 <= int(text) <= MAX_VERSION:
        raise InvalidArgument(
            f"{version!r} is not a version: use an integer in 1..{MAX_VERSION}", field=field
        )
    return int(text)


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

    def to_dict(self) -> dict[str, Any]:
        """The YAML document this config is read from (round-trips through ``parse``)."""
        document: dict[str, Any] = {
            "task": self.task,
            "input": {
                "height": self.height,
                "width": self.width,
                "channel_order": self.channel_order,
                "value_range": list(self.value_range),
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
        return document

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"must be a mapping, got {type(value).__name__}", field=field)
    return value


def _unknown(document: dict[str, Any], known: tuple[str, ...], field: str) -> None:
    extra = sorted(str(key) for key in document if key not in known)
    if extra:
        raise InvalidArgument(f"unknown key(s) {', '.join(extra)}; known: {', '.join(known)}", field=field)


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"must be an integer in {low}..{high}, got {value!r}", field=field)
    return value


def _choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    text = str(value).lower() if isinstance(value, str) else value
    if text not in choices:
        raise InvalidArgument(f"must be one of {', '.join(choices)}, got {value!r}", field=field)
    return text


def _triple(value: Any, field: str, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise InvalidArgument(f"must be a list of 3 numbers (one per channel), got {value!r}", field=field)
    numbers = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise InvalidArgument(f"must be a finite number, got {item!r}", field=f"{field}[{i}]")
        if positive and item <= 0:
            raise InvalidArgument(f"must be positive, got {item!r}", field=f"{field}[{i}]")
        numbers.append(float(item))
    return numbers[0], numbers[1], numbers[2]


def parse(document: Any, field: str = "config") -> ModelConfig:
    """Validate a parsed YAML document; every problem is ``InvalidArgument`` naming ``field.key.path``."""
    root = _mapping(document, field)
    _unknown(root, ("task", "input", "preprocessing", "labels", "default_version"), field)
    task = _choice(root.get("task", "image_classification"), TASKS, f"{field}.task")
    if "input" not in root:
        raise InvalidArgument("is required (height and width of the model's input)", field=f"{field}.input")
    spec = _mapping(root["input"], f"{field}.input")
    _unknown(spec, ("height", "width", "channel_order", "value_range", "layout"), f"{field}.input")
    if "height" not in spec or "width" not in spec:
        raise InvalidArgument("needs height and width", field=f"{field}.input")
    height = _integer(spec["height"], f"{field}.input.height", 1, MAX_SIDE)
    width = _integer(spec["width"], f"{field}.input.width", 1, MAX_SIDE)
    channel_order = _choice(spec.get("channel_order", "rgb"), CHANNEL_ORDERS, f"{field}.input.channel_order")
    _choice(spec.get("layout", "nchw"), ("nchw",), f"{field}.input.layout")
    raw_range = spec.get("value_range", [0, 1])
    value_range = tuple(float(v) for v in raw_range) if isinstance(raw_range, list | tuple) else None
    if value_range not in VALUE_RANGES:
        raise InvalidArgument(
            f"must be [0, 1] or [0, 255], got {raw_range!r}", field=f"{field}.input.value_range"
        )
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
    interpolation = _choice(
        prep.get("interpolation", "bilinear"), INTERPOLATIONS, f"{field}.preprocessing.interpolation"
    )
    mean = _triple(prep.get("mean", [0, 0, 0]), f"{field}.preprocessing.mean", positive=False)
    std = _triple(prep.get("std", [1, 1, 1]), f"{field}.preprocessing.std", positive=True)
    labels = root.get("labels")
    if labels is not None and not (isinstance(labels, str) and LABELS_PATTERN.fullmatch(labels)):
        raise InvalidArgument(
            f"must be a file name inside the model's folder (no path), got {labels!r}",
            field=f"{field}.labels",
        )
    default_version = root.get("default_version")
    if default_version is not None:
        default_version = check_version(default_version, f"{field}.default_version")
    return ModelConfig(
        task=task,
        height=height,
        width=width,
        channel_order=channel_order,
        value_range=(value_range[0], value_range[1]),
        resize=resize,
        interpolation=interpolation,
        mean=mean,
        std=std,
        labels=labels,
        default_version=default_version,
    )


def parse_yaml(text: str, field: str = "config") -> ModelConfig:
    """``parse`` of YAML text (``yaml.safe_load``: no Python objects); bad YAML is ``InvalidArgument``."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"is larger than {MAX_CONFIG_BYTES} bytes", field=field)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidArgument(f"is not valid YAML: {error}", field=field) from None
    return parse(document, field)


def parse_labels(text: str, field: str = "labels") -> tuple[str, ...]:
    """One label per line (trailing blank lines ignored); at most ``MAX_LABELS``."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_LABELS:
        raise InvalidArgument(f"has {len(lines)} lines; the limit is {MAX_LABELS}", field=field)
    return tuple(line.strip() for line in lines)
