"""Gradient flow through time (``analyze_gradients``): Jacobian norms, bounds and regimes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe._client import FLOAT_DTYPES, USE_CLIENT_DEFAULT, BaseClient, UseClientDefault, choice
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.sequence.cells import CELL_CODES, CELL_NAMES, INIT_CODES, INPUT_CODES
from nnprobe.sequence.model_gradients import ModelGradientFlow, model_flow, model_request
from nnprobe.sequence.progress import final_result

_REGIMES = {pb.REGIME_VANISHING: "vanishing", pb.REGIME_STABLE: "stable", pb.REGIME_EXPLODING: "exploding"}


@rich_result()
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


def _norm_rows(analysis: GradientAnalysis) -> list[dict[str, Any]]:
    """One row per run and distance T - k: |dh_T/dh_k|_2, its bound (None for gated cells) and |dL/dx_k|_2."""
    rows = []
    for run in analysis.runs:
        for i, distance in enumerate(run.distances.tolist()):
            rows.append(
                {
                    "cell": run.cell,
                    "spectral_radius": run.target_spectral_radius,
                    "distance": distance,
                    "jacobian_norm": float(run.jacobian_norms[i]),
                    "bound": None if run.bounds is None else float(run.bounds[i]),
                    "input_gradient_norm": float(run.input_gradient_norms[i]),
                }
            )
    return rows


def _run_rows(analysis: GradientAnalysis) -> list[dict[str, Any]]:
    """One row per run: cell, radii, norms, growth rate and regime."""
    keys = ("cell", "target_spectral_radius", "spectral_radius", "weight_norm", "derivative_bound")
    return [
        {**{k: getattr(r, k) for k in keys}, "growth_rate": r.growth_rate, "regime": r.regime}
        for r in analysis.runs
    ]


@rich_result(pictures=("plot_png",), tables={"norms": _norm_rows, "runs": _run_rows})
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
    #: With ``model=``: that model's gradient flow (``runs`` is then empty); else None.
    model_flow: ModelGradientFlow | None = None
    raw: Any = field(repr=False, default=None)


def _gradient_run(run: Any) -> GradientRun:
    has_bound = run.has_bound
    return GradientRun(
        cell=CELL_NAMES.get(run.cell, str(run.cell)),
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


def _gradient_analysis(r: Any) -> GradientAnalysis:
    return GradientAnalysis(
        runs=[_gradient_run(run) for run in r.runs],
        sequence_length=r.sequence_length,
        hidden_size=r.hidden_size,
        input_size=r.input_size,
        regime_tolerance=r.regime_tolerance,
        plot_png=r.plot_png or None,
        seconds=r.seconds,
        model_flow=model_flow(r.model_flow) if r.HasField("model_flow") else None,
        raw=r,
    )


#: What ``analyze_gradients`` counts in its ``Progress``.
PROGRESS_UNIT = "jacobian steps"


def analyze_gradients_request(
    *,
    cells: Sequence[str] | None,
    spectral_radii: Sequence[float],
    hidden_size: int,
    sequence_length: int,
    input_size: int,
    input_distribution: str,
    input_scale: float | None,
    seed: int,
    weights: Mapping[str, np.ndarray] | None,
    init: str,
    init_scale: float | None,
    forget_bias: float,
    random_initial_state: bool,
    dtype: str | None,
    regime_tolerance: float | None,
    plot: bool,
    model: str = "",
    model_version: int = 0,
    inputs: np.ndarray | None = None,
    token_ids: Sequence[int] | None = None,
) -> pb.AnalyzeGradientsRequest:
    """The request of ``analyze_gradients`` (sync and asyncio clients): built cells, or with ``model`` a
    repository model (``model_gradients.model_request``). Raises ValueError naming an integer argument
    outside its wire type (``seed`` uint64; ``sequence_length``, ``model_version``, ``token_ids`` int64)."""
    _check_wire_ranges(seed, sequence_length, model_version, token_ids)
    if model:
        request = model_request(
            locals(), model=model, model_version=model_version, inputs=inputs, token_ids=token_ids
        )
        request.dtype = choice(FLOAT_DTYPES, dtype, "dtype")
        return request
    if model_version or inputs is not None or token_ids is not None:
        raise ValueError("model_version, inputs, token_ids: only with model=")
    request = pb.AnalyzeGradientsRequest(
        cells=[choice(CELL_CODES, c, "cells") for c in cells or ()],
        hidden_size=hidden_size,
        input_size=input_size,
        sequence_length=sequence_length,
        input_distribution=choice(INPUT_CODES, input_distribution, "input_distribution"),
        input_scale=input_scale,
        seed=seed,
        spectral_radii=list(spectral_radii),
        init=choice(INIT_CODES, init, "init"),
        init_scale=init_scale,
        forget_bias=forget_bias,
        dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
        regime_tolerance=regime_tolerance,
        plot=plot,
        random_initial_state=random_initial_state,
    )
    for name, value in (weights or {}).items():
        request.weights[name].CopyFrom(tensors.to_tensor(value))
    return request


_INT64 = (-(2**63), 2**63 - 1)


def _check_wire_ranges(
    seed: int, sequence_length: int, model_version: int, token_ids: Sequence[int] | None
) -> None:
    """ValueError naming the first integer argument its protobuf field cannot hold."""
    ranges = {"seed": (0, 2**64 - 1), "sequence_length": _INT64, "model_version": _INT64}
    values = {"seed": seed, "sequence_length": sequence_length, "model_version": model_version}
    for name, value in values.items():
        low, high = ranges[name]
        if not low <= int(value) <= high:
            raise ValueError(f"{name}: must lie in {low}..{high} (its wire type), got {value}")
    outside = [int(t) for t in token_ids or () if not _INT64[0] <= int(t) <= _INT64[1]]
    if outside:
        raise ValueError(f"token_ids: ids must be int64 values, got {outside[0]}")


class GradientMethods(BaseClient):
    """The gradient-flow method of ``SequenceClient``."""

    _stub: Any

    def analyze_gradients(
        self,
        *,
        cells: Sequence[str] | None = None,
        spectral_radii: Sequence[float] = (),
        hidden_size: int = 0,
        sequence_length: int = 0,
        input_size: int = 0,
        input_distribution: str = "normal",
        input_scale: float | None = None,
        seed: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        init: str = "pytorch",
        init_scale: float | None = None,
        forget_bias: float = 0.0,
        random_initial_state: bool = False,
        dtype: str | None = None,
        regime_tolerance: float | None = None,
        plot: bool = False,
        model: str = "",
        model_version: int = 0,
        inputs: np.ndarray | None = None,
        token_ids: Sequence[int] | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> GradientAnalysis:
        """|dh_T/dh_k|_2 (exact Jacobian products), the bound (gamma_W gamma_h)^(T-k), rho(W_hh), the
        fitted per-step rate, the regime and |dL/dx_k| for every cell of ``cells`` at every target
        spectral radius of ``spectral_radii`` (W_hh's gate blocks rescaled to it).

        Give ``weights`` (one cell; PyTorch names) to analyse them as they are (``spectral_radii`` empty)
        or rescaled. ``input_distribution``: ``normal``, ``uniform``, ``constant``, ``zero``.
        ``input_scale`` (None for 1; 0 feeds zeros), ``init_scale`` (None for 1; must be > 0) and
        ``regime_tolerance`` (None for 0.01; 0 calls only a rate of exactly 1 stable) pass through as given.
        ``plot=True`` returns a PNG of log |dh_T/dh_k| against T - k. ``on_progress`` is called with a
        ``nnprobe.Progress`` (unit ``jacobian steps``, ``message`` the cell and radius) as the runs go.
        ``timeout``: seconds, ``None`` for no deadline, ``USE_CLIENT_DEFAULT`` for the client's.
        ``cells`` None means ``["rnn_tanh"]``.

        Your own model: ``model`` names a repository model (``upload_model``, task ``recurrent_cell`` or
        ``sequence_model``; ``model_version`` 0 for its latest) and the result's ``model_flow`` holds its
        gradient flow (a cell: |dh_T/dh_k|_2 and |dc_T/dc_k|_2 from products of its per-step Jacobians; a
        sequence model: |dy_T/dx_k|_2 and |dL/dx_k|_2 with L = sum(y_T)). It is fed ``inputs`` (T, I) or
        ``token_ids`` (T ids, for a model that starts with an embedding: gradients at the embedding's
        output), or x ~ N(0, 1) drawn with ``seed`` (T = ``sequence_length``). Only ``sequence_length``,
        ``seed``, ``random_initial_state`` (cells), ``dtype`` and ``regime_tolerance`` go with it.

        Raises:
            nnprobe.InvalidArgument: a bad option (``field_violations`` names it); ValueError for an
                unknown cell, distribution, init or dtype name, or a built-cell option given with
                ``model``, before anything is sent.
            nnprobe.NotFound: no such model or version; nnprobe.FailedPrecondition: a model of another
                task, or one that cannot run as a cell / sequence model (the message says why).
        """
        request = analyze_gradients_request(**request_arguments(locals()))
        events = self._stream(self._stub.AnalyzeGradients, request, timeout)
        with reporting(progress, on_progress, "gradients", PROGRESS_UNIT) as report:
            return _gradient_analysis(final_result(events, report, PROGRESS_UNIT))
