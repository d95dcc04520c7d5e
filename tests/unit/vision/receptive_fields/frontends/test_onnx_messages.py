"""Refusals of ONNX graphs read as text a user can act on: whatever text an operator's string attributes
hold (ONNX stores them as bytes), no message carries a Python bytes literal or an object's repr, and a
refusal met during the analysis names the operator, the node and the last end point that can be answered."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import graph
from nnprobe_services.vision.receptive_fields.arithmetic import FieldError
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader
from onnx import TensorProto, helper, numpy_helper

#: Python reprs that must never reach a user: bytes literals, object and class reprs, escaped bytes.
REPRS = re.compile(r"""(?<![\w'"])b['"]|<[\w.]+ object at|<class '|\\x[0-9a-f]{2}""")
#: Attribute text: letters (some beyond ASCII), digits and punctuation that quoting leaves as they are.
TEXT = st.text(alphabet="abcxyzABCXYZ_-. 019éßü", max_size=12)
#: Operators and the string attributes they read.
STRING_ATTRIBUTES = {
    "Resize": ["mode", "coordinate_transformation_mode", "nearest_mode"],
    "Upsample": ["mode"],
    "Pad": ["mode"],
    "DepthToSpace": ["mode"],
    "Conv": ["auto_pad"],
    "MaxPool": ["auto_pad"],
    "CustomOp": ["flavour", "mode"],
}


def _model(op: str, attributes: dict[str, str]) -> bytes:
    """conv 3x3 (3 -> 4 channels) on a 16 x 16 image, then ``op`` with ``attributes``, then a 1x1 conv."""
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    weights = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W"),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "V"),
        numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "K"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
    ]
    inputs = {
        "Resize": ["t", "", "scales"],
        "Upsample": ["t", "scales"],
        "Pad": ["t", "pads"],
        "Conv": ["t", "K"],
    }.get(op, ["t"])
    extra = {"DepthToSpace": {"blocksize": 2}, "MaxPool": {"kernel_shape": [2, 2]}, "Conv": {}}.get(op, {})
    domain = "example.custom" if op == "CustomOp" else ""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["t"], kernel_shape=[3, 3], name="first"),
        helper.make_node(op, inputs, ["u"], name="the_node", domain=domain, **attributes, **extra),
        helper.make_node("Conv", ["u", "V"] if op != "DepthToSpace" else ["u", "V1"], ["y"], name="last"),
    ]
    if op == "DepthToSpace":
        weights.append(numpy_helper.from_array(np.ones((4, 1, 1, 1), np.float32), "V1"))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph_proto = helper.make_graph(nodes, "g", [image], [out], initializer=weights)
    return helper.make_model(graph_proto, opset_imports=opsets).SerializeToString()


@st.composite
def requests(draw) -> tuple[str, dict[str, str]]:
    op = draw(st.sampled_from(sorted(STRING_ATTRIBUTES)))
    names = draw(st.lists(st.sampled_from(STRING_ATTRIBUTES[op]), min_size=1, unique=True))
    text = st.one_of(
        st.sampled_from(["linear", "cubic", "nearest", "SAME_UPPER", "VALID", "reflect", "CRD", "wrap"]),
        TEXT,
    )
    return op, {name: draw(text) for name in names}


@settings(max_examples=150, deadline=None)
@given(requests())
def test_no_refusal_carries_a_python_repr(request):
    op, attributes = request
    try:
        capture = onnx_reader.read(_model(op, attributes), None)
        graph.analyse_capture(capture, Fraction(1, 2), "last")
    except FieldError as error:
        message = error.message
        assert not REPRS.search(message), message
        if "cannot be mapped" in message:  # met during the analysis: operator, node, last end point
            assert "the_node" in message and op in message, message
            assert "the last end point that can be answered is 'first'" in message, message
