"""Forward passes of one recurrent cell (``run_recurrent``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe._client import FLOAT_DTYPES, USE_CLIENT_DEFAULT, BaseClient, UseClientDefault, choice
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.sequence.cells import CELL_CODES, INIT_CODES


def _optional(message: Any, name: str) -> np.ndarray | None:
    return tensors.to_numpy(getattr(message, name)) if message.HasField(name) else None


@rich_result()
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


def _recurrent_result(r: Any) -> RecurrentResult:
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


def run_recurrent_request(
    *,
    inputs: np.ndarray,
    cell: str,
    hidden_size: int,
    weights: Mapping[str, np.ndarray] | None,
    no_bias: bool,
    init: str,
    init_scale: float | None,
    seed: int,
    output_size: int,
    forget_bias: float,
    initial_hidden: np.ndarray | None,
    initial_cell: np.ndarray | None,
    dtype: str | None,
    settle_tolerance: float | None,
) -> pb.RunRecurrentRequest:
    """The request of ``run_recurrent`` (sync and asyncio clients)."""
    spec = pb.RecurrentCell(
        cell=choice(CELL_CODES, cell, "cell"),
        input_size=0,
        hidden_size=hidden_size,
        no_bias=no_bias,
        init=choice(INIT_CODES, init, "init"),
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
        dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
        settle_tolerance=settle_tolerance,
    )
    if initial_hidden is not None:
        request.initial_hidden.CopyFrom(tensors.to_tensor(initial_hidden))
    if initial_cell is not None:
        request.initial_cell.CopyFrom(tensors.to_tensor(initial_cell))
    return request


class RecurrentMethods(BaseClient):
    """The forward-pass method of ``SequenceClient``."""

    _stub: Any

    def run_recurrent(
        self,
        inputs: np.ndarray,
        *,
        cell: str = "rnn_tanh",
        hidden_size: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        no_bias: bool = False,
        init: str = "pytorch",
        init_scale: float | None = None,
        seed: int = 0,
        output_size: int = 0,
        forget_bias: float = 0.0,
        initial_hidden: np.ndarray | None = None,
        initial_cell: np.ndarray | None = None,
        dtype: str | None = None,
        settle_tolerance: float | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> RecurrentResult:
        """Run a one-layer ``cell`` (``rnn_tanh``, ``rnn_relu``, ``rnn_linear``, ``lstm``, ``gru``) over
        ``inputs`` (T, B, D).

        ``weights``: PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
        e.g. ``{k: v.numpy() for k, v in torch.nn.LSTM(D, H).state_dict().items()}``) plus optional
        ``output.weight`` (O, H) / ``output.bias`` (O); otherwise drawn with ``init`` (``pytorch``,
        ``normal``, ``orthogonal``), ``init_scale`` and ``seed`` at ``hidden_size``, with an output layer
        of ``output_size``. ``initial_hidden``/``initial_cell``: (B, H). ``dtype`` defaults to float64.
        ``init_scale``: None for 1; 0 draws all-zero weights. ``settle_tolerance``: None for 1e-6; 0 counts
        a sequence as settled only once its state stops changing exactly.
        """
        request = run_recurrent_request(**request_arguments(locals()))
        return _recurrent_result(self._unary(self._stub.RunRecurrent, request, timeout))
