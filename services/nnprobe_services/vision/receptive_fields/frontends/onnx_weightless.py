"""Weightless ONNX graphs: a model sent without the values of its large tensors, for analyses that read only
the graph (fields, boxes, ``verify`` on the transparent twin).

A *withheld* tensor keeps its name, element type and dimensions but holds no values at all: no
``raw_data``, no typed data and no external data, though its dimensions count elements (ONNX would call it
malformed). The SDK sends a model this way when the request needs only the graph
(``nnprobe.vision.onnx_graph``). Its stand-in here is a ``WithheldArray``: an array of the right shape and
dtype whose values are one broadcast zero (no memory), read for its shape only; reading its values is
refused (``require_values``) with what to do instead. A value computed from a withheld tensor is withheld
too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported

#: What to do when values were withheld but are needed.
SEND_VALUES = (
    "send the full model (with its weights) or upload it to the model repository and name it in `model.name`"
)


class WithheldArray(np.ndarray):
    """The stand-in of a withheld tensor: its shape and dtype are true, its values are not."""


def placeholder(shape: tuple[int, ...], dtype: Any = np.float32) -> WithheldArray:
    """A ``WithheldArray`` of ``shape`` and ``dtype`` (read-only, one broadcast element)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(d) for d in shape)).view(WithheldArray)


def is_withheld(tensor: Any) -> bool:
    """True for a ``TensorProto`` whose dimensions count elements but that holds no values anywhere."""
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        return False  # external data is refused where it is met (``onnx_tensors.check_embedded``)
    if not len(tensor.dims) or int(np.prod([int(d) for d in tensor.dims])) == 0:
        return False
    stores = (
        tensor.raw_data,
        tensor.float_data,
        tensor.int32_data,
        tensor.string_data,
        tensor.int64_data,
        tensor.double_data,
        tensor.uint64_data,
    )
    return not any(len(store) for store in stores)


def stand_in(tensor: Any) -> WithheldArray:
    """The ``placeholder`` of a withheld ``TensorProto`` (its own dims and element type)."""
    import onnx

    dtype: Any
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except Exception:  # an element type NumPy has no dtype for: only the shape is ever read
        dtype = np.float32
    return placeholder(tuple(tensor.dims), dtype)


def withheld_tensor(name: str, array: WithheldArray) -> Any:
    """A withheld ``TensorProto`` named ``name`` with ``array``'s shape and dtype (no values)."""
    import onnx

    return onnx.TensorProto(
        name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=list(array.shape)
    )


def require_values(value: np.ndarray, what: str) -> np.ndarray:
    """``value`` when it holds true values; ``Unsupported`` (FAILED_PRECONDITION) on ``model.onnx`` naming
    ``what`` (the operator and node that read it) when they were withheld."""
    if isinstance(value, WithheldArray):
        raise Unsupported(
            f"{what}, whose values were not sent (a weightless graph); {SEND_VALUES}", field="model.onnx"
        )
    return value


def withheld_value_needed(inference_error: str, constants: dict[str, np.ndarray]) -> None:
    """When ONNX shape inference failed with ``inference_error`` on a tensor of ``constants`` that was
    withheld (it needed the values: a shape, pads, scales computed from it), ``Unsupported`` naming the
    node and the tensor; nothing otherwise."""
    import re

    match = re.search(r"op_type:\s*([^,]*), node name: ([^)]*)\)", inference_error)
    for name, value in constants.items():
        if isinstance(value, WithheldArray) and re.search(rf"\b{re.escape(name)}\b", inference_error):
            node = f"{match.group(1)[:40]} (node '{match.group(2)[:80]}')" if match else "a node"
            raise Unsupported(
                f"ONNX shape inference at {node} reads the values of '{name[:80]}', which were not sent "
                f"(a weightless graph); {SEND_VALUES}",
                field="model.onnx",
            )


def refuse_withheld(data: bytes, field: str) -> None:
    """``Unsupported`` (FAILED_PRECONDITION) on ``field`` when the serialised model ``data`` withholds the
    values of any initializer: the request runs the model's own weights."""
    names = withheld_names(data)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise Unsupported(
            f"runs the model's own weights, and model.onnx was sent without their values (a weightless "
            f"graph: {shown} withheld); {SEND_VALUES}",
            field=field,
        )


def withheld_names(data: bytes) -> list[str]:
    """The names of the withheld initializers of a serialised model (``[]`` when unreadable: the reader
    reports why)."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # reported with its reason when the model is read
        return []
    return [t.name for t in model.graph.initializer if is_withheld(t)]
