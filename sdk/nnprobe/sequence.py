"""Client for SequenceService: recurrent forward passes, gradient flow, truncated-BPTT memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from nnprobe import tensors
from nnprobe._client import DEFAULT, BaseClient, _Default
from nnprobe._proto.common.v1 import common_pb2
from nnprobe._proto.sequence.v1 import sequence_pb2 as pb
from nnprobe._proto.sequence.v1 import sequence_pb2_grpc
from nnprobe.errors import NnprobeError

_DTYPES = {
    None: common_pb2.DTYPE_UNSPECIFIED,
    "float32": common_pb2.DTYPE_FLOAT32,
    "float64": common_pb2.DTYPE_FLOAT64,
}
_CELLS = {
    "rnn_tanh": pb.CELL_TYPE_RNN_TANH,
    "rnn_relu": pb.CELL_TYPE_RNN_RELU,
    "rnn_linear": pb.CELL_TYPE_RNN_LINEAR,
    "lstm": pb.CELL_TYPE_LSTM,
    "gru": pb.CELL_TYPE_GRU,
}
_CELL_NAMES = {code: name for name, code in _CELLS.items()}
_INIT = {
    "pytorch": pb.INIT_SCHEME_PYTORCH,
    "normal": pb.INIT_SCHEME_NORMAL,
    "orthogonal": pb.INIT_SCHEME_ORTHOGONAL,
}
_INPUTS = {
    "normal": pb.INPUT_DISTRIBUTION_NORMAL,
    "uniform": pb.INPUT_DISTRIBUTION_UNIFORM,
    "constant": pb.INPUT_DISTRIBUTION_CONSTANT,
    "zero": pb.INPUT_DISTRIBUTION_ZERO,
}
_REGIMES = {pb.REGIME_VANISHING: "vanishing", pb.REGIME_STABLE: "stable", pb.REGIME_EXPLODING: "exploding"}
_MODES = {pb.TRUNCATION_MODE_TRUNCATED: "truncated", pb.TRUNCATION_MODE_FULL: "full"}

CELLS = tuple(_CELLS)
INIT_SCHEMES = tuple(_INIT)
INPUT_DISTRIBUTIONS = tuple(_INPUTS)

#: ``on_progress(done, total, message)`` for streamed calls.
ProgressCallback = Callable[[int, int, str], None]


def _choice(table: Mapping, value: Any, name: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise ValueError(
            f"{name} must be one of {[k for k in table if k is not None]}, not {value!r}"
        ) from None


def _optional(message: Any, name: str) -> np.ndarray | None:
    return tensors.to_numpy(getattr(message, name)) if message.HasField(name) else None


@dataclass
class RecurrentResult:
    """A forward pass. Arrays are sequence first: (T, B, ...)."""

    #: h_1..h_T, (T, B, H).
    hidden_states: np.ndarray
    #: c_1..c_T for an LSTM, (T, B, H); None for other cells.
    cell_states: np.ndarray | None
    #: y_t = W_out h_t + b_out, (T, B, O), when the cell has an output layer.
    outputs: np.ndarray | None
    #: |h_t - h_(t-1)|_2, (T, B).
    step_changes: np.ndarray
    #: Per sequence, the first 1-based step from which every change is <= settle_tolerance (-1: never).
    settled_at: list[int]
    settle_tolerance: float
    #: The weights used, under PyTorch's names (plus output.weight / output.bias).
    weights: dict[str, np.ndarray]
    raw: Any = field(repr=False, default=None)


@dataclass
class GradientRun:
    """Gradient flow of one cell at one spectral radius. Lists run over k = 0..T-1 (inputs: 1..T)."""

    cell: str
    target_spectral_radius: float
    spectral_radius: float
    #: gamma_W = |W_hh|_2.
    weight_norm: float
    #: gamma_h; None for LSTM and GRU (no bound reported).
    derivative_bound: float | None
    #: T - k.
    distances: np.ndarray
    #: |dh_T/dh_k|_2.
    jacobian_norms: np.ndarray
    #: (gamma_W gamma_h)^(T-k), or None.
    bounds: np.ndarray | None
    #: |d(h_T, c_T)/d(h_k, c_k)|_2 for an LSTM, else None.
    state_jacobian_norms: np.ndarray | None
    #: |dL/dx_k|_2 for k = 1..T, L = |h_T|^2 / 2.
    input_gradient_norms: np.ndarray
    growth_rate: float
    regime: str
    loss: float
    forget_bias: float


@dataclass
class GradientAnalysis:
    """All runs of an ``analyze_gradients`` call."""

    runs: list[GradientRun]
    sequence_length: int
    hidden_size: int
    input_size: int
    regime_tolerance: float
    #: PNG bytes when ``plot=True``, else None.
    plot_png: bytes | None
    seconds: float
    raw: Any = field(repr=False, default=None)


@dataclass
class TruncationPoint:
    """K chunks in one mode (``truncated`` or ``full``)."""

    chunk_count: int
    mode: str
    saved_bytes: int
    peak_device_bytes: int
    seconds: float
    loss: float
    backward_passes: int


@dataclass
class TruncationComparison:
    """Memory and time of truncated vs full BPTT for every K."""

    points: list[TruncationPoint]
    truncated_slope_bytes: float
    full_slope_bytes: float
    device: str
    parameters: int
    plot_png: bytes | None
    raw: Any = field(repr=False, default=None)

    def series(self, mode: str) -> list[TruncationPoint]:
        """The points of one mode, in K order."""
        return [p for p in self.points if p.mode == mode]


def _gradient_run(run: Any) -> GradientRun:
    has_bound = run.has_bound
    return GradientRun(
        cell=_CELL_NAMES.get(run.cell, str(run.cell)),
        target_spectral_radius=run.target_spectral_radius,
        spectral_radius=run.spectral_radius,
        weight_norm=run.weight_norm,
        derivative_bound=run.derivative_bound if has_bound else None,
        distances=np.array(run.distances, dtype=np.int64),
        jacobian_norms=np.array(run.jacobian_norms, dtype=np.float64),
        bounds=np.array(run.bounds, dtype=np.float64) if has_bound else None,
        state_jacobian_norms=np.array(run.state_jacobian_norms) if run.state_jacobian_norms else None,
        input_gradient_norms=np.array(run.input_gradient_norms, dtype=np.float64),
        growth_rate=run.growth_rate,
        regime=_REGIMES.get(run.regime, "unspecified"),
        loss=run.loss,
        forget_bias=run.forget_bias,
    )


class SequenceClient(BaseClient):
    """``SequenceClient("localhost:50052")``; see each method for its options.

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure. Streamed methods take ``on_progress(done, total,
    message)``.
    """

    SERVICE = "sequence"
    FULL_NAME = "nnprobe.sequence.v1.SequenceService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = sequence_pb2_grpc.SequenceServiceStub(self._channel)

    def _final(self, events: Iterator[Any], on_progress: ProgressCallback | None) -> Any:
        for event in events:
            if event.HasField("progress"):
                if on_progress is not None:
                    on_progress(event.progress.done, event.progress.total, event.progress.message)
            elif event.HasField("result"):
                return event.result
        raise NnprobeError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")

    def run_recurrent(
        self,
        inputs: np.ndarray,
        *,
        cell: str = "rnn_tanh",
        hidden_size: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        no_bias: bool = False,
        init: str = "pytorch",
        init_scale: float = 1.0,
        seed: int = 0,
        output_size: int = 0,
        forget_bias: float = 0.0,
        initial_hidden: np.ndarray | None = None,
        initial_cell: np.ndarray | None = None,
        dtype: str | None = None,
        settle_tolerance: float | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> RecurrentResult:
        """Run a one-layer ``cell`` (``rnn_tanh``, ``rnn_relu``, ``rnn_linear``, ``lstm``, ``gru``) over
        ``inputs`` (T, B, D).

        ``weights``: PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
        e.g. ``{k: v.numpy() for k, v in torch.nn.LSTM(D, H).state_dict().items()}``) plus optional
        ``output.weight`` (O, H) / ``output.bias`` (O); otherwise drawn with ``init`` (``pytorch``,
        ``normal``, ``orthogonal``), ``init_scale`` and ``seed`` at ``hidden_size``, with an output layer
        of ``output_size``. ``initial_hidden``/``initial_cell``: (B, H). ``dtype`` defaults to float64.
        """
        spec = pb.RecurrentCell(
            cell=_choice(_CELLS, cell, "cell"),
            input_size=0,
            hidden_size=hidden_size,
            no_bias=no_bias,
            init=_choice(_INIT, init, "init"),
            init_scale=init_scale,
            seed=seed,
            output_size=output_size,
            forget_bias=forget_bias,
        )
        for name, value in (weights or {}).items():
            spec.weights[name].CopyFrom(tensors.to_tensor(value))
        request = pb.RunRecurrentRequest(
            cell=spec,
            inputs=tensors.to_tensor(inputs),
            dtype=_choice(_DTYPES, dtype, "dtype"),
            settle_tolerance=settle_tolerance or 0.0,
        )
        if initial_hidden is not None:
            request.initial_hidden.CopyFrom(tensors.to_tensor(initial_hidden))
        if initial_cell is not None:
            request.initial_cell.CopyFrom(tensors.to_tensor(initial_cell))
        r = self._unary(self._stub.RunRecurrent, request, timeout)
        return RecurrentResult(
            hidden_states=tensors.to_numpy(r.hidden_states),
            cell_states=_optional(r, "cell_states"),
            outputs=_optional(r, "outputs"),
            step_changes=tensors.to_numpy(r.step_changes),
            settled_at=list(r.settled_at),
            settle_tolerance=r.settle_tolerance,
            weights={name: tensors.to_numpy(value) for name, value in sorted(r.weights.items())},
            raw=r,
        )

    def analyze_gradients(
        self,
        *,
        cells: Sequence[str] = ("rnn_tanh",),
        spectral_radii: Sequence[float] = (),
        hidden_size: int = 0,
        sequence_length: int = 0,
        input_size: int = 0,
        input_distribution: str = "normal",
        input_scale: float = 1.0,
        seed: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        init: str = "pytorch",
        init_scale: float = 1.0,
        forget_bias: float = 0.0,
        random_initial_state: bool = False,
        dtype: str | None = None,
        regime_tolerance: float | None = None,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> GradientAnalysis:
        """|dh_T/dh_k|_2 (exact Jacobian products), the bound (gamma_W gamma_h)^(T-k), rho(W_hh), the
        fitted per-step rate, the regime and |dL/dx_k| for every cell of ``cells`` at every target
        spectral radius of ``spectral_radii`` (W_hh's gate blocks rescaled to it).

        Give ``weights`` (one cell; PyTorch names) to analyse them as they are (``spectral_radii`` empty)
        or rescaled. ``input_distribution``: ``normal``, ``uniform``, ``constant``, ``zero``.
        ``plot=True`` returns a PNG of log |dh_T/dh_k| against T - k.
        """
        request = pb.AnalyzeGradientsRequest(
            cells=[_choice(_CELLS, c, "cells") for c in cells],
            hidden_size=hidden_size,
            input_size=input_size,
            sequence_length=sequence_length,
            input_distribution=_choice(_INPUTS, input_distribution, "input_distribution"),
            input_scale=input_scale,
            seed=seed,
            spectral_radii=list(spectral_radii),
            init=_choice(_INIT, init, "init"),
            init_scale=init_scale,
            forget_bias=forget_bias,
            dtype=_choice(_DTYPES, dtype, "dtype"),
            regime_tolerance=regime_tolerance or 0.0,
            plot=plot,
            random_initial_state=random_initial_state,
        )
        for name, value in (weights or {}).items():
            request.weights[name].CopyFrom(tensors.to_tensor(value))
        events = self._stream(self._stub.AnalyzeGradients, request, timeout)
        r = self._final(events, on_progress)
        return GradientAnalysis(
            runs=[_gradient_run(run) for run in r.runs],
            sequence_length=r.sequence_length,
            hidden_size=r.hidden_size,
            input_size=r.input_size,
            regime_tolerance=r.regime_tolerance,
            plot_png=r.plot_png or None,
            seconds=r.seconds,
            raw=r,
        )

    def compare_truncation(
        self,
        *,
        chunk_counts: Sequence[int] = (),
        vocab_size: int = 0,
        embed_size: int = 0,
        hidden_size: int = 0,
        batch_size: int = 0,
        chunk_length: int = 0,
        seed: int = 0,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> TruncationComparison:
        """Memory held for backward and time of K chunks with ``detach()`` between them (truncated) and
        without (full), for every K of ``chunk_counts`` (default [1, 2, 4, 8]).

        The model is embedding -> LSTM -> linear; sizes default to the course's language model (vocab
        10000, embed 128, hidden 1024, batch 20, chunk length 30). ``plot=True`` returns a PNG.
        """
        request = pb.CompareTruncationRequest(
            vocab_size=vocab_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            batch_size=batch_size,
            chunk_length=chunk_length,
            chunk_counts=list(chunk_counts),
            seed=seed,
            plot=plot,
        )
        events = self._stream(self._stub.CompareTruncation, request, timeout)
        r = self._final(events, on_progress)
        return TruncationComparison(
            points=[
                TruncationPoint(
                    chunk_count=p.chunk_count,
                    mode=_MODES.get(p.mode, "unspecified"),
                    saved_bytes=p.saved_bytes,
                    peak_device_bytes=p.peak_device_bytes,
                    seconds=p.seconds,
                    loss=p.loss,
                    backward_passes=p.backward_passes,
                )
                for p in r.points
            ],
            truncated_slope_bytes=r.truncated_slope_bytes,
            full_slope_bytes=r.full_slope_bytes,
            device=r.device,
            parameters=r.parameters,
            plot_png=r.plot_png or None,
            raw=r,
        )
