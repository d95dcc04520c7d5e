"""Empirical receptive fields: the back-propagation proof of the analytic boxes and the effective field.

* Proof: a gradient-transparent copy of the network (activations and normalisation removed, max-pooling
  replaced by average pooling of the same geometry, every convolution weight set to 1/fan_in, biases 0,
  subtraction turned into addition) is linear with positive weights, so nothing cancels: the input gradient of
  one unit is non-zero exactly on the pixels connected to it. Its bounding box must equal the analytic box
  clipped to the image. It runs in float64 so that deep products of small weights do not underflow.
* Effective receptive field (Luo et al., NeurIPS 2016): mean over random inputs and input channels of
  |d y / d x| for one unit y (summed over its channels), with the network's own random weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nnprobe_services.vision import rf_graph
from nnprobe_services.vision.receptive_field import LayerSpec, Unsupported, Window, output_size, windows

Probe = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class Stopped(Exception):
    """The caller asked to stop (client gone or deadline passed)."""


# -- networks that return the outputs of chosen layers ---------------------------------------------
class _Chain(nn.Module):
    """A single-channel network built from a layer list: zero padding, then a convolution per layer."""

    def __init__(self, specs: Sequence[LayerSpec], input_size: tuple[int, int], weights: str, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.names = [spec.name for spec in specs]
        self.pads: list[tuple[int, int, int, int]] = []
        self.strides: list[tuple[int, int]] = []
        self.dilations: list[tuple[int, int]] = []
        self.kernels = nn.ParameterList()
        size = input_size
        for index, spec in enumerate(specs):
            h, w = windows(spec, size, index)
            out = (output_size(size[0], h), output_size(size[1], w))
            extra = [
                max((o - 1) * win.stride + win.extent - (n + win.pad_before + win.pad_after), 0)
                for o, win, n in zip(out, (h, w), size, strict=True)
            ]
            # F.pad order: left, right, top, bottom; ceil mode adds the missing pixels at the end.
            self.pads.append((w.pad_before, w.pad_after + extra[1], h.pad_before, h.pad_after + extra[0]))
            self.strides.append((h.stride, w.stride))
            self.dilations.append((h.dilation, w.dilation))
            shape = (1, 1, h.kernel, w.kernel)
            if weights == "random" and spec.kind != "pool":
                kernel = (
                    torch.randn(shape, generator=generator, dtype=torch.float64)
                    / (h.kernel * w.kernel) ** 0.5
                )
            else:
                kernel = torch.full(shape, 1.0 / (h.kernel * w.kernel), dtype=torch.float64)
            self.kernels.append(nn.Parameter(kernel, requires_grad=False))
            size = out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"input": x}
        for name, pad, stride, dilation, kernel in zip(
            self.names, self.pads, self.strides, self.dilations, self.kernels, strict=True
        ):
            x = F.conv2d(F.pad(x, pad), kernel.to(x.dtype), stride=stride, dilation=dilation)
            outputs[name] = x
        return outputs


def chain_probe(
    specs: Sequence[LayerSpec],
    input_size: tuple[int, int],
    device: torch.device,
    *,
    weights: str,
    seed: int = 0,
) -> tuple[Probe, int]:
    """A probe over a layer list (``weights``: ``transparent`` or ``random``) and its input channels."""
    return _Chain(specs, input_size, weights, seed).to(device), 1


def _truncate(gm: fx.GraphModule, names: Sequence[str]) -> fx.GraphModule:
    """A copy of ``gm`` whose output is the dict of the named nodes; everything else is dropped."""
    graph = copy.deepcopy(gm.graph)
    by_name = {n.name: n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        new_output = graph.output({name: by_name[name] for name in names})
    graph.erase_node(output)
    del new_output
    truncated = fx.GraphModule(gm, graph)
    truncated.graph.eliminate_dead_code()
    truncated.recompile()
    return truncated


def _avg_pool_like_max(
    x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    if dilation not in (1, (1, 1)) or return_indices:
        raise Unsupported(
            "a dilated max-pooling (or one returning indices) has no transparent twin", field="verify"
        )
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode)


def _make_transparent(gm: fx.GraphModule) -> None:
    """Rewrite ``gm`` in place into its gradient-transparent twin (see the module docstring)."""
    for node in list(gm.graph.nodes):
        op = rf_graph.classify(node, gm)
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                with torch.no_grad():
                    module.weight.fill_(1.0 / fan_in)
                    if module.bias is not None:
                        module.bias.zero_()
            elif isinstance(module, nn.MaxPool2d):
                if module.dilation not in (1, (1, 1)):
                    raise Unsupported(
                        f"{node.name}: a dilated max-pooling has no transparent twin", field="verify"
                    )
                _replace(
                    gm,
                    str(node.target),
                    nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode),
                )
            elif isinstance(module, nn.AdaptiveMaxPool2d):
                _replace(gm, str(node.target), nn.AdaptiveAvgPool2d(module.output_size))
            elif op.category == "pointwise":
                _replace(gm, str(node.target), nn.Identity())
        elif op.category == "pointwise":
            node.replace_all_uses_with(rf_graph.data_inputs(node)[0])
            gm.graph.erase_node(node)
        elif node.target is F.max_pool2d:
            node.target = _avg_pool_like_max
        elif node.target is F.adaptive_max_pool2d:
            node.target = F.adaptive_avg_pool2d
        elif op.category == "merge" and op.label in ("sub", "div"):
            node.target = torch.add if node.op == "call_function" else "add"
    gm.recompile()


def _replace(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def model_probe(
    name: str, layers: Sequence[str], device: torch.device, *, weights: str, seed: int = 0
) -> tuple[Probe, int]:
    """A probe over model ``name`` returning the named nodes.

    ``weights``: ``transparent`` (see the module docstring) or ``random``: PyTorch's default initialisation
    of each remaining layer (``reset_parameters``) drawn with ``seed``. The model is built on the meta
    device and cut at the requested layers first, so the classifier never costs memory.
    """
    gm = _truncate(rf_graph.trace(rf_graph.build(name, "meta"), name), layers)
    gm = gm.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*gm.parameters(), *gm.buffers()]:
            tensor.zero_()
    if weights == "transparent":
        _make_transparent(gm)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in gm.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
    return gm.to(device).eval(), rf_graph.input_channels(gm)


# -- the proof ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradientBox:
    """Rows and columns (0-based, inclusive) where the input gradient is non-zero."""

    first_row: int
    last_row: int
    first_column: int
    last_column: int


def gradient_boxes(
    probe: Probe,
    channels: int,
    input_size: tuple[int, int],
    device: torch.device,
    units: Sequence[tuple[str, int, int]],
    should_stop: Callable[[], bool],
) -> list[GradientBox]:
    """The non-zero-gradient box of each unit (layer, x, y) through a transparent probe, in float64."""
    x = torch.ones(1, channels, *input_size, dtype=torch.float64, device=device, requires_grad=True)
    probe_module = probe if isinstance(probe, nn.Module) else None
    if probe_module is not None:
        probe_module.to(torch.float64)
    outputs = probe(x)
    boxes = []
    for index, (layer, ux, uy) in enumerate(units):
        if should_stop():
            raise Stopped(f"stopped after {index} of {len(units)} units")
        y = outputs[layer][0, :, uy, ux].sum()
        (grad,) = torch.autograd.grad(y, x, retain_graph=index + 1 < len(units))
        support = (grad.abs().sum(dim=(0, 1)) > 0).cpu()
        rows = torch.nonzero(support.any(dim=1)).flatten().tolist()
        cols = torch.nonzero(support.any(dim=0)).flatten().tolist()
        if not rows:
            boxes.append(GradientBox(0, -1, 0, -1))
        else:
            boxes.append(GradientBox(rows[0], rows[-1], cols[0], cols[-1]))
    return boxes


# -- the effective receptive field ----------------------------------------------------------------------
@dataclass(frozen=True)
class EffectiveField:
    """Mean |gradient| map and its summary (see ComputeReceptiveFieldResponse.effective_field)."""

    gradient_map: np.ndarray
    num_samples: int
    sigma_height: float
    sigma_width: float
    mean_row: float
    mean_column: float
    pixels_for_95_percent: int
    theoretical_pixels: int
    mass_inside_field: float


def gradient_map(
    probe: Probe,
    channels: int,
    input_size: tuple[int, int],
    device: torch.device,
    unit: tuple[str, int, int],
    num_samples: int,
    seed: int,
    should_stop: Callable[[], bool],
    batch: int = 4,
) -> np.ndarray:
    """Mean over ``num_samples`` N(0, 1) inputs and over input channels of |d y / d x|, float64 (H, W)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, channels, *input_size, generator=generator)
    layer, ux, uy = unit
    total = torch.zeros(input_size, dtype=torch.float64)
    for start in range(0, num_samples, batch):
        if should_stop():
            raise Stopped(f"stopped after {start} of {num_samples} samples")
        x = inputs[start : start + batch].to(device).requires_grad_(True)
        y = probe(x)[layer][:, :, uy, ux].sum()
        (grad,) = torch.autograd.grad(y, x)
        total += grad.abs().to(torch.float64).sum(dim=(0, 1)).cpu()
    return (total / (num_samples * channels)).numpy()


def summarise(grad_map: np.ndarray, box: tuple[int, int, int, int], num_samples: int) -> EffectiveField:
    """Moments of the map, and the share of the box (first_row, last_row, first_col, last_col) for 95%."""
    total = float(grad_map.sum())
    if not total > 0:
        raise Unsupported("the input gradient of the unit is zero everywhere", field="effective_field")
    rows = np.arange(grad_map.shape[0], dtype=np.float64)
    cols = np.arange(grad_map.shape[1], dtype=np.float64)
    row_mass, col_mass = grad_map.sum(axis=1) / total, grad_map.sum(axis=0) / total
    mean_row, mean_col = float(row_mass @ rows), float(col_mass @ cols)
    sigma_h = float(np.sqrt(row_mass @ (rows - mean_row) ** 2))
    sigma_w = float(np.sqrt(col_mass @ (cols - mean_col) ** 2))
    r0, r1, c0, c1 = box
    inside = grad_map[r0 : r1 + 1, c0 : c1 + 1]
    values = np.sort(inside, axis=None)[::-1]
    needed = int(np.searchsorted(np.cumsum(values), 0.95 * total, side="left")) + 1
    return EffectiveField(
        gradient_map=grad_map,
        num_samples=num_samples,
        sigma_height=sigma_h,
        sigma_width=sigma_w,
        mean_row=mean_row,
        mean_column=mean_col,
        pixels_for_95_percent=min(needed, values.size),
        theoretical_pixels=int(values.size),
        mass_inside_field=float(inside.sum()) / total,
    )


__all__ = ["Window"]
