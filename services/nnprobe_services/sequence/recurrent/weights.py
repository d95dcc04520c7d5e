"""Recurrent-cell weights in requests: given tensors checked against the cell's expected names and shapes, or
drawn from an initialisation scheme within ``max_tensor_elements``. Errors name the request field:
``InvalidArgument``, or ``ResourceExhausted`` over the limit. Weights come back as float64 CPU tensors;
``finite_in`` converts them to the request's dtype, refusing values that do not fit it, and
``check_rescalable`` refuses recurrent weights that no spectral radius can be rescaled to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import rnn
from nnprobe_services.server.config import ServerConfig

INIT: dict[int, str] = {
    pb.INIT_SCHEME_PYTORCH: "pytorch",
    pb.INIT_SCHEME_NORMAL: "normal",
    pb.INIT_SCHEME_ORTHOGONAL: "orthogonal",
}


class WeightReader:
    """Reads cell weights and float tensors against the server's limits (``config``)."""

    def __init__(self, config: ServerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device

    def _float_tensor(self, message: common_pb2.Tensor, field: str, *, ndim: int) -> torch.Tensor:
        array = valid.tensor(message, field, max_elements=self.config.common.max_tensor_elements, ndim=ndim)
        if array.dtype.kind != "f":
            raise InvalidArgument(f"must be float32 or float64, not {array.dtype}", field=field)
        return torch.from_numpy(array)

    def _cell_weights(self, spec: pb.RecurrentCell, kind: str, input_size: int, prefix: str):
        """Validate the given weights of ``spec`` or draw them; float64 CPU tensors. ``prefix`` names the
        message holding the cell's fields (``cell.``; empty when they are top-level request fields)."""
        if spec.weights:
            return self._given_weights(
                spec.weights, kind, f"{prefix}weights", input_size, spec.hidden_size, not spec.no_bias
            )
        limit = self.config.common.max_tensor_elements
        hidden = valid.positive(spec.hidden_size, f"{prefix}hidden_size", maximum=limit)
        output_size = spec.output_size
        if output_size < 0:
            raise InvalidArgument(f"must be >= 0, got {output_size}", field=f"{prefix}output_size")
        self._check_weight_budget(kind, input_size, hidden, output_size, f"{prefix}hidden_size")
        scale = scale_factor(valid.optional(spec, "init_scale"), f"{prefix}init_scale")
        if not math.isfinite(spec.forget_bias):
            raise InvalidArgument(f"must be finite, got {spec.forget_bias}", field=f"{prefix}forget_bias")
        scheme = INIT[valid.enum_value(spec.init, pb.InitScheme, f"{prefix}init", pb.INIT_SCHEME_PYTORCH)]
        return rnn.init_weights(
            kind,
            input_size,
            hidden,
            seed=spec.seed,
            scheme=scheme,
            scale=scale,
            bias=not spec.no_bias,
            output_size=output_size,
            forget_bias=spec.forget_bias,
        )

    def _check_weight_budget(self, kind: str, input_size: int, hidden: int, output: int, field: str) -> None:
        limit = self.config.common.max_tensor_elements
        count = gate_rows(kind, hidden) * (input_size + hidden + 2) + output * (hidden + 1)
        if count > limit:
            raise ResourceExhausted(
                f"the weights would have {count} elements; the limit is {limit}", field=field
            )

    def _given_weights(
        self,
        given: Mapping[str, common_pb2.Tensor],
        kind: str,
        field: str,
        input_size: int,
        hidden_size: int,
        bias: bool,
    ) -> dict[str, torch.Tensor]:
        allowed = (*rnn.CELL_WEIGHTS, *rnn.CELL_BIASES, *rnn.OUTPUT_WEIGHTS)
        for name in given:
            if name not in allowed:
                raise InvalidArgument(
                    f"unknown weight {name!r}; expected names from {list(allowed)}", field=field
                )
        required = rnn.CELL_WEIGHTS + (rnn.CELL_BIASES if bias else ())
        missing = [name for name in required if name not in given]
        if missing:
            raise InvalidArgument(
                f"missing {missing}: give all of {list(required)} or none "
                "(set no_bias for a cell without biases)",
                field=f"{field}[{missing[0]}]",
            )
        if not bias and any(name in given for name in rnn.CELL_BIASES):
            raise InvalidArgument("no_bias is set but biases were given", field=f"{field}[bias_ih_l0]")
        weights = {}
        for name in given:
            ndim = 1 if "bias" in name else 2
            weights[name] = self._float_tensor(given[name], f"{field}[{name}]", ndim=ndim).to(torch.float64)
        w_hh = weights["weight_hh_l0"]
        hidden = w_hh.shape[1]
        if hidden == 0:
            raise InvalidArgument("must have H >= 1", field=f"{field}[weight_hh_l0]")
        if hidden_size and hidden_size != hidden:
            raise InvalidArgument(
                f"is {hidden_size} but weight_hh_l0 has H = {hidden}",
                field=field.replace("weights", "hidden_size"),
            )
        input_size = input_size or weights["weight_ih_l0"].shape[1]
        shapes = rnn.expected_shapes(kind, input_size, hidden)
        for name in ("weight_hh_l0", "weight_ih_l0", *rnn.CELL_BIASES):
            shape = shapes[name]
            if name in weights and tuple(weights[name].shape) != shape:
                raise InvalidArgument(
                    f"must have shape {list(shape)} for {kind} with D={input_size}, H={hidden}, "
                    f"got {list(weights[name].shape)}",
                    field=f"{field}[{name}]",
                )
        _check_output_weights(weights, hidden, field)
        return weights


def _check_output_weights(weights: Mapping[str, torch.Tensor], hidden: int, field: str) -> None:
    """The optional output layer: ``output.weight`` (O, H) with O >= 1, ``output.bias`` (O,) only with it."""
    if "output.bias" in weights and "output.weight" not in weights:
        raise InvalidArgument("output.bias given without output.weight", field=f"{field}[output.weight]")
    if "output.weight" in weights:
        out = weights["output.weight"]
        if out.shape[1] != hidden or out.shape[0] == 0:
            raise InvalidArgument(
                f"must have shape [O, {hidden}] with O >= 1, got {list(out.shape)}",
                field=f"{field}[output.weight]",
            )
        if "output.bias" in weights and tuple(weights["output.bias"].shape) != (out.shape[0],):
            raise InvalidArgument(
                f"must have shape [{out.shape[0]}], got {list(weights['output.bias'].shape)}",
                field=f"{field}[output.bias]",
            )


def gate_rows(kind: str, hidden: int) -> int:
    """Rows of a cell's stacked gate matrices: G * H (G = 1 for plain RNNs, 3 for GRU, 4 for LSTM)."""
    return rnn.GATES[kind] * hidden


def scale_factor(value: float | None, field: str, *, zero: bool = True) -> float:
    """A scale factor field: None (unset) means 1; given, it must be finite and >= 0 (> 0 when ``zero`` is
    false, for a scale that 0 would make meaningless). Raises ``InvalidArgument`` naming ``field``."""
    if value is None:
        return 1.0
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise InvalidArgument(
            f"must be a finite number {bound} (leave it unset for 1), got {value}", field=field
        )
    return value


def finite_in(
    dtype: torch.dtype, tensors: Mapping[str, torch.Tensor], field: str | None = None
) -> dict[str, torch.Tensor]:
    """``tensors`` converted to ``dtype`` (on the CPU), refused when a value is not finite there: a huge
    weight or scale that float64 holds overflows float32, and inf or NaN must not reach the linear algebra
    (LAPACK can crash on it). ``field``: the request field to name; default: each tensor's own name."""
    converted = {}
    for name, value in tensors.items():
        value = value.to(dtype)
        if not bool(torch.isfinite(value).all()):
            where = name if field is None or field == name else f"{name} (from {field})"
            raise InvalidArgument(
                f"{where} holds values that are not finite in {str(dtype).removeprefix('torch.')}; "
                "use smaller values or DTYPE_FLOAT64",
                field=field or name,
            )
        converted[name] = value
    return converted


def check_rescalable(cells: list[rnn.Cell], field: str) -> None:
    """Every gate block of each cell's weight_hh_l0 must have a finite, non-zero spectral radius."""
    for cell in cells:
        for block, radius in enumerate(rnn.block_radii(cell.weights["weight_hh_l0"])):
            if radius == 0 or not math.isfinite(radius):
                raise InvalidArgument(
                    f"{cell.kind}: gate block {block} of weight_hh_l0 has spectral radius {radius} "
                    "and cannot be rescaled to a target",
                    field=field,
                )
