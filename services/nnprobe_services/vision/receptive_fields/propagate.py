"""The receptive field of every node of a captured graph (``rf_ir``), whatever front-end produced it.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

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
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode

KIND = {"conv": "conv", "pool": "pool", "adaptive_pool": "pool", "input": "input"}


@dataclass(frozen=True)
class Value:
    """What the analysis knows of one tensor. ``layout``: the positions of the height and width axes in its
    shape (None: it has none); ``field``: its local field (None: no spatial path reaches it);
    ``global_context``: the node after which the whole input reaches it; ``summary``: a tensor without image
    axes that summarises whole maps (a pooled vector); ``pooled``: it only follows a global pooling."""

    layout: tuple[int, int] | None
    field: LayerField | None
    global_context: str = ""
    summary: bool = False
    pooled: bool = False


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
                    error = self._unmappable(node, f"{type(error).__name__}: {error}")
                self.problems[node.name] = error
                inherited = [self.origins[i] for i in node.inputs if i in self.origins]
                self.origins[node.name] = inherited[0] if inherited else node.name

    def _value(self, node: GraphNode) -> Value:
        if node.op == "input":
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
            return Value(None, None, summary=True, pooled=True)
        if node.op == "unsupported" and node.attrs.get("why"):
            raise self._unmappable(node, node.attrs["why"])
        if node.op in ("elementwise", "cat", "stack"):
            return self._merge(node, inputs)
        x = inputs[0]
        if x.layout is None:
            if x.summary:
                return Value(None, None, summary=True, pooled=True)
            raise self._unmappable(node, "its input has lost the image axes (a reshape merged them)")
        if x.field is None:  # a map that is uniform over the image (an expanded global vector)
            layout = self._layout_after(node, x)
            return Value(layout, None, x.global_context, summary=layout is None, pooled=x.pooled)
        handler = getattr(self, f"_{node.op}", None)
        if handler is None:
            raise self._unmappable(node, f"the operation {node.label or node.op}")
        return handler(node, x)

    # -- helpers ---------------------------------------------------------------------------------------
    def _unmappable(self, node: GraphNode, why: str) -> Unsupported:
        where = f" in module {node.module!r}" if node.module else ""
        return Unsupported(
            f"{node.label or node.op} (node {node.name!r}{where}) cannot be mapped to a receptive field: "
            f"{why}",
            field="model.name",
        )

    def _windowed(self, node: GraphNode, x: Value, wins: tuple[Window, Window], kind: str, pooled=False):
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

    def _same(
        self, node: GraphNode, x: Value, layout: tuple[int, int] | None = None, glob: str = ""
    ) -> Value:
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

    def _layout_after(self, node: GraphNode, x: Value) -> tuple[int, int] | None:
        if node.op == "permute":
            dims = node.attrs["dims"]
            return dims.index(x.layout[0]), dims.index(x.layout[1])  # type: ignore[index]
        if node.op == "reshape":
            return self._reshaped(node, x)
        return x.layout

    def _reshaped(self, node: GraphNode, x: Value) -> tuple[int, int] | None:
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

    # -- operations ------------------------------------------------------------------------------------
    def _conv(self, node: GraphNode, x: Value) -> Value:
        return self._windowed(node, x, node.attrs["windows"], "conv")

    def _pool(self, node: GraphNode, x: Value) -> Value:
        return self._windowed(node, x, node.attrs["windows"], "pool")

    def _adaptive_pool(self, node: GraphNode, x: Value) -> Value:
        assert x.field is not None
        wins = []
        for axis, wanted in zip((x.field.height, x.field.width), node.attrs["output_size"], strict=True):
            out = axis.size if wanted is None else int(wanted)
            if axis.size % out:
                raise Unsupported(
                    f"{node.label} (node {node.name!r}) maps {axis.size} positions to {out}: its windows "
                    f"have "
                    f"unequal sizes, so no single receptive field describes its units",
                    field="input_size",
                )
            wins.append(Window(axis.size // out, axis.size // out))
        return self._windowed(node, x, (wins[0], wins[1]), "pool", pooled=True)  # the head's pooling

    def _reduce(self, node: GraphNode, x: Value) -> Value:
        assert x.layout is not None and x.field is not None
        dims, keep = set(node.attrs["dims"]), node.attrs["keepdim"]
        spatial = [a in dims for a in x.layout]
        if not any(spatial):
            if keep:
                return self._same(node, x)
            shift = [a - sum(d < a for d in dims) for a in x.layout]
            return self._same(node, x, (shift[0], shift[1]))
        if all(spatial) and not keep:
            return Value(None, None, x.global_context, summary=True, pooled=True)
        if not keep:
            raise self._unmappable(node, "a reduction over one image axis that drops it")
        sizes = (x.field.height.size, x.field.width.size)
        wins = [Window(n, n) if s else Window(1) for n, s in zip(sizes, spatial, strict=True)]
        return self._windowed(node, x, (wins[0], wins[1]), "pool", pooled=True)

    def _pad(self, node: GraphNode, x: Value) -> Value:
        assert x.layout is not None and node.shape is not None
        pads, rank, mode = node.attrs["pads"], len(node.shape), node.attrs["mode"]
        if mode not in ("zeros", "reflect", "replicate"):
            raise self._unmappable(node, f"{mode} padding")
        sides = []
        for axis in x.layout:
            i = 2 * (rank - 1 - axis)
            sides.append((pads[i], pads[i + 1]) if i + 1 < len(pads) else (0, 0))
        if sides == [(0, 0), (0, 0)]:
            return self._same(node, x)
        wins = [Window(1, 1, 1, b, a, pad_mode=mode) for b, a in sides]
        return self._windowed(node, x, (wins[0], wins[1]), "other")

    def _slice(self, node: GraphNode, x: Value) -> Value:
        assert x.layout is not None and x.field is not None
        a = node.attrs
        if a["dim"] not in x.layout:
            return self._same(node, x)
        sizes = (x.field.height.size, x.field.width.size)
        wins = [
            Window(1, a["step"], 1, -a["start"], a["end"] - n) if axis == a["dim"] else Window(1)
            for axis, n in zip(x.layout, sizes, strict=True)
        ]
        return self._windowed(node, x, (wins[0], wins[1]), "other")

    def _tuple(self, node: GraphNode, x: Value) -> Value:
        """A split or a normalisation returning several results: its pieces (``slice``) say what they take."""
        return self._same(node, x)

    def _permute(self, node: GraphNode, x: Value) -> Value:
        return self._same(node, x, self._layout_after(node, x))

    def _reshape(self, node: GraphNode, x: Value) -> Value:
        layout = self._reshaped(node, x)
        if layout is not None:
            return self._same(node, x, layout)
        assert x.field is not None
        if (x.field.height.size, x.field.width.size) == (1, 1):
            return Value(None, None, x.global_context, summary=True, pooled=True)
        return Value(None, None, x.global_context)  # the image axes merged: fine for a head, not further

    def _linear(self, node: GraphNode, x: Value) -> Value:
        if x.layout is not None and node.shape is not None and len(node.shape) - 1 in x.layout:
            raise self._unmappable(node, "a linear layer over an image axis mixes positions")
        return self._same(node, x)

    def _norm(self, node: GraphNode, x: Value) -> Value:
        over_image = any(a in node.attrs["dims"] for a in x.layout or ())
        if over_image and self.strict:
            raise self._global(node, "normalises with statistics over the image")
        return self._same(node, x, glob=node.name if over_image else "")

    def _softmax(self, node: GraphNode, x: Value) -> Value:
        over_image = node.attrs["dim"] in (x.layout or ())
        if over_image and self.strict:
            raise self._global(node, "takes a softmax over the image")
        return self._same(node, x, glob=node.name if over_image else "")

    def _upsample(self, node: GraphNode, x: Value) -> Value:
        assert x.field is not None and x.layout is not None and node.shape is not None
        wins = []
        for axis, n in zip(x.layout, (x.field.height.size, x.field.width.size), strict=True):
            if node.shape[axis] % n:
                raise self._unmappable(
                    node, f"resizing {n} positions to {node.shape[axis]} (not a whole factor)"
                )
            wins.append(Window(1, upsample=node.shape[axis] // n))
        return self._windowed(node, x, (wins[0], wins[1]), "other")

    def _pixel_shuffle(self, node: GraphNode, x: Value) -> Value:
        r = node.attrs["factor"]
        return self._windowed(node, x, (Window(1, upsample=r), Window(1, upsample=r)), "other")

    def _pixel_unshuffle(self, node: GraphNode, x: Value) -> Value:
        r = node.attrs["factor"]
        return self._windowed(node, x, (Window(r, r), Window(r, r)), "other")

    def _global(self, node: GraphNode, what: str) -> Unsupported:
        return Unsupported(
            f"node {node.name!r} ({node.label}) {what}: every unit after it sees the whole input, so no "
            f"finite receptive field applies (strict)",
            field="model.name",
        )

    def _merge(self, node: GraphNode, inputs: list[Value]) -> Value:
        shape = node.shape or ()
        local: list[Value] = []
        brought: list[str] = []
        for name, value in zip(node.inputs, inputs, strict=True):
            if value.layout is None or value.field is None:
                if not (value.summary or value.global_context or value.layout is not None):
                    raise self._unmappable(node, f"its input {name!r} has lost the image axes")
                brought.append(name)
                continue
            if node.op == "stack":  # a new axis at ``dim``
                layout = tuple(a + (a >= node.attrs["dim"]) for a in value.layout)  # type: ignore[assignment]
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
            local.append(replace(value, layout=layout))
        if not local:
            if node.op == "elementwise" and len(inputs) == 1 and inputs[0].layout is not None:
                # an expanded 1 x 1 map: uniform over the image
                return Value(inputs[0].layout, None, node.name, pooled=inputs[0].pooled)
            return Value(None, None, node.name, summary=all(v.summary for v in inputs), pooled=True)
        layouts = {v.layout for v in local}
        if len(layouts) > 1 or (node.op == "cat" and node.attrs["dim"] in local[0].layout):  # type: ignore[operator]
            raise self._unmappable(node, "it joins maps along an image axis or in different layouts")
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
        context = next((v.global_context for v in local if v.global_context), "") or (
            node.name if brought else ""
        )
        kind = "merge" if len(fields) > 1 else "other"
        field = LayerField(
            node.name,
            kind,
            node.label,
            height,
            width,
            tuple(f.name for f in fields),
            module=node.module,
            global_context=context,
        )
        pooled = all(v.pooled for v in local)
        return self._checked(node, Value(local[0].layout, field, context, pooled=pooled))
