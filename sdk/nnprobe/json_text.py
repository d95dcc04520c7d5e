"""Strict JSON text of results (RFC 8259 has no Infinity or NaN): a float that is not finite is written
as the string ``"inf"``, ``"-inf"`` or ``"nan"``, which ``float()`` reads back."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, floats, anything JSON takes) with every non-finite float replaced
    by its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` as strict JSON (``finite``, then ``json.dumps`` with ``allow_nan=False``)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)
