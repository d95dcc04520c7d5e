"""The gradient flow of a repository model (``analyze_gradients(model=...)``): the request fields it sets and
its result, ``ModelGradientFlow``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result

_REGIMES = {pb.REGIME_VANISHING: "vanishing", pb.REGIME_STABLE: "stable", pb.REGIME_EXPLODING: "exploding"}
_MEASURED = {
    pb.MEASURED_GRADIENT_STATE: "state",
    pb.MEASURED_GRADIENT_INPUTS: "inputs",
    pb.MEASURED_GRADIENT_EMBEDDING: "embedding",
}
#: ``analyze_gradients`` arguments that describe built cells, with their defaults: a call naming a
#: ``model`` leaves them so.
BUILT_CELL_DEFAULTS: dict[str, Any] = {
    "cells": None,
    "spectral_radii": (),
    "hidden_size": 0,
    "input_size": 0,
    "input_distribution": "normal",
    "input_scale": None,
    "weights": None,
    "init": "pytorch",
    "init_scale": None,
    "forget_bias": 0.0,
    "plot": False,
}


def _norm_rows(flow: ModelGradientFlow) -> list[dict[str, Any]]:
    """One row per distance T - k: the Jacobian norm and, where measured, the cell-state, per-step and loss
    gradient norms."""
    rows = []
    for i, distance in enumerate(flow.distances.tolist()):
        row: dict[str, Any] = {"distance": distance, "jacobian_norm": float(flow.jacobian_norms[i])}
        for name in ("cell_state_norms", "step_norms", "loss_gradient_norms"):
            values = getattr(flow, name)
            if values is not None:
                row[name[:-1]] = float(values[i])
        rows.append(row)
    return rows


@rich_result(tables={"norms": _norm_rows})
@dataclass
class ModelGradientFlow:
    """The gradient flow of a repository model (Pascanu, Mikolov and Bengio 2013). For a ``recurrent_cell``
    (``measured == "state"``) entries run over k = 0..T-1 (distance T..1): ``jacobian_norms`` is
    |dh_T/dh_k|_2 from the product of the cell's per-step Jacobians, ``cell_state_norms`` |dc_T/dc_k|_2
    (two-state cells), ``step_norms`` |ds_(k+1)/ds_k|_2. For a ``sequence_model`` (``measured`` ``inputs``
    or, for token ids, ``embedding``) entries run over k = 1..T (distance T-1..0): ``jacobian_norms`` is
    |dy_T/dx_k|_2 and ``loss_gradient_norms`` |dL/dx_k|_2 with L = sum(y_T) (``loss``)."""

    model: str
    model_version: int
    task: str
    measured: str
    #: T - k.
    distances: np.ndarray
    jacobian_norms: np.ndarray
    #: |dc_T/dc_k|_2, or None (one-state cells, sequence models).
    cell_state_norms: np.ndarray | None
    #: |ds_(k+1)/ds_k|_2 over the joint state, or None (sequence models).
    step_norms: np.ndarray | None
    #: |dL/dx_k|_2 with L = sum(y_T), or None (cells).
    loss_gradient_norms: np.ndarray | None
    #: L = sum(y_T), or None (cells).
    loss: float | None
    #: exp(slope) of log(jacobian_norms) against the distance: the per-step growth or decay factor.
    growth_rate: float
    regime: str
    #: The same fit over cell_state_norms, or None.
    cell_growth_rate: float | None
    cell_regime: str | None
    raw: Any = field(repr=False, default=None)


def model_flow(m: Any) -> ModelGradientFlow:
    """The ``ModelGradientFlow`` of a ``pb.ModelGradientFlow`` message."""

    def optional(values: Sequence[float]) -> np.ndarray | None:
        return np.array(values, dtype=np.float64) if len(values) else None

    two_states = len(m.cell_state_norms) > 0
    return ModelGradientFlow(
        model=m.model,
        model_version=m.model_version,
        task=m.task,
        measured=_MEASURED.get(m.measured, "unspecified"),
        distances=np.array(m.distances, dtype=np.int64),
        jacobian_norms=np.array(m.jacobian_norms, dtype=np.float64),
        cell_state_norms=optional(m.cell_state_norms),
        step_norms=optional(m.step_norms),
        loss_gradient_norms=optional(m.loss_gradient_norms),
        loss=None if m.measured == pb.MEASURED_GRADIENT_STATE else m.loss,
        growth_rate=m.growth_rate,
        regime=_REGIMES.get(m.regime, "unspecified"),
        cell_growth_rate=m.cell_growth_rate if two_states else None,
        cell_regime=_REGIMES.get(m.cell_regime, "unspecified") if two_states else None,
        raw=m,
    )


def model_request(
    arguments: Mapping[str, Any],
    *,
    model: str,
    model_version: int,
    inputs: np.ndarray | None,
    token_ids: Sequence[int] | None,
) -> pb.AnalyzeGradientsRequest:
    """The request of ``analyze_gradients(model=...)``; ``arguments`` are the call's other arguments.

    Raises ValueError naming an argument that describes built cells and was changed from its default, and
    when both ``inputs`` and ``token_ids`` are given."""
    changed = [name for name, default in BUILT_CELL_DEFAULTS.items() if arguments.get(name) != default]
    if changed:
        raise ValueError(f"{', '.join(changed)}: describe built cells; leave them unset with model=")
    if inputs is not None and token_ids is not None:
        raise ValueError("inputs, token_ids: give one of them, not both")
    request = pb.AnalyzeGradientsRequest(
        model=model,
        model_version=model_version,
        sequence_length=arguments["sequence_length"],
        seed=arguments["seed"],
        random_initial_state=arguments["random_initial_state"],
        regime_tolerance=arguments["regime_tolerance"],
        token_ids=list(token_ids or ()),
    )
    if inputs is not None:
        request.inputs.CopyFrom(tensors.to_tensor(np.asarray(inputs)))
    return request
