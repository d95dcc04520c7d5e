"""Large, realistic instances of the SDK's result dataclasses, built from their type hints.

``build(cls)`` fills every field: arrays are 224 × 224 × 3 float32 (the size of an attack's perturbation),
bytes are a real 224 × 224 PNG (Pillow), lists hold ``LIST_LENGTH`` elements, strings are long and hold HTML
that must be escaped. Only the SDK's own exports are walked (``result_classes``).
"""

from __future__ import annotations

import dataclasses
import io
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LIST_LENGTH = 30
#: Fields whose arrays are not images: the series of a gradient run (T = 200) and an effective field's map.
ARRAY_SHAPES = {
    "distances": (200,),
    "jacobian_norms": (200,),
    "bounds": (200,),
    "state_jacobian_norms": (200,),
    "input_gradient_norms": (200,),
    "cell_state_norms": (200,),
    "step_norms": (200,),
    "loss_gradient_norms": (200,),
    "gradient_map": (224, 224),
}
HOSTILE = "<script>alert('x')</script> & \"quoted\""


def png_bytes(height: int = 224, width: int = 224) -> bytes:
    """A noisy RGB PNG written by Pillow."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def result_classes() -> list[type]:
    """Every dataclass (not exception) exported by ``nnprobe``, ``nnprobe.vision``, ``nnprobe.sequence``."""
    import nnprobe
    import nnprobe.sequence
    import nnprobe.vision

    found: dict[str, type] = {}
    for module in (nnprobe, nnprobe.vision, nnprobe.sequence):
        for name in module.__all__:
            value = getattr(module, name)
            is_result = isinstance(value, type) and dataclasses.is_dataclass(value)
            if (
                is_result
                and not issubclass(value, BaseException)
                and name not in ("TlsConfig", "FieldViolation")
            ):
                found[name] = value
    return [found[name] for name in sorted(found)]


def _value(hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        useful = [a for a in arguments if a is not type(None)]
        return _value(useful[0], name)
    if hint is np.ndarray:
        shape = ARRAY_SHAPES.get(name, (224, 224, 3))
        return np.abs(np.random.default_rng(1).normal(size=shape)).astype(np.float32) + 1e-3
    if hint is bytes:
        return png_bytes()
    if hint is Path:
        return Path(f"/tmp/{name} {HOSTILE}")
    if hint is str:
        return f"{name} {HOSTILE} " + "x" * 200
    if hint is bool:
        return True
    if hint is int:
        return 123456
    if hint is float:
        return 0.123456789
    if origin is list:
        return [_value(arguments[0], name) for _ in range(LIST_LENGTH)]
    if origin is tuple:
        items = arguments[:-1] if arguments and arguments[-1] is Ellipsis else arguments
        count = LIST_LENGTH if arguments and arguments[-1] is Ellipsis else len(items)
        return tuple(_value(items[0] if len(items) == 1 else items[i], name) for i in range(count))
    if origin is dict:
        return {f"key{i}": _value(arguments[1], name) for i in range(LIST_LENGTH)}
    if hint is typing.Any:
        return None
    if dataclasses.is_dataclass(hint):
        return build(hint)  # type: ignore[arg-type]
    raise TypeError(f"no value for {name}: {hint!r}")


def build(cls: type) -> Any:
    """An instance of the dataclass ``cls`` with every field filled (``raw`` stays None)."""
    import sys

    module = sys.modules[cls.__module__]
    hints = typing.get_type_hints(cls, vars(module))
    values = {}
    for f in dataclasses.fields(cls):
        if f.name == "raw":
            continue
        values[f.name] = _value(hints[f.name], f.name)
    return cls(**values)
