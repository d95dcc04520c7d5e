"""Conversion between numpy arrays and the wire ``Tensor`` message.

The wire format is little-endian, row-major, with no strides: ``data`` holds exactly
``prod(shape) * itemsize`` bytes. Both the SDK and the servers use these two functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnprobe.api.common.v1 import common_pb2

_TO_NUMPY: dict[Any, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
    common_pb2.DTYPE_INT32: np.dtype("<i4"),
    common_pb2.DTYPE_UINT8: np.dtype("u1"),
    common_pb2.DTYPE_BOOL: np.dtype("?"),
}
_FROM_NUMPY = {dt.newbyteorder("=") if dt.byteorder != "|" else dt: code for code, dt in _TO_NUMPY.items()}


def dtype_name(code: int) -> str:
    """``DTYPE_FLOAT32`` -> ``float32``; unknown codes give ``unknown(N)``."""
    dt = _TO_NUMPY.get(code)
    return dt.name if dt is not None else f"unknown({code})"


def to_tensor(array: np.ndarray | list | float) -> common_pb2.Tensor:
    """Encode an array (any supported dtype, any layout) as a wire ``Tensor``."""
    arr = np.asarray(array)
    code = _FROM_NUMPY.get(arr.dtype.newbyteorder("=") if arr.dtype.byteorder != "|" else arr.dtype)
    if code is None:
        supported = ", ".join(sorted(dt.name for dt in _TO_NUMPY.values()))
        raise TypeError(f"dtype {arr.dtype} cannot be sent; supported: {supported}")
    wire = np.ascontiguousarray(arr, dtype=_TO_NUMPY[code])
    return common_pb2.Tensor(dtype=code, shape=list(arr.shape), data=wire.tobytes())


def to_numpy(tensor: common_pb2.Tensor, *, max_elements: int | None = None) -> np.ndarray:
    """Decode a wire ``Tensor``; raises ``ValueError`` saying what is wrong with it.

    The result is a native-endian, writable copy.
    """
    dt = _TO_NUMPY.get(tensor.dtype)
    if dt is None:
        known = tensor.dtype in common_pb2.DType.values()
        name = common_pb2.DType.Name(tensor.dtype) if known else str(tensor.dtype)
        raise ValueError(f"dtype {name} is not supported")
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise OverflowError(f"shape {list(shape)} has {count} elements; the limit is {max_elements}")
    expected = count * dt.itemsize
    if len(tensor.data) != expected:
        raise ValueError(
            f"data has {len(tensor.data)} bytes but shape {list(shape)} of {dt.name} needs {expected}"
        )
    return np.frombuffer(tensor.data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)
