"""One-line summaries of result values: what a ``__repr__`` or an HTML cell shows instead of the value.

Bytes become their kind and size (``<PNG 12.3 kB>``), arrays their shape, dtype and range, lists their length
and first names, floats four significant digits; every summary is cut to a width. Nothing here prints bytes or
long arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Attributes that name an element of a list in a summary, first match wins.
_NAME_ATTRIBUTES = ("name", "label", "layer", "model", "cell", "word", "job_id", "kind")


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending with ``…`` when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def size_text(count: int) -> str:
    """A byte count as ``512 B``, ``12.3 kB`` or ``4.1 MB``."""
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


def number_text(value: Any) -> str:
    """Four significant digits (``0.0157``, ``1.235e+06``); integers as they are up to 16 digits, longer
    ones as their first four digits and exponent (``-1.000e+23``, exact digits, any size)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        digits = str(abs(int(value)))
        if len(digits) <= 16:
            return str(int(value))
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[0]}.{digits[1:4]}e+{len(digits) - 1:02d}"
    text = f"{float(value):.4g}"
    return text if any(c in text for c in ".enai") else text + ".0"


def is_png(value: Any) -> bool:
    """Whether ``value`` is the bytes of a PNG file."""
    return isinstance(value, (bytes, bytearray)) and bytes(value[:8]) == _PNG_SIGNATURE


def _array_text(value: np.ndarray) -> str:
    shape = "×".join(str(n) for n in value.shape) or "scalar"
    if value.size and value.size <= 6 and value.ndim <= 1:
        return "[" + ", ".join(number_text(v) for v in value.tolist()) + "]"
    text = f"{value.dtype}[{shape}]"
    if value.size and np.issubdtype(value.dtype, np.number):
        finite = value[np.isfinite(value)] if np.issubdtype(value.dtype, np.floating) else value
        if finite.size:
            text += f" in [{number_text(finite.min())}, {number_text(finite.max())}]"
    return text


def _element_name(item: Any) -> str | None:
    for attribute in _NAME_ATTRIBUTES:
        value = getattr(item, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def _sequence_text(value: list[Any] | tuple[Any, ...], width: int) -> str:
    if not value:
        return "[]"
    first = value[0]
    if dataclasses.is_dataclass(first):
        names = [n for n in (_element_name(item) for item in value[:4]) if n]
        head = f"{len(value)} × {type(first).__name__}"
        if names:
            head += ": " + ", ".join(names) + (", …" if len(value) > len(names) else "")
        return shorten(head, width)
    parts = []
    for item in value:
        parts.append(summarize(item, 24))
        if sum(len(p) + 2 for p in parts) > width - 12:
            break
    more = len(value) - len(parts)
    text = ", ".join(parts) + (f", … ({more} more)" if more else "")
    opening, closing = ("(", ")") if isinstance(value, tuple) else ("[", "]")
    return shorten(opening + text + closing, width)


def _dataclass_text(value: Any, width: int) -> str:
    parts = []
    for f in dataclasses.fields(value):
        if f.name == "raw":
            continue
        item = getattr(value, f.name)
        if is_empty(item):
            continue
        parts.append(f"{f.name}={summarize(item, 30)}")
    return shorten(f"{type(value).__name__}(" + ", ".join(parts) + ")", width)


def is_empty(value: Any) -> bool:
    """None, "", b"" and empty containers: the fields a summary leaves out."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict)):
        return len(value) == 0
    return False


def summarize(value: Any, width: int = 80) -> str:
    """``value`` as at most ``width`` characters of text; never its bytes or a long array."""
    if isinstance(value, (bytes, bytearray)):
        return f"<PNG {size_text(len(value))}>" if is_png(value) else f"<{size_text(len(value))}>"
    if isinstance(value, np.ndarray):
        return shorten(_array_text(value), width)
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return number_text(value)
    if isinstance(value, str):
        return shorten(repr(value), width)
    if isinstance(value, (list, tuple)):
        return _sequence_text(value, width)
    if isinstance(value, dict):
        items = ", ".join(f"{k}: {summarize(v, 24)}" for k, v in value.items())
        return shorten("{" + items + "}", width)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_text(value, width)
    return shorten(repr(value), width)
