"""Constructor options of the named models (``catalogue``) that change their geometry: timm's
``output_stride`` (a dilated ResNet), ``features_only`` with ``out_indices`` (a list of feature maps),
``img_size`` (a vision transformer's grid), torchvision's segmentation heads (``num_classes``,
``aux_loss``), ...

Options travel as JSON texts by name (``ComputeReceptiveFieldRequest.model.options``); ``canonical`` makes
them a sorted tuple of (name, JSON text) pairs, hashable, so that they are part of every cache key of a
capture. ``keyword_arguments`` checks them against the model's own constructor, the one source of what it
accepts: the builder function's keywords and its model class's ``__init__`` parameters (timm adds
``features_only`` and ``out_indices``). An unknown name, or a value of another type than the parameter's
default (or annotation), is ``InvalidSpec`` (INVALID_ARGUMENT) on ``model.options[<name>]`` listing the
accepted names.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec

#: Options as the capture cache keys them: (name, JSON text) pairs sorted by name.
ModelOptions = tuple[tuple[str, str], ...]
#: Keywords of a builder that choose weights, never geometry.
_NOT_OPTIONS = {
    "weights", "weights_backbone", "progress", "pretrained", "pretrained_cfg", "self", "kwargs", "device",
    "dtype",
}  # fmt: skip
#: What timm's ``build_model_with_cfg`` takes besides the class's own parameters (None: any JSON value).
TIMM_BUILD_OPTIONS: dict[str, Any] = {"features_only": False, "out_indices": None}


def _quoted(text: str) -> str:
    text = text if len(text) <= 80 else text[:77] + "..."
    return f'"{text}"'


def canonical(options: Mapping[str, str]) -> ModelOptions:
    """``options`` (name -> JSON text) sorted, each value re-written compactly; ``InvalidSpec`` on
    ``model.options[<name>]`` for a value that is not JSON."""
    result = []
    for name in sorted(options):
        try:
            value = json.loads(options[name])
        except ValueError:
            raise InvalidSpec(
                'must be a JSON value (8, true, [1, 2], "text"), not ' + _quoted(options[name]),
                field=f"model.options[{name}]",
            ) from None
        result.append((name, json.dumps(value, sort_keys=True)))
    return tuple(result)


def values(options: ModelOptions) -> dict[str, Any]:
    """The options as Python values."""
    return {name: json.loads(text) for name, text in options}


def input_side(options: ModelOptions) -> tuple[int, int] | None:
    """The (height, width) that ``img_size`` sets (an int or [height, width]), None without one."""
    size = values(options).get("img_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    return None


def accepted(builder: Callable[..., Any], model_class: type, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The options a model built by ``builder`` as a ``model_class`` takes: name -> its parameter
    (``inspect.Parameter``) or, for ``extra`` names, its default value."""
    found: dict[str, Any] = {}
    for source in (model_class, builder):  # a class's signature is its __init__'s, without self
        for parameter in _parameters(source):
            found.setdefault(parameter.name, parameter)
    for name, default in extra.items():
        found.setdefault(name, default)
    return {name: spec for name, spec in found.items() if name not in _NOT_OPTIONS}


@functools.lru_cache(maxsize=256)
def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature
        return None


def _parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    signature = _signature(function)
    if signature is None:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in signature.parameters.values() if p.kind in kinds]


def keyword_arguments(
    model: str, options: ModelOptions, known: Mapping[str, Any], hint: str = ""
) -> dict[str, Any]:
    """``options`` as keyword arguments of model ``model``'s constructor, checked against ``known``
    (``accepted``); ``hint`` ends the message about an unknown one. Raises ``InvalidSpec`` naming
    ``model.options[<name>]``."""
    given = values(options)
    for name, value in given.items():
        field = f"model.options[{name}]"
        if name not in known:
            raise InvalidSpec(
                f"{model} takes no option {_quoted(name)}; it takes {', '.join(sorted(known))}{hint}",
                field=field,
            )
        problem = _type_problem(known[name], value)
        if problem:
            raise InvalidSpec(f"option {name} of {model} {problem}", field=field)
    return given


def _json_kind(value: Any) -> str:
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a text", list: "a list"}
    return "null" if value is None else kinds.get(type(value), "an object")


def _type_problem(spec: Any, value: Any) -> str:
    """Why ``value`` does not fit the parameter ``spec`` (its default's type, or its annotation's words);
    "" when it fits or nothing says."""
    default = spec.default if isinstance(spec, inspect.Parameter) else spec
    annotation = str(spec.annotation) if isinstance(spec, inspect.Parameter) else ""
    if default is inspect.Parameter.empty or default is None or value is None:
        return ""
    wanted: tuple[type, ...]
    if isinstance(default, bool):
        wanted, words = (bool,), "true or false"
    elif isinstance(default, int):
        wanted, words = (int,), "an integer"
    elif isinstance(default, float):
        wanted, words = (int, float), "a number"
    elif isinstance(default, str):
        wanted, words = (str,), "a text"
    elif isinstance(default, (tuple, list)):
        wanted, words = (list,), "a list"
    else:
        return ""
    if "uple" in annotation or "Sequence" in annotation or "List" in annotation or "list" in annotation:
        wanted, words = (*wanted, list), f"{words} or a list"
    fits = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
    return "" if fits else f"must be {words} (its default is {json.dumps(default)}), not {_json_kind(value)}"
