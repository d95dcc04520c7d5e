"""The gradient-transparent twin of a captured graph, built from the graph alone (any front-end, ONNX too).

Every convolution gets weights 1 / fan_in and no bias, every linear layer over channels 1 / in_features,
max-pooling becomes average pooling of the same geometry (every pooling a depthwise convolution of ones),
activations, normalisations and gates become the identity, and a merge adds its local inputs, holding the
global ones (a squeeze-and-excitation gate, a broadcast pooled map) constant. Padding keeps its mode (zeros,
reflect, replicate), upsampling and depth-to-space stay what they are. The twin is linear with positive
weights, so nothing cancels: the input gradient of one unit is non-zero exactly on the pixels connected to
it through the local paths. Only the layers on the way to the requested ones run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnprobe_services.vision.receptive_fields import ir
from nnprobe_services.vision.receptive_fields.arithmetic import LayerField, Unsupported, Window
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode
from nnprobe_services.vision.receptive_fields.tokens import Tokens
from nnprobe_services.vision.receptive_fields.twin_resize import conv_transpose, resize


def canonical(x: torch.Tensor, layout: tuple[int, int] | Tokens) -> torch.Tensor:
    """``x`` as (N, C', H, W): the image axes (``layout``) last, every other axis after the batch folded into
    channels (an NHWC map, a stack of branches), so that unit (x, y) is ``[:, :, y, x]`` for any layer. A
    sequence of tokens (``Tokens``) gives its patch grid, the tokens without a position left out."""
    if isinstance(layout, Tokens):
        grid = x.movedim(layout.axis, -1)[..., layout.offset : layout.offset + layout.grid]
        grid = grid.reshape(x.shape[0], -1, layout.grid)
        return grid.reshape(x.shape[0], -1, layout.rows, layout.columns)
    rest = [d for d in range(1, x.dim()) if d not in layout]
    return x.permute(0, *rest, *layout).reshape(x.shape[0], -1, x.shape[layout[0]], x.shape[layout[1]])


class Canonical(nn.Module):
    """Wraps a probe so that every output it returns is ``canonical``."""

    def __init__(self, probe: nn.Module, layouts: dict[str, tuple[int, int] | Tokens]) -> None:
        super().__init__()
        self.probe, self.layouts = probe, layouts

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: canonical(y, self.layouts[name]) for name, y in self.probe(x).items()}


class TransparentTwin(nn.Module):
    """``twin(x)`` -> {layer: output as (N, C', H, W)} for the requested layers; ``x`` of shape (N, C, H, W),
    any float dtype (float64 for deep networks, where products of small weights would underflow in float32).
    ``layouts``: the positions of the image axes in each layer's output."""

    def __init__(
        self,
        capture: Capture,
        fields: Sequence[LayerField],
        layers: Sequence[str],
        layouts: dict[str, tuple[int, int] | Tokens],
    ) -> None:
        super().__init__()
        self.capture, self.layouts = capture, layouts
        self.fields = {f.name: f for f in fields}
        self.layers = list(layers)
        needed: set[str] = set()
        stack = list(layers)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(self.fields[name].inputs)
        self.order = [n for n in capture.nodes if n.name in needed]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        for node in self.order:
            if isinstance(node.operation, ir.Input):
                values[node.name] = x
                continue
            try:
                values[node.name] = self._run(node, values)
            except Unsupported:
                raise
            except Exception as error:  # an operation the twin cannot replay: say which, never fail inside
                raise Unsupported(
                    f"node {node.name!r} ({node.label}) cannot be replayed by the transparent twin: "
                    f"{type(error).__name__}: {error}",
                    field="verify",
                ) from None
        return {name: canonical(values[name], self.layouts[name]) for name in self.layers}

    def _run(self, node: GraphNode, values: dict[str, torch.Tensor]) -> torch.Tensor:
        local = [values[name] for name in self.fields[node.name].inputs]
        replay = next((REPLAYS[kind] for kind in type(node.operation).__mro__ if kind in REPLAYS), None)
        result = replay(self, node, node.operation, local, values) if replay is not None else None
        if result is None:
            raise Unsupported(f"node {node.name!r} ({node.label}) has no transparent twin", field="verify")
        return result


#: How each operation class runs in the twin: (twin, node, operation, the local inputs' values, every value
#: so far) -> the node's value, or None when the twin cannot replay it. Filled by ``_replays``.
Replay = Callable[[TransparentTwin, GraphNode, Any, list[torch.Tensor], dict[str, torch.Tensor]], Any]
REPLAYS: dict[type[ir.Operation], Replay] = {}


def _replays(*kinds: type[ir.Operation]) -> Callable[[Replay], Replay]:
    def register(function: Replay) -> Replay:
        for kind in kinds:
            REPLAYS[kind] = function
        return function

    return register


@_replays(ir.Conv)
def _conv(twin: TransparentTwin, node: GraphNode, op: ir.Conv, local: list[torch.Tensor], values: Any) -> Any:
    x = local[0]
    h, w = op.windows
    weight = torch.ones(
        op.out_channels, x.shape[1] // op.groups, h.kernel, w.kernel, dtype=x.dtype, device=x.device
    )
    x = F.pad(x, (w.pad_before, w.pad_after, h.pad_before, h.pad_after))
    weight /= weight[0].numel()
    return F.conv2d(
        x, weight, stride=(h.stride, w.stride), dilation=(h.dilation, w.dilation), groups=op.groups
    )


@_replays(ir.Pool, ir.AdaptivePool, ir.Reduce)
def _pool(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    """Pooling as a depthwise average; a reduction without windows sums."""
    field, x = twin.fields[node.name], local[0]
    if field.windows is not None and x.dim() == 4:
        return _average(x, field.windows, field.height.size, field.width.size)
    if isinstance(op, ir.Reduce):
        return x.sum(dim=op.dims, keepdim=op.keepdim) if op.keepdim else x.sum(dim=op.dims)
    return None


@_replays(ir.Pad)
def _pad(twin: TransparentTwin, node: GraphNode, op: ir.Pad, local: list[torch.Tensor], values: Any) -> Any:
    mode = {"zeros": "constant"}.get(op.mode, op.mode)
    pads = list(op.pads)
    while len(pads) > 2 and pads[-2:] == [0, 0]:  # leading axes unpadded (ONNX lists every axis)
        pads = pads[:-2]
    return F.pad(local[0], pads, mode=mode)


@_replays(ir.Slice)
def _slice(
    twin: TransparentTwin, node: GraphNode, op: ir.Slice, local: list[torch.Tensor], values: Any
) -> Any:
    return local[0][_slicer(local[0].dim(), op)]


@_replays(ir.Select)
def _select(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return local[0].select(op.dim, op.index)


@_replays(ir.Upsample)
def _upsample(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return resize(local[0], tuple(node.shape[2:]), op)  # type: ignore[index, arg-type]


@_replays(ir.ConvTranspose)
def _conv_transpose(
    twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any
) -> Any:
    return conv_transpose(local[0], op, tuple(node.shape[2:]))  # type: ignore[index, arg-type]


@_replays(ir.PixelShuffle)
def _shuffle(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return F.pixel_shuffle(local[0], op.factor)


@_replays(ir.PixelUnshuffle)
def _unshuffle(
    twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any
) -> Any:
    return F.pixel_unshuffle(local[0], op.factor)


@_replays(ir.Permute)
def _permute(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return local[0].permute(*op.dims)


@_replays(ir.Reshape)
def _reshape(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return local[0].reshape(node.shape or local[0].shape)


@_replays(ir.Linear)
def _linear(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    x = local[0]
    weight = torch.full((op.in_features, op.out_features), 1 / op.in_features, dtype=x.dtype)
    return x @ weight.to(x.device)


@_replays(ir.Split)
def _split(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    return local[0]  # the pieces slice the tensor itself


@_replays(ir.Concat, ir.Stack)
def _join(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    pieces = []
    for name in node.inputs:
        if name in values and name in twin.fields[node.name].inputs:
            pieces.append(values[name])
        else:  # a global input, held constant
            template = next(iter(values.values()))
            piece_shape = twin.capture.node(name).shape
            zeros = torch.zeros(piece_shape or (), dtype=template.dtype, device=template.device)
            pieces.append(zeros)
    if isinstance(op, ir.Concat) and op.starts:  # constants joined too (a class token): zeros there
        out = pieces[0].new_zeros(node.shape or ())
        index = [slice(None)] * out.dim()
        for start, piece in zip(op.starts, pieces, strict=True):
            index[op.dim] = slice(start, start + piece.shape[op.dim])
            out[tuple(index)] = piece
        return out
    join = torch.stack if isinstance(op, ir.Stack) else torch.cat
    return join(pieces, op.dim)


@_replays(ir.Pointwise, ir.Norm, ir.Softmax)
def _sum(twin: TransparentTwin, node: GraphNode, op: Any, local: list[torch.Tensor], values: Any) -> Any:
    """Point-wise operations and normalisations: the sum of the local inputs, broadcast."""
    total = None
    for value in local:
        value = torch.broadcast_to(value, node.shape) if node.shape is not None else value
        total = value if total is None else total + value
    assert total is not None
    return total


def _slicer(rank: int, a: ir.Slice) -> tuple[slice, ...]:
    index = [slice(None)] * rank
    index[a.dim] = slice(a.start, a.end, a.step)
    return tuple(index)


def _average(x: torch.Tensor, windows: tuple[Window, Window], out_h: int, out_w: int) -> torch.Tensor:
    """A depthwise convolution of ones / (k_h k_w) with the windows' geometry; ceil mode adds the missing
    positions at the end (as zeros, which a transparent twin may: only the support matters)."""
    h, w = windows
    extra = [
        max((o - 1) * win.stride + win.extent - (n + win.pad_before + win.pad_after), 0)
        for o, win, n in ((out_h, h, x.shape[2]), (out_w, w, x.shape[3]))
    ]
    x = F.pad(x, (w.pad_before, w.pad_after + extra[1], h.pad_before, h.pad_after + extra[0]))
    channels = x.shape[1]
    weight = torch.full(
        (channels, 1, h.kernel, w.kernel), 1 / (h.kernel * w.kernel), dtype=x.dtype, device=x.device
    )
    y = F.conv2d(x, weight, stride=(h.stride, w.stride), dilation=(h.dilation, w.dilation), groups=channels)
    assert tuple(y.shape[2:]) == (out_h, out_w), (tuple(y.shape), out_h, out_w)
    return y
