"""Networks with the user's own weights that return chosen layers' outputs: a ``torch.export`` archive of the
model repository (its captured ATen graph, which holds the program's trained parameters, cut at the layers)
and an ONNX model (its graph with the layers' tensors as outputs, converted to PyTorch by onnx2torch as the
attacks convert ONNX models, ``models.backends``). Every output is (N, C', H, W) with the image axes last
(``twin.canonical``; a sequence of patch tokens gives its patch grid, the tokens without a position left
out); the input is the network's own input tensor (N, C, H, W), after any normalisation.
Errors: ``FailedPrecondition`` on ``model.name`` (onnx2torch cannot convert the graph), ``Unsupported`` (a
layer with neither image axes nor patch tokens)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.vision.models import backends
from nnprobe_services.vision.receptive_fields import empirical
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader, trace_worker
from nnprobe_services.vision.receptive_fields.ir import Capture
from nnprobe_services.vision.receptive_fields.propagate import Analysis
from nnprobe_services.vision.receptive_fields.tokens import Tokens
from nnprobe_services.vision.receptive_fields.twin import Canonical, canonical


def _layouts(capture: Capture, layers: Sequence[str], field: str) -> dict[str, tuple[int, int] | Tokens]:
    """Where each layer keeps its positions: the image axes of a map, or the patch grid of a token
    sequence (``tokens.Tokens``), as the built-in networks' probes read them."""
    run = Analysis(capture, Fraction(1, 2), False)
    layouts: dict[str, tuple[int, int] | Tokens] = {}
    for layer in layers:
        value = run.values.get(layer)
        where = None if value is None else value.where
        if where is None:
            raise Unsupported(f"layer {layer!r} has neither image axes nor patch tokens", field=field)
        layouts[layer] = where
    return layouts


def program_probe(
    program: trace_worker.Program,
    size: tuple[int, int],
    layers: Sequence[str],
    device: torch.device,
    field: str = "effective_field.unit.layer",
) -> tuple[empirical.Probe, int]:
    """The archive's captured graph at ``size`` with its trained weights, returning ``layers``."""
    capture, graph = trace_worker.captured_program(program, size)
    gm = empirical._truncate(copy.deepcopy(graph), [(layer, capture.node(layer).source) for layer in layers])
    probe = Canonical(gm, _layouts(capture, layers, field))  # type: ignore[arg-type]
    return probe.to(device).eval().requires_grad_(False), capture.channels


class _OnnxLayers(nn.Module):
    """An onnx2torch network whose outputs are the layers' tensors, as a dict of canonical maps."""

    def __init__(self, network: nn.Module, layouts: dict[str, tuple[int, int] | Tokens]) -> None:
        super().__init__()
        self.network, self.layouts = network, layouts

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.network(x)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {
            name: canonical(y, layout)
            for (name, layout), y in zip(self.layouts.items(), outputs, strict=True)
        }


def onnx_probe(
    data: bytes,
    size: tuple[int, int],
    layers: Sequence[str],
    device: torch.device,
    label: str,
    field: str = "effective_field.unit.layer",
) -> tuple[empirical.Probe, int]:
    """The ONNX model ``data`` (serialised, external data inlined) with its own weights, cut at ``layers``
    (node names of its capture at ``size``) and converted by onnx2torch."""
    import onnx
    from onnx2torch import convert

    capture = onnx_reader.read(data, size, label)
    layouts = _layouts(capture, layers, field)
    model = onnx.load_from_string(data)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=capture.node(layer).source) for layer in layers)
    missing = backends.unconvertible_ops(model)
    if missing:
        raise FailedPrecondition(
            f"the gradients of model {label!r} need a PyTorch conversion, and onnx2torch cannot convert "
            f"{', '.join(missing)}; upload the network as a torch.export archive (model.pt2) instead",
            field="model.name",
        )
    try:
        network = convert(model)
    except Exception as error:  # onnx2torch raises NotImplementedError and others for attribute variants
        raise FailedPrecondition(
            f"onnx2torch cannot convert model {label!r}: {str(error)[:200]}", field="model.name"
        ) from None
    probe = _OnnxLayers(network, layouts)
    return probe.to(device).eval().requires_grad_(False), capture.channels
