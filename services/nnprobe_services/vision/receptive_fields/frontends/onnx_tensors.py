"""The data an ONNX model sent as bytes holds, read safely: node attributes, embedded tensors as NumPy arrays
(``InvalidSpec`` on ``model.onnx`` when they do not match their type and shape), constants, and the refusal of
external data (which would be read from the server's own files). ``frontends.onnx_reader`` maps the graph;
this module only decodes what the graph carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec
from nnprobe_services.vision.receptive_fields.frontends import onnx_weightless


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes by name, as Python values. Raises ``InvalidSpec`` on ``model.onnx`` for an
    attribute without a type, or of another type than its operator's schema declares (client bytes: the
    value read would not be what the operator means)."""
    import onnx

    declared: dict[str, Any]  # the schema's attribute declarations (OpSchema.Attribute)
    try:
        declared = onnx.defs.get_schema(node.op_type, domain=node.domain).attributes
    except Exception:  # an operator ONNX does not know: it maps as unsupported, its attributes unread
        declared = {}
    values = {}
    for attribute in node.attribute:
        kind = onnx.AttributeProto.AttributeType.Name(attribute.type)
        expected: Any = declared.get(attribute.name)
        wanted = None if expected is None else int(expected.type.value)
        if attribute.type == onnx.AttributeProto.UNDEFINED or wanted not in (None, attribute.type):
            wants = (
                ""
                if wanted is None
                else f"; {node.op_type} takes {onnx.AttributeProto.AttributeType.Name(wanted)}"
            )
            raise InvalidSpec(
                f"attribute {attribute.name!r} of node {node.name!r} is of type {kind}{wants}",
                field="model.onnx",
            )
        values[attribute.name] = onnx.helper.get_attribute_value(attribute)
    return values


def tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers and tensor attributes, subgraphs' included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            yield from attribute.tensors
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from tensors(subgraph)


def check_embedded(graph: Any) -> None:
    """A model sent as bytes must hold its tensors itself: external data would be read from the server's
    own files."""
    import onnx

    for tensor in tensors(graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise InvalidSpec(
                f"tensor {tensor.name!r} refers to external data ({location!r}); an ONNX model sent in the "
                f"request must hold all its tensors",
                field="model.onnx",
            )


def tensor_array(tensor: Any, what: str) -> np.ndarray:
    """The values of an embedded ``TensorProto``; ``InvalidSpec`` when they do not match its type and
    shape. A withheld tensor (``onnx_weightless``: no values at all) reads as its stand-in."""
    import onnx

    if onnx_weightless.is_withheld(tensor):
        return onnx_weightless.stand_in(tensor)
    try:
        return np.asarray(onnx.numpy_helper.to_array(tensor))
    except Exception as error:  # client bytes: sizes, types or data that do not agree
        raise InvalidSpec(
            f"{what} {tensor.name!r} cannot be read: {type(error).__name__}: {str(error).strip()[:200]}",
            field="model.onnx",
        ) from None


def constant_value(node: Any) -> np.ndarray | None:
    """The value of a ``Constant`` node, or None for a form that is not read (strings, sparse)."""
    a = {attribute.name: attribute for attribute in node.attribute}
    if "value" in a:
        return tensor_array(a["value"].t, f"constant node {node.name!r}")
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return np.asarray(attributes(node)[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(list(attributes(node)[key]), dtype=dtype)
    return None
