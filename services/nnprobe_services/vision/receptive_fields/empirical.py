"""Empirical receptive fields: the back-propagation proof of the analytic boxes and the effective field.

* Proof: a gradient-transparent copy of the network (``twin``: activations and normalisation removed,
  max-pooling replaced by average pooling of the same geometry, every convolution weight set to 1/fan_in,
  biases 0, merges turned into additions, global gates held constant) is linear with positive weights, so
  nothing cancels: the input gradient of one unit is non-zero exactly on the pixels connected to it. Its
  bounding box must equal the analytic box clipped to the image. It runs in float64 so that deep products of
  small weights do not underflow.
* Effective receptive field (Luo et al., NeurIPS 2016): mean over random inputs and input channels of
  |d y / d x| for one unit y (summed over its channels), with the network's own random weights.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nnprobe_services.errors import Cancelled, ResourceExhausted
from nnprobe_services.vision.receptive_fields import catalogue
from nnprobe_services.vision.receptive_fields.arithmetic import (
    LayerSpec,
    Unsupported,
    Window,
    output_size,
    windows,
)
from nnprobe_services.vision.receptive_fields.frontends import trace_worker
from nnprobe_services.vision.receptive_fields.ir import Capture
from nnprobe_services.vision.receptive_fields.propagate import Analysis
from nnprobe_services.vision.receptive_fields.twin import Canonical, TransparentTwin

Probe = Callable[[torch.Tensor], dict[str, torch.Tensor]]


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


#: Bounds on the single-channel float64 network that checks a layer list by back-propagation: one layer's
#: padded input, one layer's kernel (k_h * k_w), all maps kept for the backward pass, multiply-adds of one
#: forward pass. Within them a check takes at most a few hundred megabytes and a few seconds per pass.
MAX_CHAIN_MAP = 1 << 24
MAX_CHAIN_KERNEL = 1 << 20
MAX_CHAIN_ELEMENTS = 1 << 25
MAX_CHAIN_WORK = 1 << 31


def check_chain_size(specs: Sequence[LayerSpec], input_size: tuple[int, int]) -> None:
    """Raise ``ResourceExhausted`` naming ``layers[i].kernel`` or ``layers[i].padding`` when the network
    built for ``specs`` would exceed the bounds above (from the analytic sizes, before any allocation)."""
    size, elements, work = input_size, input_size[0] * input_size[1], 0
    for index, spec in enumerate(specs):
        h, w = windows(spec, size, index)
        out = (output_size(size[0], h), output_size(size[1], w))
        padded = [
            max(n + win.pad_before + win.pad_after, (o - 1) * win.stride + win.extent)
            for o, win, n in zip(out, (h, w), size, strict=True)
        ]
        where = f"layer {spec.name!r} (layers[{index}])"
        kernel = h.kernel * w.kernel
        if kernel > MAX_CHAIN_KERNEL:
            raise ResourceExhausted(
                f"{where}: a kernel of {h.kernel} x {w.kernel} = {kernel} weights is too large for the "
                f"back-propagation check (at most {MAX_CHAIN_KERNEL})",
                field=f"layers[{index}].kernel",
            )
        if padded[0] * padded[1] > MAX_CHAIN_MAP:
            raise ResourceExhausted(
                f"{where}: its padded input of {padded[0]} x {padded[1]} values is too large for the "
                f"back-propagation check (at most {MAX_CHAIN_MAP})",
                field=f"layers[{index}].padding",
            )
        elements += padded[0] * padded[1] + out[0] * out[1]
        work += out[0] * out[1] * kernel
        if elements > MAX_CHAIN_ELEMENTS:
            raise ResourceExhausted(
                f"{where}: the feature maps up to this layer hold {elements} values, too many for the "
                f"back-propagation check (at most {MAX_CHAIN_ELEMENTS})",
                field=f"layers[{index}].padding",
            )
        if work > MAX_CHAIN_WORK:
            raise ResourceExhausted(
                f"{where}: a forward pass up to this layer takes {work} multiply-adds, too many for the "
                f"back-propagation check (at most {MAX_CHAIN_WORK})",
                field=f"layers[{index}].kernel",
            )
        size = out


def chain_probe(
    specs: Sequence[LayerSpec],
    input_size: tuple[int, int],
    device: torch.device,
    *,
    weights: str,
    seed: int = 0,
) -> tuple[Probe, int]:
    """A probe over a layer list (``weights``: ``transparent`` or ``random``) and its input channels.
    Raises ``ResourceExhausted`` when it would be too large (``check_chain_size``)."""
    check_chain_size(specs, input_size)
    return _Chain(specs, input_size, weights, seed).to(device), 1


def _truncate(gm: fx.GraphModule, names: Sequence[tuple[str, str]]) -> fx.GraphModule:
    """A copy of ``gm`` whose output is the dict of the nodes named by (output key, node name) pairs;
    everything else is dropped."""
    graph = copy.deepcopy(gm.graph)
    by_name = {n.name: n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        new_output = graph.output({name: by_name[source] for name, source in names})
    graph.erase_node(output)
    del new_output
    truncated = fx.GraphModule(gm, graph)
    truncated.graph.eliminate_dead_code()
    truncated.recompile()
    return truncated


def twin_probe(capture: Capture, layers: Sequence[str], device: torch.device) -> tuple[Probe, int]:
    """The gradient-transparent twin (``twin``) of a capture, returning the named layers, and its input
    channels. Raises ``Unsupported`` when a layer on the way has no field."""
    run = Analysis(capture, Fraction(1, 2), False)
    fields = [v.field for v in run.values.values() if v.field is not None]
    known = {f.name for f in fields}
    for layer in layers:
        if layer not in known:
            problem = run.problems.get(layer)
            raise Unsupported(problem.message if problem else f"layer {layer!r} has no field", field="verify")
    layouts = {name: v.where for name, v in run.values.items() if v.where is not None}
    twin = TransparentTwin(capture, fields, layers, layouts).to(device)
    return twin, capture.channels


def model_probe(
    name: str,
    layers: Sequence[str],
    device: torch.device,
    *,
    weights: str,
    seed: int = 0,
    input_size: tuple[int, int] | None = None,
    options: tuple[tuple[str, str], ...] = (),
) -> tuple[Probe, int]:
    """A probe over model ``name`` built with constructor ``options`` (captured at ``input_size``, default
    the model's own) returning the named layers.

    ``weights``: ``transparent`` (the twin of ``twin``) or ``random``: the captured ATen graph, cut at the
    requested layers, with PyTorch's default initialisation of the model's layers drawn from a private
    generator seeded with ``seed`` (see ``initialise``), so the classifier never costs memory.
    """
    size = input_size or catalogue.default_size(name, options)
    capture, graph = trace_worker.captured(name, size, options)
    if weights == "transparent":
        return twin_probe(capture, layers, device)
    sources = [(layer, capture.node(layer).source) for layer in layers]
    gm = _truncate(copy.deepcopy(graph), sources).to_empty(device="cpu")
    model = catalogue.build(name, "cpu", options)
    initialise(model, seed)
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in [*gm.named_parameters(), *gm.named_buffers()]:
            if key not in state:
                raise Unsupported(f"the captured graph of {name!r} holds {key!r}, which the model has not")
            tensor.copy_(state[key])
    run = Analysis(capture, Fraction(1, 2), False)
    layouts = {layer: run.values[layer].where for layer in layers}
    if any(layout is None for layout in layouts.values()):
        raise Unsupported("a requested layer has no image axes", field="effective_field.unit.layer")
    probe = Canonical(gm, layouts)  # type: ignore[arg-type]
    return probe.to(device).eval(), capture.channels


#: Serialises the modules whose own initialisation draws from torch's global generator.
_GLOBAL_RNG_LOCK = threading.Lock()
#: Initialisations without randomness (ones, zeros, running statistics reset): safe to call as they are.
_DETERMINISTIC_RESETS = (
    nn.modules.batchnorm._NormBase.reset_parameters,
    nn.LayerNorm.reset_parameters,
    nn.GroupNorm.reset_parameters,
)


def initialise(model: nn.Module, seed: int) -> None:
    """PyTorch's default initialisation of every module of ``model``, in module order, drawn from a private
    generator seeded with ``seed``, so that other threads using torch's global generator neither change the
    result nor are changed by it. Convolutions and linear layers: weight kaiming_uniform(a=sqrt(5)), bias
    U(+-1/sqrt(fan_in)); normalisation layers: weight 1, bias 0, running statistics reset. Any other module
    with ``reset_parameters`` runs it on the global generator, seeded from the private one, under a lock."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        reset = getattr(type(module), "reset_parameters", None)
        if reset is None:
            continue
        if reset is nn.modules.conv._ConvNd.reset_parameters or reset is nn.Linear.reset_parameters:
            _default_weight_and_bias(module, generator)
        elif reset in _DETERMINISTIC_RESETS:
            reset(module)
        else:
            derived = int(torch.randint(0, 2**62, (1,), generator=generator))
            with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived)
                reset(module)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()


def _default_weight_and_bias(module: nn.Module, generator: torch.Generator) -> None:
    """What ``_ConvNd.reset_parameters`` and ``Linear.reset_parameters`` do, with ``generator``."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        target = (
            weight
            if weight.is_contiguous()
            else torch.empty_like(weight, memory_format=torch.contiguous_format)
        )
        nn.init.kaiming_uniform_(target, a=math.sqrt(5), generator=generator)
        if target is not weight:
            weight.copy_(target)
        bias = module.bias
        if isinstance(bias, torch.Tensor):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(bias, -bound, bound, generator=generator)


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
            raise Cancelled(f"stopped after {index} of {len(units)} units")
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
    generator = torch.Generator().manual_seed(seed)  # private: other threads cannot disturb the draws
    layer, ux, uy = unit
    total = torch.zeros(input_size, dtype=torch.float64)
    for start in range(0, num_samples, batch):
        if should_stop():
            raise Cancelled(f"stopped after {start} of {num_samples} samples")
        count = min(batch, num_samples - start)  # one batch in memory at a time
        inputs = torch.randn(count, channels, *input_size, generator=generator)
        x = inputs.to(device).requires_grad_(True)
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
