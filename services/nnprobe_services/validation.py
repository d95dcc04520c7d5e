"""Request-field validation helpers shared by the servicers. Each raises ``InvalidArgument`` naming
the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2

from nnprobe_services.errors import InvalidArgument, ResourceExhausted

FLOAT_DTYPES: dict[Any, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype(np.float32),
    common_pb2.DTYPE_FLOAT64: np.dtype(np.float64),
}


def tensor(
    message: common_pb2.Tensor,
    field: str,
    *,
    max_elements: int,
    ndim: int | None = None,
    finite: bool = True,
) -> np.ndarray:
    """Decode a Tensor field, checking its byte length, rank, size limit and (for floats) finiteness."""
    try:
        array = tensors.to_numpy(message, max_elements=max_elements)
    except OverflowError as error:
        raise ResourceExhausted(str(error), field=field) from None
    except ValueError as error:
        raise InvalidArgument(str(error), field=field) from None
    if ndim is not None and array.ndim != ndim:
        raise InvalidArgument(f"must have {ndim} dimensions, got shape {list(array.shape)}", field=field)
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument("contains NaN or Inf values", field=field)
    return array


def float_dtype(code: int, field: str, default: int) -> np.dtype:
    """A float32/float64 ``DType`` field, ``default`` when unspecified."""
    code = code or default
    if code not in FLOAT_DTYPES:
        name = common_pb2.DType.Name(code) if code in common_pb2.DType.values() else str(code)  # type: ignore[arg-type]
        raise InvalidArgument(f"must be DTYPE_FLOAT32 or DTYPE_FLOAT64, not {name}", field=field)
    return FLOAT_DTYPES[code]


def positive(value: int, field: str, *, default: int | None = None, maximum: int | None = None) -> int:
    """A positive integer field; 0 means ``default`` when one is given."""
    if value == 0 and default is not None:
        value = default
    if value <= 0:
        raise InvalidArgument(f"must be positive, got {value}", field=field)
    if maximum is not None and value > maximum:
        raise ResourceExhausted(f"is {value}; the limit is {maximum}", field=field)
    return value


def finite_non_negative(value: float, field: str) -> float:
    """A float field that must be finite and >= 0, 0 included."""
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"must be a finite number >= 0, got {value}", field=field)
    return value


def optional(message: Any, name: str) -> Any:
    """The value of the proto3 ``optional`` field ``name`` of ``message``, or None when it is unset (so that
    an explicit 0 stays 0 and only an absent field takes the default)."""
    return getattr(message, name) if message.HasField(name) else None


def tolerance(value: float | None, field: str, default: float) -> float:
    """A tolerance field: None (unset) means ``default``; given, it must be finite and >= 0, and 0 (exact)
    is kept. Raises ``InvalidArgument`` naming ``field``."""
    if value is None:
        return default
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            f"must be a finite number >= 0 (0 is exact; leave it unset for {default:g}), got {value}",
            field=field,
        )
    return value


def enum_value(value: int, enum, field: str, default: int) -> int:
    """An enum field: unspecified (0) means ``default``; values outside the enum are rejected."""
    if value not in enum.values():
        raise InvalidArgument(f"unknown value {value}; expected one of {list(enum.keys())[1:]}", field=field)
    return value or default
