"""ONNX models sent as their graph alone: the large weight tensors keep their name, element type and
dimensions but lose their values, so a model of hundreds of megabytes travels in kilobytes.

The receptive-field analysis reads only the graph (its operators, attributes and tensor shapes; ``verify``
runs a gradient-transparent twin that needs no weights), so ``compute_receptive_field`` sends ONNX models
this way unless the request needs their values. Small tensors (at most ``KEEP_BYTES``) and integer tensors
(at most ``KEEP_INTEGER_BYTES``: shapes, axes, pads, indices) keep their values, which the graph reads.
The server recognises a tensor without values as withheld and refuses any request that needs them.

Needs the ``onnx`` package (``pip install 'nnprobe[onnx]'``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Tensors up to this many bytes keep their values (Resize scales, Pad pads, Reshape shapes, ...).
KEEP_BYTES = 4096
#: Integer tensors up to this many bytes keep their values whatever their size (shape arithmetic).
KEEP_INTEGER_BYTES = 1 << 20
#: The stores a TensorProto may hold its values in.
_STORES = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def available() -> bool:
    """Whether the ``onnx`` package is installed here."""
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def _tensors(graph: Any) -> list[Any]:
    """Initializers and tensor-valued attributes of ``graph`` and of its sub-graphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                found.append(attribute.t)
            found.extend(attribute.tensors)
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                found.extend(_tensors(subgraph))
    return found


def _nbytes(tensor: Any) -> int:
    import onnx

    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # an element type NumPy does not know (bfloat16, 4-bit): count a byte each
        itemsize = 1
    return itemsize * math.prod(int(d) for d in tensor.dims)


def _keeps_values(tensor: Any) -> bool:
    import onnx

    kind = tensor.data_type
    if kind == onnx.TensorProto.STRING:
        return True
    integer = kind in (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
    size = _nbytes(tensor)
    return size <= KEEP_BYTES or (integer and size <= KEEP_INTEGER_BYTES)


def weightless(source: bytes | str | Path) -> tuple[bytes, int]:
    """The serialised model of ``source`` (bytes, or a file path whose external data, if any, is never
    read for the tensors withheld) without the values of its large tensors, and the number of tensors
    withheld. Raises ``ImportError`` without ``onnx``, ``ValueError`` when ``source`` is not an ONNX model."""
    import onnx
    from onnx import external_data_helper

    base = ""
    try:
        if isinstance(source, (str, Path)):
            model = onnx.load(str(source), load_external_data=False)
            base = str(Path(source).parent)
        else:
            model = onnx.load_from_string(source)
    except OSError:  # a file that cannot be read: as it is
        raise
    except Exception as error:  # the onnx library's parse errors have no common type
        raise ValueError(f"not an ONNX model: {type(error).__name__}: {str(error)[:200]}") from None
    withheld = 0
    for tensor in _tensors(model.graph):
        external = external_data_helper.uses_external_data(tensor)
        if _keeps_values(tensor):
            if external and base:  # a small tensor saved apart: its values are sent
                external_data_helper.load_external_data_for_tensor(tensor, base)
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
            continue
        for store in _STORES:
            tensor.ClearField(store)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        withheld += 1
    return model.SerializeToString(), withheld
