"""The receptive field of every node of a captured graph (``ir``), whatever front-end produced it.

Each tensor's height and width axes are followed through layout changes (NCHW <-> NHWC permutes, reshapes that
keep both axes, linear layers over channels). Convolutions, pooling, padding, slicing along an image axis,
upsampling and depth-to-space change the field (``receptive_field.apply``); point-wise operations,
normalisation over channels and channel splits keep it; merges join their paths' fields
(``receptive_field.merge``: the union when their centres differ, the merge then recorded as misaligned).

Global context is an answer, not an error: where a map pooled over the whole image is broadcast back over
it (squeeze-and-excitation, ECA, global attention gates), or a normalisation or softmax takes statistics over
the image axes (GroupNorm), every unit after that node depends on the whole input. The node is recorded
(``LayerField.global_context``) and the field given is the **local** one, through the spatial paths alone
(Araujo et al., Distill 2019, quote these for EfficientNet). The shapes the capture recorded are checked
against the arithmetic at every node.

The walk dispatches on the class of each node's typed operation: ``field_rules`` holds one rule per class
(``RULES``); merges (``ir.Merge``: point-wise operations between tensors, concatenation, stacking) are
joined here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

from nnprobe_services.vision.receptive_fields import ir, token_rules
from nnprobe_services.vision.receptive_fields.arithmetic import (
    FieldError,
    LayerField,
    Misalignment,
    Unsupported,
    Window,
    apply,
    describe,
    input_axis,
    merge,
)
from nnprobe_services.vision.receptive_fields.field_rules import RULES, Value
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode


class Analysis:
    """Propagates ``Value``s through the nodes; records a problem per node that has no field."""

    def __init__(
        self, capture: Capture, origin: Fraction, strict: bool, input_size: tuple[int, int] | None = None
    ) -> None:
        self.capture, self.origin, self.strict = capture, origin, strict
        #: Another input size than the capture's: the arithmetic only (shapes are not checked), to say why
        #: a capture failed at that size.
        self.input_size = input_size
        self.values: dict[str, Value] = {}
        self.problems: dict[str, FieldError] = {}
        self.misaligned: dict[str, list[Misalignment]] = {}
        #: The node where each problem arose (a node after an unmappable one inherits its problem).
        self.origins: dict[str, str] = {}
        for node in capture.nodes:
            try:
                self.values[node.name] = self._value(node)
            except Exception as error:  # a FieldError, or a node shaped as the analysis never expects
                if not isinstance(error, FieldError):
                    error = self.unmappable(node, f"{type(error).__name__}: {error}")
                self.problems[node.name] = error
                inherited = [self.origins[i] for i in node.inputs if i in self.origins]
                self.origins[node.name] = inherited[0] if inherited else node.name

    def _value(self, node: GraphNode) -> Value:
        operation = node.operation
        if isinstance(operation, ir.Input):
            h, w = self.input_size or (node.shape[2], node.shape[3])  # type: ignore[index]
            axes = input_axis(h, self.origin), input_axis(w, self.origin)
            return Value((2, 3), LayerField(node.name, "input", "input image", *axes, module=node.module))
        inputs = []
        for name in node.inputs:
            if name in self.problems:
                problem = self.problems[name]
                raise type(problem)(problem.message, field=problem.field)
            inputs.append(self.values[name])
        if all(v.layout is None and v.summary for v in inputs):  # computed from pooled vectors only
            return token_rules.summary(node, inputs)
        if isinstance(operation, ir.Unmappable) and operation.why:
            raise self.unmappable(node, operation.why)
        tokened = token_rules.token_value(self, node, operation, inputs)
        if tokened is not None:  # a sequence of tokens, attention, a patch embedding
            return tokened
        if isinstance(operation, ir.Merge):
            return self._merge(node, operation, inputs)
        x = inputs[0]
        if x.layout is None:
            if x.summary:
                return Value(None, None, summary=True, pooled=True)
            raise self.unmappable(node, "its input has lost the image axes (a reshape merged them)")
        if x.field is None:  # a map that is uniform over the image (an expanded global vector)
            layout = self.layout_after(node, x)
            return Value(layout, None, x.global_context, summary=layout is None, pooled=x.pooled)
        rule = next((RULES[kind] for kind in type(operation).__mro__ if kind in RULES), None)
        if rule is None:
            raise self.unmappable(node, f"the operation {node.label or node.op}")
        return rule(self, node, operation, x)

    # -- helpers ---------------------------------------------------------------------------------------
    def unmappable(self, node: GraphNode, why: str) -> Unsupported:
        where = f" in module {node.module!r}" if node.module else ""
        return Unsupported(
            f"{node.label or node.op} (node {node.name!r}{where}) cannot be mapped to a receptive field: "
            f"{why}",
            field="model.name",
        )

    def windowed(
        self, node: GraphNode, x: Value, wins: tuple[Window, Window], kind: str, pooled: bool = False
    ) -> Value:
        assert x.field is not None and x.layout is not None
        label = describe(kind, *wins, label=node.label)
        where = f"node {node.name!r} ({label})"
        height = apply(x.field.height, wins[0], where=f"{where} along the height", field="input_size")
        width = apply(x.field.width, wins[1], where=f"{where} along the width", field="input_size")
        pads = (wins[0].pad_before, wins[0].pad_after, wins[1].pad_before, wins[1].pad_after)
        field = LayerField(
            node.name, kind, label, height, width, (x.field.name,), pads, node.module, wins, x.global_context
        )
        return self._checked(node, Value(x.layout, field, x.global_context, pooled=pooled or x.pooled))

    def same(self, node: GraphNode, x: Value, layout: tuple[int, int] | None = None, glob: str = "") -> Value:
        assert x.field is not None
        context = x.global_context or glob
        field = LayerField(
            node.name,
            "other",
            node.label,
            x.field.height,
            x.field.width,
            (x.field.name,),
            module=node.module,
            global_context=context,
        )
        return self._checked(node, Value(layout or x.layout, field, context, pooled=x.pooled))

    def _checked(self, node: GraphNode, value: Value) -> Value:
        shape, field, layout = node.shape, value.field, value.layout
        if self.input_size is None and shape is not None and field is not None and layout is not None:
            sizes = (field.height.size, field.width.size)
            if max(layout) >= len(shape) or (shape[layout[0]], shape[layout[1]]) != sizes:
                raise Unsupported(
                    f"node {node.name!r} ({field.operation}) produces shape {list(shape)} but the arithmetic "
                    f"gives {sizes[0]} x {sizes[1]}: its geometry is not what its parameters say",
                    field="model.name",
                )
        return value

    def layout_after(self, node: GraphNode, x: Value) -> tuple[int, int] | None:
        operation = node.operation
        if isinstance(operation, ir.Permute):
            dims = operation.dims
            return dims.index(x.layout[0]), dims.index(x.layout[1])  # type: ignore[index]
        if isinstance(operation, ir.Reshape):
            return self.reshaped(node, x)
        return x.layout

    def reshaped(self, node: GraphNode, x: Value) -> tuple[int, int] | None:
        before = self.capture.node(node.inputs[0]).shape or ()
        after, layout = node.shape or (), list[int]()
        for axis in x.layout or ():
            prefix, lowest = math.prod(before[:axis]), layout[-1] + 1 if layout else 0
            found = [
                k
                for k in range(lowest, len(after))
                if after[k] == before[axis] and math.prod(after[:k]) == prefix
            ]
            if not found:
                return None
            layout.append(found[0])
        return layout[0], layout[1]

    def global_context_error(self, node: GraphNode, what: str) -> Unsupported:
        return Unsupported(
            f"node {node.name!r} ({node.label}) {what}: every unit after it sees the whole input, so no "
            f"finite receptive field applies (strict)",
            field="model.name",
        )

    # -- merges ----------------------------------------------------------------------------------------
    def _merge(self, node: GraphNode, operation: ir.Merge, inputs: list[Value]) -> Value:
        local, brought = self._local_inputs(node, operation, inputs)
        if not local:
            if isinstance(operation, ir.Pointwise) and len(inputs) == 1 and inputs[0].layout is not None:
                # an expanded 1 x 1 map: uniform over the image
                return Value(inputs[0].layout, None, node.name, pooled=inputs[0].pooled)
            return Value(None, None, node.name, summary=all(v.summary for v in inputs), pooled=True)
        layouts = {v.layout for v in local}
        along_image = isinstance(operation, ir.Concat) and operation.dim in local[0].layout  # type: ignore[operator]
        if len(layouts) > 1 or along_image:
            raise self.unmappable(node, "it joins maps along an image axis or in different layouts")
        fields = [v.field for v in local if v.field is not None]
        where = f"node {node.name!r} ({node.label})"
        height, h_shift = merge(
            [(f.name, f.height) for f in fields], where=where, axis_name="height", strict=self.strict
        )
        width, w_shift = merge(
            [(f.name, f.width) for f in fields], where=where, axis_name="width", strict=self.strict
        )
        if h_shift or w_shift:
            self.misaligned[node.name] = [*h_shift, *w_shift]
        global_inputs = [v for n, v in zip(node.inputs, inputs, strict=True) if n in brought]
        context = next((v.global_context for v in local + global_inputs if v.global_context), "") or (
            node.name if brought else ""
        )
        kind = "merge" if len(fields) > 1 else "other"
        names = tuple(f.name for f in fields)
        field = LayerField(
            node.name, kind, node.label, height, width, names, module=node.module, global_context=context
        )
        pooled = all(v.pooled for v in local)
        return self._checked(node, Value(local[0].layout, field, context, pooled=pooled))

    def _local_inputs(
        self, node: GraphNode, operation: ir.Merge, inputs: list[Value]
    ) -> tuple[list[Value], list[str]]:
        """The inputs that bring a local field, in the merge's layout, and the names of the others (global
        context: pooled vectors, broadcast 1 x 1 maps)."""
        shape = node.shape or ()
        local: list[Value] = []
        brought: list[str] = []
        for name, value in zip(node.inputs, inputs, strict=True):
            if value.layout is None or value.field is None:
                if not (value.summary or value.global_context or value.layout is not None):
                    raise self.unmappable(node, f"its input {name!r} has lost the image axes")
                brought.append(name)
                continue
            if isinstance(operation, ir.Stack):  # a new axis at ``dim``
                layout = tuple(a + (a >= operation.dim) for a in value.layout)
            else:
                offset = len(shape) - len(self.capture.node(name).shape or ())
                layout = (value.layout[0] + offset, value.layout[1] + offset)
            sizes = (value.field.height.size, value.field.width.size)
            broadcast = (
                sizes[0] in (1, shape[layout[0]]) and sizes[1] in (1, shape[layout[1]]) if shape else False
            )
            if shape and (shape[layout[0]], shape[layout[1]]) != sizes and broadcast:
                brought.append(name)  # a smaller (pooled) map broadcast over the image
                if self.strict:
                    raise Unsupported(
                        f"node {node.name!r} ({node.label}) broadcasts the 1 x 1 map of {name!r} over the "
                        f"image (a global context such as squeeze-and-excitation): every unit after it sees "
                        f"the whole input, so no finite receptive field applies (strict)",
                        field="model.name",
                    )
                continue
            local.append(replace(value, layout=(layout[0], layout[1])))
        return local, brought
