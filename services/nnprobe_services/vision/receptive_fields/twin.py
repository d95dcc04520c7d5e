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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnprobe_services.vision.receptive_fields.arithmetic import LayerField, Unsupported, Window
from nnprobe_services.vision.receptive_fields.ir import Capture, GraphNode


def canonical(x: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    """``x`` as (N, C', H, W): the image axes (``layout``) last, every other axis after the batch folded into
    channels (an NHWC map, a stack of branches), so that unit (x, y) is ``[:, :, y, x]`` for any layer."""
    rest = [d for d in range(1, x.dim()) if d not in layout]
    return x.permute(0, *rest, *layout).reshape(x.shape[0], -1, x.shape[layout[0]], x.shape[layout[1]])


class Canonical(nn.Module):
    """Wraps a probe so that every output it returns is ``canonical``."""

    def __init__(self, probe: nn.Module, layouts: dict[str, tuple[int, int]]) -> None:
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
        layouts: dict[str, tuple[int, int]],
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
            if node.op == "input":
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
        field = self.fields[node.name]
        local = [values[name] for name in field.inputs]
        x = local[0]
        shape = node.shape
        op, a = node.op, node.attrs
        if op == "conv":
            c_out, groups = a["out_channels"], a["groups"]
            h, w = a["windows"]
            weight = torch.ones(
                c_out, x.shape[1] // groups, h.kernel, w.kernel, dtype=x.dtype, device=x.device
            )
            x = F.pad(x, (w.pad_before, w.pad_after, h.pad_before, h.pad_after))
            weight /= weight[0].numel()
            return F.conv2d(
                x, weight, stride=(h.stride, w.stride), dilation=(h.dilation, w.dilation), groups=groups
            )
        if field.windows is not None and op in ("pool", "adaptive_pool", "reduce") and x.dim() == 4:
            return _average(x, field.windows, field.height.size, field.width.size)
        if op == "pad":
            mode = {"zeros": "constant"}.get(a["mode"], a["mode"])
            pads = list(a["pads"])
            while len(pads) > 2 and pads[-2:] == [0, 0]:  # leading axes unpadded (ONNX lists every axis)
                pads = pads[:-2]
            return F.pad(x, pads, mode=mode)
        if op == "slice":
            return x[_slicer(x.dim(), a)]
        if op == "upsample":
            return F.interpolate(x, size=tuple(shape[2:]), mode="nearest")  # type: ignore[index]
        if op == "pixel_shuffle":
            return F.pixel_shuffle(x, a["factor"])
        if op == "pixel_unshuffle":
            return F.pixel_unshuffle(x, a["factor"])
        if op == "permute":
            return x.permute(*a["dims"])
        if op == "reshape":
            return x.reshape(shape or x.shape)
        if op == "linear":
            weight = torch.full((a["in_features"], a["out_features"]), 1 / a["in_features"], dtype=x.dtype)
            return x @ weight.to(x.device)
        if op == "reduce":
            return x.sum(dim=a["dims"], keepdim=a["keepdim"]) if a["keepdim"] else x.sum(dim=a["dims"])
        if op == "tuple":  # the pieces slice the tensor itself
            return x
        if op in ("cat", "stack"):
            return self._cat(node, values)
        if op in ("elementwise", "norm", "softmax"):
            total = None
            for value in local:
                value = torch.broadcast_to(value, shape) if shape is not None else value
                total = value if total is None else total + value
            assert total is not None
            return total
        raise Unsupported(f"node {node.name!r} ({node.label}) has no transparent twin", field="verify")

    def _cat(self, node: GraphNode, values: dict[str, torch.Tensor]) -> torch.Tensor:
        pieces = []
        for name in node.inputs:
            if name in values and name in self.fields[node.name].inputs:
                pieces.append(values[name])
            else:  # a global input, held constant
                template = next(iter(values.values()))
                piece_shape = self.capture.node(name).shape
                zeros = torch.zeros(piece_shape or (), dtype=template.dtype, device=template.device)
                pieces.append(zeros)
        join = torch.stack if node.op == "stack" else torch.cat
        return join(pieces, node.attrs["dim"])


def _slicer(rank: int, a: dict) -> tuple[slice, ...]:
    index = [slice(None)] * rank
    index[a["dim"]] = slice(a["start"], a["end"], a["step"])
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
