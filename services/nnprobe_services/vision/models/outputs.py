"""What a repository model must return, checked before it is served or installed, and how a model that
returns probabilities is served.

A classifier returns exactly one float tensor of shape (N, classes), ``classes`` >= 2 and equal to the number
of its labels (or its config's ``num_classes``). Anything else is refused naming what was found: a graph that
ends in ArgMax or TopK returns class numbers (int64), a segmentation network (N, C, H, W), a detector several
outputs. The declared signature (ONNX Runtime's outputs, the ``torch.export`` program's output node) is
checked, then a forward pass at the configured input size.

``output: probabilities`` in ``config.yaml`` declares a network that ends in a softmax: it is served through
``ProbabilityOutputs``, which returns the log of the probabilities (clamped to float32's smallest normal
number) wherever logits are expected. A softmax of those is the model's own probabilities again, so
classification applies no second softmax in effect, and attacks take gradients of log-probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import quote
from nnprobe_services.vision.models.config import ModelConfig

ONNX_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")
#: How far a probabilities model's rows may sum from 1.
PROBABILITY_TOLERANCE = 1e-3
EXPECTED = "an image classifier returns one (N, classes) float tensor of logits or probabilities"
CLASS_NUMBERS = "; a graph ending in ArgMax or TopK returns class numbers: export the network before it"


def _count(outputs: list[str], field: str) -> None:
    if len(outputs) != 1:
        names = ", ".join(quote(name, 40) for name in outputs[:4])
        raise InvalidArgument(f"the model has {len(outputs)} outputs ({names}); {EXPECTED}", field=field)


def check_onnx_outputs(session: Any, field: str) -> None:
    """The declared outputs of an ``onnxruntime.InferenceSession``: one float tensor of rank 2."""
    outputs = session.get_outputs()
    _count([output.name for output in outputs], field)
    (output,) = outputs
    if output.type not in ONNX_FLOAT_TYPES:
        raise InvalidArgument(
            f"the model's output {quote(output.name, 40)} is {output.type}, not float; "
            f"{EXPECTED}{CLASS_NUMBERS}",
            field=field,
        )
    shape = output.shape
    if isinstance(shape, list) and len(shape) != 2:
        raise InvalidArgument(
            f"the model's output {quote(output.name, 40)} has shape {quote(tuple(shape))} "
            f"(rank {len(shape)}); "
            f"{EXPECTED}",
            field=field,
        )


def check_pt2_outputs(program: torch.export.ExportedProgram, field: str) -> None:
    """The user outputs of a ``torch.export`` program: one floating tensor of rank 2."""
    names = [str(name) for name in program.graph_signature.user_outputs]
    _count(names, field)
    node = next(n for n in program.graph.nodes if n.op == "output")
    value = getattr(list(node.args[0])[-1], "meta", {}).get("val")
    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(
            f"the model's output is a {type(value).__name__}, not a tensor; {EXPECTED}", field=field
        )
    if not value.dtype.is_floating_point:
        raise InvalidArgument(
            f"the model's output is {value.dtype}, not float; {EXPECTED}{CLASS_NUMBERS}", field=field
        )
    if value.ndim != 2:
        raise InvalidArgument(
            f"the model's output has shape {quote(tuple(value.shape))} (rank {value.ndim}); {EXPECTED}",
            field=field,
        )


def expected_classes(config: ModelConfig, labels: tuple[str, ...]) -> tuple[int | None, str]:
    """The number of classes the model must have and what says so (labels first, then ``num_classes``)."""
    if labels:
        return len(labels), f"{len(labels)} labels"
    if config.num_classes is not None:
        return config.num_classes, f"config num_classes {config.num_classes}"
    return None, ""


def check_probe(output: torch.Tensor, config: ModelConfig, labels: tuple[str, ...], field: str) -> int:
    """The classes of a forward pass's ``output`` for one image; ``InvalidArgument`` when it is not a
    classifier's, does not match the labels or ``num_classes``, or is not probabilities where declared."""
    if output.ndim != 2 or output.shape[0] != 1:
        raise InvalidArgument(
            f"the model returns shape {quote(tuple(output.shape))} for one image, not (1, classes); "
            f"{EXPECTED}",
            field=field,
        )
    classes = int(output.shape[1])
    if classes < 2:
        raise InvalidArgument(
            f"the model returns {classes} class(es); a classifier has at least 2{CLASS_NUMBERS}", field=field
        )
    wanted, source = expected_classes(config, labels)
    if wanted is not None and wanted != classes:
        raise InvalidArgument(
            f"the model has {classes} classes but {source}",
            field="metadata.labels" if labels else f"{field} (config num_classes)",
        )
    if config.output == "probabilities":
        total = float(output.double().sum())
        if not (output >= 0).all() or not (output <= 1).all() or abs(total - 1) > PROBABILITY_TOLERANCE:
            raise InvalidArgument(
                f"config declares output: probabilities, but the model's outputs range over "
                f"[{float(output.min()):.3g}, {float(output.max()):.3g}] and sum to {total:.4g}; declare "
                "output: logits unless the network ends in a softmax",
                field=field,
            )
    return classes


class LogProbabilities(nn.Module):
    """``log(max(p, tiny))``: probabilities as logits (a softmax of them gives ``p`` back)."""

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.float().clamp_min(torch.finfo(torch.float32).tiny).log()


class ProbabilityOutputs:
    """A backend over one whose model returns probabilities: log-probabilities where logits are expected."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self._log = LogProbabilities()
        self._module: nn.Module | None = None

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._log(self.inner.predict(pixels))

    def differentiable(self) -> nn.Module:
        if self._module is None:
            self._module = nn.Sequential(self.inner.differentiable(), self._log)
        return self._module
