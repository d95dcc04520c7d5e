"""SequenceService's recurrent-network RPCs (RunRecurrent, AnalyzeGradients, CompareTruncation) between
protobuf and plain values. Requests are read into ``workflow``'s arguments: tensors decoded and checked
(shape, dtype, finiteness, ``max_tensor_elements``), cell weights given or drawn, enums mapped to names;
errors name the request field: ``InvalidArgument``, or ``ResourceExhausted`` over a limit. Replies are built
from the cores' results: tensors on the wire, names mapped back to enum codes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import gradients, rnn, truncation
from nnprobe_services.sequence.recurrent.weights import (
    WeightReader,
    check_rescalable,
    finite_in,
    gate_rows,
    scale_factor,
)
from nnprobe_services.sequence.recurrent.workflow import (
    GradientAnalysis,
    GradientSweep,
    RecurrentRun,
    TruncationAnalysis,
)

CELLS: dict[int, str] = {
    pb.CELL_TYPE_RNN_TANH: "rnn_tanh",
    pb.CELL_TYPE_RNN_RELU: "rnn_relu",
    pb.CELL_TYPE_RNN_LINEAR: "rnn_linear",
    pb.CELL_TYPE_LSTM: "lstm",
    pb.CELL_TYPE_GRU: "gru",
}
INPUTS: dict[int, str] = {
    pb.INPUT_DISTRIBUTION_NORMAL: "normal",
    pb.INPUT_DISTRIBUTION_UNIFORM: "uniform",
    pb.INPUT_DISTRIBUTION_CONSTANT: "constant",
    pb.INPUT_DISTRIBUTION_ZERO: "zero",
}
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
CELL_CODES: dict[str, Any] = {name: code for code, name in CELLS.items()}
REGIMES = {"vanishing": pb.REGIME_VANISHING, "stable": pb.REGIME_STABLE, "exploding": pb.REGIME_EXPLODING}
MODES = {"truncated": pb.TRUNCATION_MODE_TRUNCATED, "full": pb.TRUNCATION_MODE_FULL}
#: Longest sequence RunRecurrent and AnalyzeGradients accept.
MAX_SEQUENCE_LENGTH = 10_000
#: Most (cell, spectral radius) runs in one AnalyzeGradients request.
MAX_RUNS = 64
#: Largest hidden size AnalyzeGradients accepts: its eigen- and singular-value decompositions cost H^3
#: and cannot be interrupted half-way.
MAX_ANALYZED_HIDDEN = 1024
#: Largest K in CompareTruncation.
MAX_CHUNK_COUNT = 256


class RequestReader(WeightReader):
    """Reads requests against the server's limits (``config``) onto its ``device``."""

    def recurrent(self, request: pb.RunRecurrentRequest) -> RecurrentRun:
        """RunRecurrent's cell, inputs (T, B, D) and initial state on the device, and settle tolerance."""
        limit = self.config.common.max_tensor_elements
        dtype = TORCH_DTYPES[valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT64)]
        spec = request.cell
        kind = self.cell_kind(spec.cell, "cell.cell")
        if not request.HasField("inputs"):
            raise InvalidArgument("is required: a (T, B, D) tensor", field="inputs")
        x = self._float_tensor(request.inputs, "inputs", ndim=3)
        steps, batch, width = x.shape
        if steps == 0 or batch == 0 or width == 0:
            raise InvalidArgument(f"must have T, B, D >= 1, got shape {list(x.shape)}", field="inputs")
        if spec.input_size and spec.input_size != width:
            raise InvalidArgument(f"is {spec.input_size} but inputs has D = {width}", field="cell.input_size")
        weights = self._cell_weights(spec, kind, width, "cell.")
        finite = finite_in(dtype, weights, "cell.weights" if spec.weights else "cell.init_scale")
        cell = rnn.Cell(kind, {k: v.to(self.device) for k, v in finite.items()})
        x = finite_in(dtype, {"inputs": x}, "inputs")["inputs"]
        hidden = cell.hidden_size
        elements = steps * batch * max(gate_rows(kind, hidden), width, self._output_size(cell))
        if elements > limit:
            raise ResourceExhausted(
                f"T*B*max(G*H, D, O) = {elements} elements exceed the limit {limit}", field="inputs"
            )
        if steps > MAX_SEQUENCE_LENGTH:
            raise ResourceExhausted(f"T = {steps} exceeds the limit {MAX_SEQUENCE_LENGTH}", field="inputs")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        states = 2 if kind == "lstm" else 1
        reply_bytes = steps * batch * ((states * hidden + self._output_size(cell)) * itemsize + 8)
        if reply_bytes > self.config.common.max_message_bytes:
            raise ResourceExhausted(
                f"the states of every step would take {reply_bytes} bytes, more than the message limit "
                f"{self.config.common.max_message_bytes}; send fewer steps or sequences",
                field="inputs",
            )
        h0 = self._state(request, "initial_hidden", batch, hidden)
        c0 = self._state(request, "initial_cell", batch, hidden)
        if c0 is not None and kind != "lstm":
            raise InvalidArgument("is only used by CELL_TYPE_LSTM", field="initial_cell")
        tolerance = valid.tolerance(valid.optional(request, "settle_tolerance"), "settle_tolerance", 1e-6)
        given = finite_in(
            dtype, {k: v for k, v in (("initial_hidden", h0), ("initial_cell", c0)) if v is not None}
        )
        initial = cell.initial_state(
            None if h0 is None else given["initial_hidden"].to(self.device),
            None if c0 is None else given["initial_cell"].to(self.device),
            batch,
        )
        return RecurrentRun(cell, x.to(self.device), initial, tolerance)

    def gradients(self, request: pb.AnalyzeGradientsRequest) -> GradientSweep:
        """AnalyzeGradients' cells, target radii, input sequence (T, D) and initial states on the device."""
        dtype = TORCH_DTYPES[valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT64)]
        kinds, targets = self._gradient_runs(request)
        steps = valid.positive(request.sequence_length, "sequence_length", maximum=MAX_SEQUENCE_LENGTH)
        scale = scale_factor(valid.optional(request, "input_scale"), "input_scale")
        tolerance = valid.tolerance(valid.optional(request, "regime_tolerance"), "regime_tolerance", 0.01)
        distribution = INPUTS[
            valid.enum_value(
                request.input_distribution,
                pb.InputDistribution,
                "input_distribution",
                pb.INPUT_DISTRIBUTION_NORMAL,
            )
        ]
        base, hidden, width = self._gradient_weights(request, kinds)
        if hidden > MAX_ANALYZED_HIDDEN:
            raise ResourceExhausted(
                f"hidden size {hidden} exceeds the limit {MAX_ANALYZED_HIDDEN} of gradient analysis",
                field="weights" if request.weights else "hidden_size",
            )
        for kind in kinds:
            state = 2 * hidden if kind == "lstm" else hidden
            if steps * state * state > self.config.common.max_tensor_elements:
                raise ResourceExhausted(
                    f"T * S^2 = {steps * state * state} (S = state width {state}) exceeds the limit "
                    f"{self.config.common.max_tensor_elements}",
                    field="sequence_length",
                )
        cells = []
        for kind, w in zip(kinds, base, strict=True):
            finite = finite_in(dtype, w, "weights" if request.weights else "init_scale")
            cells.append(rnn.Cell(kind, {k: v.to(self.device) for k, v in finite.items()}))
        drawn = gradients.draw_inputs(steps, width, distribution, scale, request.seed, dtype)
        inputs = finite_in(dtype, {"input_scale": drawn}, "input_scale")["input_scale"].to(self.device)
        initials = [
            (
                gradients.draw_initial_state(c.state_size, request.seed, dtype)
                if request.random_initial_state
                else torch.zeros(c.state_size, dtype=dtype)
            ).to(self.device)
            for c in cells
        ]
        if any(targets):
            check_rescalable(cells, "weights[weight_hh_l0]" if request.weights else "spectral_radii")
        return GradientSweep(
            cells,
            targets,
            inputs,
            initials,
            regime_tolerance=tolerance,
            forget_bias=request.forget_bias if not request.weights else 0.0,
            sequence_length=steps,
            hidden_size=hidden,
            input_size=width,
        )

    def _gradient_runs(self, request: pb.AnalyzeGradientsRequest) -> tuple[list[str], list[float]]:
        """The cell kinds and target spectral radii (0: the weights as given) of the sweep."""
        kinds = [self.cell_kind(code, f"cells[{i}]") for i, code in enumerate(request.cells)] or ["rnn_tanh"]
        if request.weights and len(kinds) > 1:
            raise InvalidArgument("given weights fit one cell type; give a single cell", field="cells")
        for i, radius in enumerate(request.spectral_radii):
            if not math.isfinite(radius) or radius <= 0:
                raise InvalidArgument(
                    f"must be a finite number > 0, got {radius}", field=f"spectral_radii[{i}]"
                )
        if not request.spectral_radii and not request.weights:
            raise InvalidArgument(
                "is empty: give at least one spectral radius (or give weights to analyse as they are)",
                field="spectral_radii",
            )
        targets = list(request.spectral_radii) or [0.0]
        runs = len(kinds) * len(targets)
        if runs > MAX_RUNS:
            raise ResourceExhausted(
                f"asks for {runs} runs (cells x radii); the limit is {MAX_RUNS}", field="spectral_radii"
            )
        return kinds, targets

    def _gradient_weights(
        self, request: pb.AnalyzeGradientsRequest, kinds: list[str]
    ) -> tuple[list[dict[str, torch.Tensor]], int, int]:
        """The weights of each cell (given, or drawn per kind), the hidden size and the input size."""
        if request.weights:
            if request.input_size < 0:
                raise InvalidArgument(f"must be >= 0, got {request.input_size}", field="input_size")
            weights = self._given_weights(
                request.weights,
                kinds[0],
                "weights",
                request.input_size,
                request.hidden_size,
                "bias_ih_l0" in request.weights,
            )
            base = [weights]
            hidden, width = weights["weight_hh_l0"].shape[1], weights["weight_ih_l0"].shape[1]
        else:
            limit = self.config.common.max_tensor_elements
            hidden = valid.positive(request.hidden_size, "hidden_size", maximum=limit)
            width = valid.positive(request.input_size, "input_size", default=hidden, maximum=limit)
            # 0 would draw a zero W_hh, which no spectral radius can be rescaled to.
            init_scale = scale_factor(valid.optional(request, "init_scale"), "init_scale", zero=False)
            spec = pb.RecurrentCell(
                hidden_size=hidden,
                init=request.init,
                init_scale=init_scale,
                seed=request.seed,
                forget_bias=request.forget_bias,
            )
            base = [self._cell_weights(spec, kind, width, "") for kind in kinds]
        return base, hidden, width

    def truncation(self, request: pb.CompareTruncationRequest) -> dict[str, Any]:
        """CompareTruncation's model and run sizes as ``truncation.compare`` keyword arguments."""
        limit = self.config.common.max_tensor_elements
        vocab = valid.positive(request.vocab_size, "vocab_size", default=10_000, maximum=limit)
        embed = valid.positive(request.embed_size, "embed_size", default=128, maximum=limit)
        hidden = valid.positive(request.hidden_size, "hidden_size", default=1024, maximum=limit)
        batch = valid.positive(request.batch_size, "batch_size", default=20, maximum=limit)
        length = valid.positive(request.chunk_length, "chunk_length", default=30, maximum=limit)
        counts = [
            valid.positive(k, f"chunk_counts[{i}]", maximum=MAX_CHUNK_COUNT)
            for i, k in enumerate(request.chunk_counts)
        ] or [1, 2, 4, 8]
        parameters = vocab * embed + 4 * hidden * (embed + hidden + 2) + vocab * (hidden + 1)
        if parameters > limit:
            raise ResourceExhausted(
                f"the model would have {parameters} parameters; the limit is {limit}", field="hidden_size"
            )
        activations = max(counts) * length * batch * max(vocab, 4 * hidden)
        if activations > limit:
            raise ResourceExhausted(
                f"max(K)*L*B*max(vocab, 4H) = {activations} activation elements exceed the limit {limit}",
                field="chunk_counts",
            )
        return {
            "vocab_size": vocab,
            "embed_size": embed,
            "hidden_size": hidden,
            "batch_size": batch,
            "chunk_length": length,
            "chunk_counts": counts,
            "seed": request.seed,
        }

    @staticmethod
    def cell_kind(code: int, field: str) -> str:
        valid.enum_value(code, pb.CellType, field, pb.CELL_TYPE_UNSPECIFIED)
        if code == pb.CELL_TYPE_UNSPECIFIED:
            raise InvalidArgument(f"is required: one of {list(pb.CellType.keys())[1:]}", field=field)
        return CELLS[code]

    def _state(self, request, name: str, batch: int, hidden: int) -> torch.Tensor | None:
        if not request.HasField(name):
            return None
        state = self._float_tensor(getattr(request, name), name, ndim=2)
        if tuple(state.shape) != (batch, hidden):
            raise InvalidArgument(
                f"must have shape [{batch}, {hidden}] (B, H), got {list(state.shape)}", field=name
            )
        return state

    @staticmethod
    def _output_size(cell: rnn.Cell) -> int:
        return cell.weights["output.weight"].shape[0] if cell.has_output else 0


# -- replies ---------------------------------------------------------------------------------------------
def wire(value: torch.Tensor) -> common_pb2.Tensor:
    """A tensor on the wire (its dtype, little-endian, row-major), from any device."""
    return tensors.to_tensor(value.detach().cpu().numpy())


def recurrent_reply(trajectory: rnn.Trajectory, run: RecurrentRun) -> pb.RunRecurrentResponse:
    response = pb.RunRecurrentResponse(
        hidden_states=wire(trajectory.hidden),
        step_changes=wire(trajectory.step_changes),
        settled_at=trajectory.settled_at,
        settle_tolerance=run.settle_tolerance,
    )
    if trajectory.cell is not None:
        response.cell_states.CopyFrom(wire(trajectory.cell))
    if trajectory.outputs is not None:
        response.outputs.CopyFrom(wire(trajectory.outputs))
    for name, value in run.cell.weights.items():
        response.weights[name].CopyFrom(wire(value))
    return response


def progress(event: gradients.Progress | truncation.Progress) -> pb.Progress:
    return pb.Progress(done=event.done, total=event.total, message=event.message)


def gradients_reply(
    event: gradients.Progress | GradientAnalysis, sweep: GradientSweep
) -> pb.AnalyzeGradientsResponse:
    """A progress event, or the result of the whole sweep."""
    if isinstance(event, gradients.Progress):
        return pb.AnalyzeGradientsResponse(progress=progress(event))
    result = pb.GradientAnalysis(
        runs=[gradient_run(run) for run in event.runs],
        sequence_length=sweep.sequence_length,
        hidden_size=sweep.hidden_size,
        input_size=sweep.input_size,
        regime_tolerance=sweep.regime_tolerance,
        plot_png=event.plot_png,
        seconds=event.seconds,
    )
    return pb.AnalyzeGradientsResponse(result=result)


def gradient_run(run: gradients.GradientRun) -> pb.GradientRun:
    return pb.GradientRun(
        cell=CELL_CODES[run.cell],
        target_spectral_radius=run.target_spectral_radius,
        spectral_radius=run.spectral_radius,
        weight_norm=run.weight_norm,
        derivative_bound=run.derivative_bound or 0.0,
        has_bound=run.derivative_bound is not None,
        distances=run.distances,
        jacobian_norms=run.jacobian_norms,
        bounds=run.bounds,
        state_jacobian_norms=run.state_jacobian_norms,
        input_gradient_norms=run.input_gradient_norms,
        growth_rate=run.growth_rate,
        regime=REGIMES[run.regime],
        loss=run.loss,
        forget_bias=run.forget_bias,
    )


def truncation_reply(
    event: truncation.Progress | TruncationAnalysis, device: torch.device
) -> pb.CompareTruncationResponse:
    """A progress event, or the comparison measured on ``device``."""
    if isinstance(event, truncation.Progress):
        return pb.CompareTruncationResponse(progress=progress(event))
    comparison = event.comparison
    result = pb.TruncationComparison(
        points=[
            pb.TruncationPoint(
                chunk_count=p.chunk_count,
                mode=MODES[p.mode],
                saved_bytes=p.saved_bytes,
                peak_device_bytes=p.peak_device_bytes,
                seconds=p.seconds,
                loss=p.loss,
                backward_passes=p.backward_passes,
            )
            for p in comparison.points
        ],
        truncated_slope_bytes=comparison.truncated_slope_bytes,
        full_slope_bytes=comparison.full_slope_bytes,
        device=str(device),
        plot_png=event.plot_png,
        parameters=comparison.parameters,
    )
    return pb.CompareTruncationResponse(result=result)
