"""How each operation changes what the propagation (``propagate``) knows of a tensor: one rule per typed
operation class of ``ir``, registered with ``@rule(ir.Conv)``; merges (``ir.Merge``) are the propagation's
own. ``Value`` is what is known of one tensor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from nnprobe_services.vision.receptive_fields import ir
from nnprobe_services.vision.receptive_fields.arithmetic import LayerField, Unsupported, Window
from nnprobe_services.vision.receptive_fields.ir import GraphNode, Operation
from nnprobe_services.vision.receptive_fields.resize_index import check_modes, nearest_sources
from nnprobe_services.vision.receptive_fields.resize_weights import resize_taps
from nnprobe_services.vision.receptive_fields.tokens import Tokens
from nnprobe_services.vision.receptive_fields.varying import transposed_size, transposed_taps

if TYPE_CHECKING:
    from nnprobe_services.vision.receptive_fields.propagate import Analysis


#: How each operation class changes a ``Value`` that has image axes and a field: (analysis, node, its
#: operation, the first data input) -> the node's value. Filled by ``rule``; merges are ``Analysis._merge``.
Rule = Callable[["Analysis", GraphNode, Any, "Value"], "Value"]
RULES: dict[type[Operation], Rule] = {}


def rule(*kinds: type[Operation]) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        for kind in kinds:
            RULES[kind] = function
        return function

    return register


@dataclass(frozen=True)
class Value:
    """What the analysis knows of one tensor. ``layout``: the positions of the height and width axes in its
    shape (None: it has none); ``field``: its local field (None: no spatial path reaches it);
    ``global_context``: the node after which the whole input reaches it; ``summary``: a tensor without image
    axes that summarises whole maps (a pooled vector); ``pooled``: it only follows a global pooling;
    ``tokens``: the token axis that holds the image's patches (``layout`` is then None; ``token_rules``)."""

    layout: tuple[int, int] | None
    field: LayerField | None
    global_context: str = ""
    summary: bool = False
    pooled: bool = False
    tokens: Tokens | None = None

    @property
    def where(self) -> tuple[int, int] | Tokens | None:
        """Where the image positions lie: the (height, width) axes, the token axis, or None."""
        return self.layout if self.layout is not None else self.tokens


# -- operations ------------------------------------------------------------------------------------------
@rule(ir.Conv)
def _conv(run: Analysis, node: GraphNode, operation: ir.Conv, x: Value) -> Value:
    return run.windowed(node, x, operation.windows, "conv")


@rule(ir.Pool)
def _pool(run: Analysis, node: GraphNode, operation: ir.Pool, x: Value) -> Value:
    return run.windowed(node, x, operation.windows, "pool")


@rule(ir.AdaptivePool)
def _adaptive_pool(run: Analysis, node: GraphNode, operation: ir.AdaptivePool, x: Value) -> Value:
    assert x.field is not None
    wins = []
    for axis, wanted in zip((x.field.height, x.field.width), operation.output_size, strict=True):
        out = axis.size if wanted is None else int(wanted)
        if axis.size % out:
            raise Unsupported(
                f"{node.label} (node {node.name!r}) maps {axis.size} positions to {out}: its windows "
                f"have "
                f"unequal sizes, so no single receptive field describes its units",
                field="input_size",
            )
        wins.append(Window(axis.size // out, axis.size // out))
    return run.windowed(node, x, (wins[0], wins[1]), "pool", pooled=True)  # the head's pooling


@rule(ir.Reduce)
def _reduce(run: Analysis, node: GraphNode, operation: ir.Reduce, x: Value) -> Value:
    assert x.layout is not None and x.field is not None
    dims, keep = set(operation.dims), operation.keepdim
    spatial = [a in dims for a in x.layout]
    if not any(spatial):
        if keep:
            return run.same(node, x)
        shift = [a - sum(d < a for d in dims) for a in x.layout]
        return run.same(node, x, (shift[0], shift[1]))
    if all(spatial) and not keep:
        return Value(None, None, x.global_context, summary=True, pooled=True)
    if not keep:
        raise run.unmappable(node, "a reduction over one image axis that drops it")
    sizes = (x.field.height.size, x.field.width.size)
    wins = [Window(n, n) if s else Window(1) for n, s in zip(sizes, spatial, strict=True)]
    return run.windowed(node, x, (wins[0], wins[1]), "pool", pooled=True)


@rule(ir.Pad)
def _pad(run: Analysis, node: GraphNode, operation: ir.Pad, x: Value) -> Value:
    assert x.layout is not None and node.shape is not None
    pads, rank, mode = operation.pads, len(node.shape), operation.mode
    if mode not in ("zeros", "reflect", "replicate"):
        raise run.unmappable(node, f"{mode} padding")
    sides = []
    for axis in x.layout:
        i = 2 * (rank - 1 - axis)
        sides.append((pads[i], pads[i + 1]) if i + 1 < len(pads) else (0, 0))
    if sides == [(0, 0), (0, 0)]:
        return run.same(node, x)
    wins = [Window(1, 1, 1, b, a, pad_mode=mode) for b, a in sides]
    return run.windowed(node, x, (wins[0], wins[1]), "other")


@rule(ir.Slice)
def _slice(run: Analysis, node: GraphNode, operation: ir.Slice, x: Value) -> Value:
    assert x.layout is not None and x.field is not None
    a = operation
    if a.dim not in x.layout:
        return run.same(node, x)
    sizes = (x.field.height.size, x.field.width.size)
    wins = [
        Window(1, a.step, 1, -a.start, a.end - n) if axis == a.dim else Window(1)
        for axis, n in zip(x.layout, sizes, strict=True)
    ]
    return run.windowed(node, x, (wins[0], wins[1]), "other")


@rule(ir.Split)
def _split(run: Analysis, node: GraphNode, operation: ir.Split, x: Value) -> Value:
    """A split or a normalisation returning several results: its pieces (``Slice``) say what they take."""
    return run.same(node, x)


@rule(ir.Permute)
def _permute(run: Analysis, node: GraphNode, operation: ir.Permute, x: Value) -> Value:
    return run.same(node, x, run.layout_after(node, x))


@rule(ir.Reshape)
def _reshape(run: Analysis, node: GraphNode, operation: ir.Reshape, x: Value) -> Value:
    layout = run.reshaped(node, x)
    if layout is not None:
        return run.same(node, x, layout)
    assert x.field is not None
    if (x.field.height.size, x.field.width.size) == (1, 1):
        return Value(None, None, x.global_context, summary=True, pooled=True)
    return Value(None, None, x.global_context)  # the image axes merged: fine for a head, not further


@rule(ir.Linear)
def _linear(run: Analysis, node: GraphNode, operation: ir.Linear, x: Value) -> Value:
    if x.layout is not None and node.shape is not None and len(node.shape) - 1 in x.layout:
        raise run.unmappable(node, "a linear layer over an image axis mixes positions")
    return run.same(node, x)


@rule(ir.Norm)
def _norm(run: Analysis, node: GraphNode, operation: ir.Norm, x: Value) -> Value:
    over_image = any(a in operation.dims for a in x.layout or ())
    if over_image and run.strict:
        raise run.global_context_error(node, "normalises with statistics over the image")
    return run.same(node, x, glob=node.name if over_image else "")


@rule(ir.Softmax)
def _softmax(run: Analysis, node: GraphNode, operation: ir.Softmax, x: Value) -> Value:
    over_image = operation.dim in (x.layout or ())
    if over_image and run.strict:
        raise run.global_context_error(node, "takes a softmax over the image")
    return run.same(node, x, glob=node.name if over_image else "")


@rule(ir.Upsample)
def _upsample(run: Analysis, node: GraphNode, operation: ir.Upsample, x: Value) -> Value:
    """Resizing in every mode: each output unit reads a table of input taps (``resize_index`` for nearest,
    ``resize_weights`` for linear, cubic and antialiased). A globally pooled 1 x 1 map resized over the image
    (DeepLabV3's pooled ASPP branch) is global context, as a broadcast is."""
    assert x.field is not None and x.layout is not None and node.shape is not None
    if operation.mode == "nearest":
        problem = check_modes(operation.coordinate_mode, operation.nearest_mode)
        if problem:
            raise run.unmappable(node, f"nearest resizing with {problem}")
    sizes = (x.field.height.size, x.field.width.size)
    outs = (node.shape[x.layout[0]], node.shape[x.layout[1]])
    if sizes == (1, 1) and outs != sizes and x.pooled:  # a pooled vector spread over the image
        if run.strict:
            raise run.global_context_error(node, "resizes a 1 x 1 map over the image")
        return Value(x.layout, None, node.name, pooled=x.pooled)
    wins = []
    for axis, (n, n_out) in enumerate(zip(sizes, outs, strict=True)):
        scale = operation.scales[axis] if operation.scales is not None else None
        try:
            taps = _resize_taps(n, n_out, scale, operation, outs == sizes)
        except Unsupported as error:
            raise run.unmappable(node, error.message) from None
        wins.append(Window(1, taps=taps, ratio=Fraction(n_out, n)))
    return run.windowed(node, x, (wins[0], wins[1]), "other")


def _resize_taps(n: int, n_out: int, scale: float | None, op: ir.Upsample, same: bool) -> tuple:
    if op.mode != "nearest" or op.formulas == "torch":
        return resize_taps(n, n_out, scale, op)
    factors = [1.0 if s is None else s for s in (op.scales or (None, None))]
    # ONNX Runtime copies a resize by 1 along both axes unchanged, whatever its modes say
    if same and all(f == 1 for f in factors):
        return tuple((o,) for o in range(n))
    exact = Fraction(scale) if scale is not None else Fraction(n_out, n)
    sources = nearest_sources(n, n_out, exact, op.coordinate_mode, op.nearest_mode)
    return tuple((m,) for m in sources)


@rule(ir.ConvTranspose)
def _conv_transpose(run: Analysis, node: GraphNode, operation: ir.ConvTranspose, x: Value) -> Value:
    """Output o reads input i where o = i * stride - pad_before + dilation * t: a tap table whose units
    differ by phase (``varying``)."""
    assert x.field is not None
    wins = []
    for axis, window, extra in zip(
        (x.field.height, x.field.width), operation.windows, operation.output_padding, strict=True
    ):
        n_out = transposed_size(axis.size, window, extra)
        if n_out < 1:
            raise run.unmappable(node, f"its output along an axis would have {n_out} units")
        taps = transposed_taps(axis.size, n_out, window)
        wins.append(replace(window, taps=taps, ratio=Fraction(window.stride)))
    return run.windowed(node, x, (wins[0], wins[1]), "conv")


@rule(ir.PixelShuffle)
def _pixel_shuffle(run: Analysis, node: GraphNode, operation: ir.PixelShuffle, x: Value) -> Value:
    r = operation.factor
    return run.windowed(node, x, (Window(1, upsample=r), Window(1, upsample=r)), "other")


@rule(ir.PixelUnshuffle)
def _pixel_unshuffle(run: Analysis, node: GraphNode, operation: ir.PixelUnshuffle, x: Value) -> Value:
    r = operation.factor
    return run.windowed(node, x, (Window(r, r), Window(r, r)), "other")
