"""How token layers change what the propagation knows (``propagate``): the field of a patch token is the field
of the image position it came from (``tokens.Tokens``), through reshapes, permutes, slices and linear layers
over the features; a reshape back to (rows, columns) gives the image axes back.

Mixing positions is global context, recorded as it is for squeeze-and-excitation: self-attention
(``ir.Attention``, or a product of two computed tensors, ``ir.MatMul``, with its softmax) gives every token
the whole input, so its result is a summary named by the node (``LayerField.global_context``) and the
**local** field goes on through the residual paths. A normalisation or a softmax over the tokens keeps the
local field and names the node; a linear layer over the tokens (token mixing) is global. ``strict`` refuses
all of them. A class token has no position: selecting it gives a summary. A window partition (Swin's) is
refused by name, with the last node whose field can be answered.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nnprobe_services.vision.receptive_fields import ir, tokens
from nnprobe_services.vision.receptive_fields.arithmetic import LayerField, Unsupported, merge
from nnprobe_services.vision.receptive_fields.field_rules import Value, rule
from nnprobe_services.vision.receptive_fields.ir import GraphNode, Operation
from nnprobe_services.vision.receptive_fields.tokens import Tokens

if TYPE_CHECKING:
    from nnprobe_services.vision.receptive_fields.propagate import Analysis


def token_value(run: Analysis, node: GraphNode, operation: Operation, inputs: list[Value]) -> Value | None:
    """The value of ``node`` when token rules apply (a token input, a mixing product, an image map merged
    into tokens or split into windows), else None (the ordinary rules apply)."""
    if isinstance(operation, (ir.MatMul, ir.Attention)):
        return _mixing(run, node, inputs)
    x = inputs[0]
    if isinstance(operation, ir.Reshape) and x.layout is not None and x.field is not None:
        return _from_image(run, node, x)
    if not any(v.tokens is not None for v in inputs):
        return None
    if isinstance(operation, ir.Merge):
        return _merge(run, node, operation, inputs)
    if x.tokens is None or x.field is None:
        return None
    handler = next((TOKEN_RULES[k] for k in type(operation).__mro__ if k in TOKEN_RULES), None)
    if handler is None:
        raise run.unmappable(node, f"the operation {node.label or node.op} on a sequence of tokens")
    return handler(run, node, operation, x)


def same(run: Analysis, node: GraphNode, x: Value, where: Tokens, glob: str = "") -> Value:
    """``x``'s field unchanged, its tokens at ``where``; ``glob`` names a node that brings global context."""
    assert x.field is not None
    context = x.global_context or glob
    f = x.field
    field = LayerField(
        node.name,
        "other",
        node.label,
        f.height,
        f.width,
        (f.name,),
        module=node.module,
        global_context=context,
    )
    return _checked(node, Value(None, field, context, pooled=x.pooled, tokens=where))


def summary(node: GraphNode, inputs: list[Value], glob: str = "") -> Value:
    """A tensor that sees the whole input: the context of its inputs, else ``glob``."""
    context = next((v.global_context for v in inputs if v.global_context), "") or glob
    return Value(None, None, context, summary=True, pooled=True)


def _checked(node: GraphNode, value: Value) -> Value:
    shape, where, f = node.shape, value.tokens, value.field
    assert where is not None and f is not None
    if shape is None:  # a tuple (a split): its pieces are checked
        return value
    ok = shape is not None and where.axis < len(shape) and shape[where.axis] == where.length
    if (
        not ok
        or where.offset + where.grid > where.length
        or (f.height.size, f.width.size)
        != (
            where.rows,
            where.columns,
        )
    ):
        raise Unsupported(
            f"node {node.name!r} ({node.label}) produces shape {list(shape or ())} but the token arithmetic "
            f"gives {where.length} tokens of a {where.rows} x {where.columns} grid on axis {where.axis}",
            field="model.name",
        )
    return value


def _last_answerable(run: Analysis, node: GraphNode) -> str:
    """The nearest node before ``node`` (on its inputs) whose field can be answered, as ``graph`` names
    one in a refusal."""
    stack, seen = list(node.inputs), set()
    while stack:
        name = stack.pop(0)
        if name in seen:
            continue
        seen.add(name)
        value = run.values.get(name)
        if value is not None and value.field is not None and not value.pooled:
            module = run.capture.node(name).module
            return f"{name!r}" + (f" (module {module!r})" if module else "") + ": give it as end_point"
        stack.extend(run.capture.node(name).inputs)
    return "none"


def _from_image(run: Analysis, node: GraphNode, x: Value) -> Value | None:
    """A reshape of an image map: the ordinary rule when it keeps both axes, tokens when it merges them
    row-major, a refusal naming the node when it partitions the image into windows."""
    assert x.layout is not None and x.field is not None
    if run.reshaped(node, x) is not None or (x.field.height.size, x.field.width.size) == (1, 1):
        return None
    before, after = run.capture.node(node.inputs[0]).shape or (), node.shape or ()
    where = tokens.merged(before, after, x.layout)
    if where is not None:
        return same(run, node, x, where)
    window = tokens.window_split(before, after, x.layout)
    if window is None:
        return None
    where_ = f" in module {node.module!r}" if node.module else ""
    last = _last_answerable(run, node)
    if _into_batch(run, node):
        raise Unsupported(
            f"windowed attention (Swin) at node {node.name!r}{where_}: {node.label or node.op} partitions "
            f"the image into windows of {window} positions, and a unit's field then depends on where it "
            f"lies in its window, which no single receptive field describes; the last end point that can "
            f"be answered is {last}",
            field="model.name",
        )
    raise Unsupported(
        f"{node.label or node.op} (node {node.name!r}{where_}) splits an image axis into blocks of {window} "
        f"(a space-to-depth written as reshapes; nn.PixelUnshuffle maps exactly); the last end point that "
        f"can be answered is {last}",
        field="model.name",
    )


def _into_batch(run: Analysis, node: GraphNode) -> bool:
    """Whether the blocks a reshape splits off end up in the batch axis (windows attended one by one, as
    Swin's ``window_partition`` does), following the permutes, reshapes and copies after it."""
    frontier, seen = {node.name}, set()
    for later in run.capture.nodes:
        if later.name in seen or not frontier & set(later.inputs):
            continue
        if not isinstance(later.operation, (ir.Permute, ir.Reshape, ir.Pointwise)) or len(later.inputs) > 1:
            continue
        seen.add(later.name)
        frontier.add(later.name)
        if later.shape and later.shape[0] > 1:
            return True
    return False


def _mixing(run: Analysis, node: GraphNode, inputs: list[Value]) -> Value:
    """Attention, or a product of two computed tensors: every result sees the whole input. A product of
    image maps (rows of one with columns of the other) is refused."""
    if any(v.layout is not None and v.field is not None for v in inputs):
        raise run.unmappable(node, "a product of computed maps over their image axes")
    if isinstance(node.operation, ir.MatMul) and len(inputs) < 2:
        raise run.unmappable(node, "a product of one computed tensor with a constant or with itself")
    if run.strict and any(v.field is not None for v in inputs):
        raise run.global_context_error(node, "mixes every position (attention)")
    return summary(node, inputs, node.name)


def _merge(run: Analysis, node: GraphNode, operation: ir.Merge, inputs: list[Value]) -> Value:
    """Point-wise operations, concatenation and stacking of token sequences (and global tensors)."""
    shape = node.shape or ()
    local: list[tuple[str, Value, Tokens]] = []
    brought: list[Value] = []
    for index, (name, value) in enumerate(zip(node.inputs, inputs, strict=True)):
        if value.tokens is None or value.field is None:
            if value.field is not None:
                raise run.unmappable(node, "it joins a sequence of tokens with an image map")
            brought.append(value)
            continue
        where = value.tokens
        if isinstance(operation, ir.Stack):
            where = where.moved(where.axis + (where.axis >= operation.dim))
        else:
            where = where.moved(where.axis + len(shape) - len(run.capture.node(name).shape or ()))
        if isinstance(operation, ir.Concat) and operation.dim == where.axis:
            if len(operation.starts) != len(node.inputs):
                raise run.unmappable(node, "it joins sequences of tokens along the token axis")
            start = operation.starts[index]
            where = Tokens(where.axis, where.rows, where.columns, where.offset + start, shape[where.axis])
        local.append((name, value, where))
    if brought and run.strict:
        raise run.global_context_error(node, "adds a tensor that sees the whole input (attention)")
    if len({w for _, _, w in local}) > 1:
        raise run.unmappable(node, "it joins sequences of tokens laid out differently")
    if isinstance(operation, ir.Concat) and operation.dim == local[0][2].axis and len(local) > 1:
        raise run.unmappable(node, "it joins sequences of tokens along the token axis")
    fields = [v.field for _, v, _ in local if v.field is not None]
    label = f"node {node.name!r} ({node.label})"
    height, h_shift = merge(
        [(f.name, f.height) for f in fields], where=label, axis_name="height", strict=False
    )
    width, w_shift = merge([(f.name, f.width) for f in fields], where=label, axis_name="width", strict=False)
    if h_shift or w_shift:
        run.misaligned[node.name] = [*h_shift, *w_shift]
    values = [v for _, v, _ in local]
    context = next((v.global_context for v in values + brought if v.global_context), "") or (
        node.name if brought else ""
    )
    kind = "merge" if len(fields) > 1 else "other"
    names = tuple(f.name for f in fields)
    field = LayerField(
        node.name, kind, node.label, height, width, names, module=node.module, global_context=context
    )
    pooled = all(v.pooled for v in values)
    return _checked(node, Value(None, field, context, pooled=pooled, tokens=local[0][2]))


# -- one rule per operation class, for a token sequence with a field ---------------------------------------
TokenRule = Any
TOKEN_RULES: dict[type[Operation], TokenRule] = {}


def token_rule(*kinds: type[Operation]) -> Any:
    def register(function: Any) -> Any:
        for kind in kinds:
            TOKEN_RULES[kind] = function
        return function

    return register


@token_rule(ir.Reshape)
def _reshape(run: Analysis, node: GraphNode, operation: ir.Reshape, x: Value) -> Value:
    assert x.tokens is not None and x.field is not None
    before, after = run.capture.node(node.inputs[0]).shape or (), node.shape or ()
    layout = tokens.unmerged(before, after, x.tokens)
    if layout is not None:
        return run.same(node, replace(x, tokens=None, layout=layout), layout)
    where = tokens.moved(before, after, x.tokens)
    if where is not None:
        return same(run, node, x, where)
    return Value(None, None, x.global_context)  # the tokens merged with other axes: fine for a head


@token_rule(ir.Permute)
def _permute(run: Analysis, node: GraphNode, operation: ir.Permute, x: Value) -> Value:
    assert x.tokens is not None
    return same(run, node, x, x.tokens.moved(operation.dims.index(x.tokens.axis)))


@token_rule(ir.Split)
def _split(run: Analysis, node: GraphNode, operation: ir.Split, x: Value) -> Value:
    assert x.tokens is not None
    return same(run, node, x, x.tokens)  # the pieces (slices, selections) say what they take


@token_rule(ir.Select)
def _select(run: Analysis, node: GraphNode, operation: ir.Select, x: Value) -> Value:
    where = x.tokens
    assert where is not None
    if operation.dim != where.axis:
        return same(run, node, x, where.moved(where.axis - (operation.dim < where.axis)))
    if where.offset <= operation.index % where.length < where.offset + where.grid:
        raise run.unmappable(node, "it selects one patch token (a single position, not a map)")
    return summary(node, [x])  # a class token: no position of its own


@token_rule(ir.Slice)
def _slice(run: Analysis, node: GraphNode, operation: ir.Slice, x: Value) -> Value:
    where, a = x.tokens, operation
    assert where is not None
    if a.dim != where.axis:
        return same(run, node, x, where)
    grid = (where.offset, where.offset + where.grid)
    if a.step == 1 and a.start <= grid[0] and a.end >= grid[1]:
        return same(run, node, x, replace(where, offset=where.offset - a.start, length=a.end - a.start))
    if a.end <= grid[0] or a.start >= grid[1]:
        return summary(node, [x])  # class or other tokens without a position
    raise run.unmappable(node, "it slices part of the patch grid out of a sequence of tokens")


@token_rule(ir.Linear)
def _linear(run: Analysis, node: GraphNode, operation: ir.Linear, x: Value) -> Value:
    assert x.tokens is not None
    if x.tokens.axis == len(node.shape or ()) - 1:  # over the tokens: token mixing
        if run.strict:
            raise run.global_context_error(node, "mixes the tokens with a linear layer")
        return summary(node, [x], node.name)
    return same(run, node, x, x.tokens)


@token_rule(ir.Norm, ir.Softmax)
def _statistics(run: Analysis, node: GraphNode, operation: Any, x: Value) -> Value:
    assert x.tokens is not None
    dims = operation.dims if isinstance(operation, ir.Norm) else (operation.dim,)
    over = x.tokens.axis in dims
    if over and run.strict:
        raise run.global_context_error(node, "takes statistics over the tokens")
    return same(run, node, x, x.tokens, glob=node.name if over else "")


@token_rule(ir.Reduce)
def _reduce(run: Analysis, node: GraphNode, operation: ir.Reduce, x: Value) -> Value:
    where = x.tokens
    assert where is not None
    if where.axis in operation.dims:
        return summary(node, [x])  # pooled over the tokens (a head), or a statistic broadcast back
    if operation.keepdim:
        return same(run, node, x, where)
    return same(run, node, x, where.moved(where.axis - sum(d < where.axis for d in operation.dims)))


@rule(ir.Select)
def _select_image(run: Analysis, node: GraphNode, operation: ir.Select, x: Value) -> Value:
    """A selection from an image map: along another axis it keeps the field."""
    assert x.layout is not None
    if operation.dim in x.layout:
        raise run.unmappable(node, "it selects one row or column of the image")
    h, w = (a - (operation.dim < a) for a in x.layout)
    return run.same(node, x, (h, w))
