"""ONNX models read into the receptive-field graph (``ir``) from their graph alone, without running them.

The image input is fixed to (1, C, H, W) at the requested size and ONNX's shape inference gives every
tensor's shape; operators map onto the same typed operations as the PyTorch front-end (through the registry
of ``onnx_lowerings``), so a network exported with ``torch.onnx.export`` gets the same fields as when it is
captured from PyTorch. Node names are the ONNX nodes' own (``/layer1/layer1.0/conv1/Conv``); the module path
is read from them where the exporter wrote one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnprobe_services.repository.artifacts import non_utf8_string
from nnprobe_services.vision.receptive_fields.arithmetic import InvalidSpec, Unsupported
from nnprobe_services.vision.receptive_fields.frontends.onnx_lowerings import OnnxNode, lower_node
from nnprobe_services.vision.receptive_fields.frontends.onnx_tensors import (
    attributes,
    check_embedded,
    constant_value,
    tensor_array,
)
from nnprobe_services.vision.receptive_fields.frontends.onnx_weightless import (
    WithheldArray,
    placeholder,
    withheld_tensor,
    withheld_value_needed,
)
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode, Input

#: Largest ONNX model accepted (bytes); the request message limit applies first.
MAX_ONNX_BYTES = 256 * 1024 * 1024

SHAPE_ONLY = {"Shape", "Size"}  # outputs that do not depend on the input's values
#: Largest constant computed while folding shape arithmetic (elements per output); a node whose output is
#: larger, or of a size shape inference cannot tell, is left unevaluated.
MAX_FOLDED_ELEMENTS = 1 << 20


def _module(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (the exporter's scopes, the op last)."""
    parts = [p for p in name.split("/") if p][:-1]
    path, last = "", ""
    for part in parts:  # a child of a container is written relative to it: layer2, layer2.0
        if last and part.startswith(last + "."):
            path += part[len(last) :]
        else:
            path = f"{path}.{part}" if path else part
        last = part
    return path


def _parse(data: bytes) -> Any:
    """The ``ModelProto`` of client bytes; ``InvalidSpec`` on ``model.onnx`` when they are not one."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # any parse failure of client bytes
        raise InvalidSpec(
            f"is not an ONNX model: {type(error).__name__}: {error}", field="model.onnx"
        ) from None
    where = non_utf8_string(model)
    if where is not None:
        raise InvalidSpec(f"is not a valid ONNX model: {where} is not UTF-8 text", field="model.onnx")
    return model


def _image_input(graph: Any, constants: dict[str, np.ndarray]) -> tuple[Any, list[int]]:
    """The one image input of ``graph`` and its declared shape (0 where not fixed)."""
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise InvalidSpec(f"the ONNX model takes {len(inputs)} inputs, not one image", field="model.onnx")
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(declared) != 4 or declared[1] < 1:
        raise InvalidSpec(
            f"the ONNX model's input has shape {declared}; an image input (N, C, H, W) with a fixed C is "
            f"needed",
            field="model.onnx",
        )
    return inputs[0], declared


class _Reader:
    def __init__(self, data: bytes, size: tuple[int, int] | None, label: str) -> None:
        model = _parse(data)
        check_embedded(model.graph)
        self.constants: dict[str, np.ndarray] = {
            t.name: tensor_array(t, "initializer") for t in model.graph.initializer
        }
        image, declared = _image_input(model.graph, self.constants)
        #: The field an error of fit is about: the size asked for, or the model when it declared its own.
        self.size_field = "input_size" if size is not None else "model.onnx"
        if size is None:
            if declared[2] < 1 or declared[3] < 1:
                raise InvalidSpec("the ONNX model's input size is not fixed: give one", field="input_size")
            size = (declared[2], declared[3])
        self.size, self.channels, self.label = size, declared[1], label
        for dim, value in zip(image.type.tensor_type.shape.dim, (1, declared[1], *size), strict=True):
            dim.Clear()
            dim.dim_value = value
        self.model, self.input = model, image.name
        self._infer()
        for _ in range(8):  # shape arithmetic folded into constants lets inference reach further
            if not self._fold_constants():
                break

    def _fold_constants(self) -> bool:
        """Fold what does not depend on the image into initializers and infer the shapes again; False
        when nothing new was found."""
        import onnx

        model, known = self.model, len(self.constants)
        for node in self.graph.node:
            if node.op_type == "Constant":
                self._constant(node)
            elif node.op_type in SHAPE_ONLY or not self._depends_on_input(node):
                self._fold(node)
        if len(self.constants) == known:
            return False
        produced = {o for n in model.graph.node for o in n.output}
        existing = {t.name for t in model.graph.initializer}
        for name, array in self.constants.items():
            if name in produced and name not in existing:
                model.graph.initializer.append(
                    withheld_tensor(name, array)
                    if isinstance(array, WithheldArray)
                    else onnx.numpy_helper.from_array(np.asarray(array), name)
                )
        kept = [n for n in model.graph.node if not all(o in self.constants for o in n.output)]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        self._infer()
        return True

    def _infer(self) -> None:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=True, data_prop=True)
        except Exception as error:  # the model does not fit the input size, or is malformed
            text = str(error).strip()
            withheld_value_needed(text, self.constants)
            raise InvalidSpec(
                f"ONNX shape inference fails at {self.size[0]} x {self.size[1]}: {text[:300]}",
                field=self.size_field,
            ) from None
        self.graph = inferred.graph
        self.shapes: dict[str, tuple[int, ...]] = {}
        for info in [*self.graph.value_info, *self.graph.output, *self.graph.input]:
            shape = info.type.tensor_type.shape
            if all(d.HasField("dim_value") for d in shape.dim):
                self.shapes[info.name] = tuple(int(d.dim_value) for d in shape.dim)
        for name, value in self.constants.items():  # a withheld weight's shape is all that is read of it
            if isinstance(value, WithheldArray):
                self.shapes.setdefault(name, value.shape)
        self._data = {self.input}
        for node in self.graph.node:
            if node.op_type not in SHAPE_ONLY and any(i in self._data for i in node.input):
                self._data.update(node.output)

    def _depends_on_input(self, node: Any) -> bool:
        return any(o in self._data for o in node.output)

    def _constant(self, node: Any) -> None:
        value = constant_value(node)
        if value is not None and node.output:
            self.constants[node.output[0]] = value

    def _fold(self, node: Any) -> None:
        """Evaluate a node that does not depend on the image's values (shape arithmetic, such as the
        padding of TensorFlow's "same" convolutions), when its arguments are known."""
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Shape" and node.input[0] in self.shapes:
            a = attributes(node)
            shape = self.shapes[node.input[0]]
            self.constants[node.output[0]] = np.array(shape[a.get("start", 0) : a.get("end", len(shape))])
            return
        if node.op_type == "Size" and node.input[0] in self.shapes:
            self.constants[node.output[0]] = np.array(int(np.prod(self.shapes[node.input[0]])))
            return
        if not all(not i or i in self.constants for i in node.input):
            return
        if any(isinstance(self.constants[i], WithheldArray) for i in node.input if i):
            for output in (o for o in node.output if o and o in self.shapes):  # withheld too
                self.constants[output] = placeholder(self.shapes[output])
            return
        sizes = [self.shapes.get(o) for o in node.output if o]
        if any(size is None or math.prod(size) > MAX_FOLDED_ELEMENTS for size in sizes):
            return  # too large to compute here, or of a size only running it would tell
        try:
            results = ReferenceEvaluator(node).run(None, {i: self.constants[i] for i in node.input if i})
        except Exception:  # an operator the reference evaluator lacks: the value stays unknown
            return
        for output, value in zip(node.output, results, strict=False):
            self.constants[output] = np.asarray(value)

    def read(self) -> Capture:
        nodes = [GraphNode(self.input, Input(self.channels), (), (1, self.channels, *self.size))]
        names = {self.input: self.input}  # tensor name -> node name
        taken = {self.input}
        for index, node in enumerate(self.graph.node):
            if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
                # Control flow (If, Loop, Scan) reads outer tensors inside its sub-graphs, invisibly to
                # ``node.input``: folding it as a constant would drop a data path without a word.
                raise Unsupported(
                    f"{node.op_type} (node {node.name or index!r}): control flow with sub-graphs cannot be "
                    "mapped to a receptive field",
                    field="model.onnx",
                )
            if node.op_type == "Constant":
                self._constant(node)
                continue
            data = [i for i in node.input if i in names]
            if not data or node.op_type in SHAPE_ONLY:
                self._fold(node)
                continue
            nodes.extend(self._lowered(node, index, data, names, taken))
        return Capture(self.label, tuple(nodes), self.size, "onnx")

    def _lowered(
        self, node: Any, index: int, data: list[str], names: dict[str, str], taken: set[str]
    ) -> list[GraphNode]:
        """The graph nodes of one ONNX node (one per output of a ``Split``); ``names`` and ``taken`` learn
        their names."""
        base = node.name or f"{node.op_type}_{index}"
        lowered = []
        for position, output in enumerate(node.output):
            if position and node.op_type != "Split":
                break
            name = base if position == 0 else f"{base}:{position}"
            while name in taken:
                name += "_"
            taken.add(name)
            site = OnnxNode(node, attributes(node), data[0], position, self.shapes, self.constants)
            operation = lower_node(site)
            shape = self.shapes.get(output)
            if shape is None:
                raise Unsupported(
                    f"{node.op_type} (node {name!r}): ONNX shape inference gives no static shape for its "
                    f"output {output!r}",
                    field="model.onnx",
                )
            inputs = tuple(dict.fromkeys(names[i] for i in data))
            lowered.append(
                GraphNode(name, operation, inputs, shape, node.op_type, _module(node.name), (), output)
            )
            names[output] = name
        return lowered


def read(data: bytes, input_size: tuple[int, int] | None, label: str = "onnx model") -> Capture:
    """The receptive-field graph of a serialised ONNX ``ModelProto``, at ``input_size`` (default: the size
    the model declares). Raises ``InvalidSpec`` (not ONNX, not an image model, does not fit the size) or
    ``Unsupported`` (an operator that cannot be mapped, an argument computed at run time)."""
    if len(data) > MAX_ONNX_BYTES:
        raise InvalidSpec(f"holds {len(data)} bytes; at most {MAX_ONNX_BYTES}", field="model.onnx")
    return _Reader(data, input_size, label).read()


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The (H, W) the ONNX model's image input declares, None when not fixed or not readable."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # reported with its reason when the model is read
        return None
    constants = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    dims = (
        [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
        if inputs
        else []
    )
    return (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None
