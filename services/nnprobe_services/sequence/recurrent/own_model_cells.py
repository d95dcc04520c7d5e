"""Gradient flow through time of the user's own recurrent cell: exact |dh_T/dh_k|_2 (and |dc_T/dc_k|_2 for a
cell with two states) for every k, from products of the cell's own per-step Jacobians.

The cell maps (x_t, s_(t-1)) to s_t, where the state s = (h) or s = (h, c) is flattened to one vector of
width S = N_h (+ N_c). With s_0 the initial state and x_1..x_T the inputs, the joint Jacobian of one step
J_j = ds_(j+1)/ds_j (S x S) is computed by reverse-mode autograd (``torch.func.jacrev``; the looped
``torch.autograd.functional.jacobian`` when the graph has no batching rule), and

    ds_T/ds_k = J_(T-1) J_(T-2) ... J_k      for k = 0..T-1,

accumulated from k = T-1 down, rescaled by powers of two after each product (exact, so logarithms stay
exact far beyond the float range; ``gradients``' helpers). Reported for each k:

- |dh_T/dh_k|_2: the spectral norm of the h-block of the product (c_k held fixed: the sensitivity of h_T to
  a perturbation of h_k alone);
- |dc_T/dc_k|_2: the c-block, for two-state cells (LSTM-like: the path of the cell state);
- |J_k|_2 = |ds_(k+1)/ds_k|_2: the per-step joint Jacobian norm.

The growth rate is ``gradients.growth_rate`` (exp of the least-squares slope of log |dh_T/dh_k| against
T - k) and the regime ``gradients.regime``, as the built-in analysis reports them; the cell state gets its
own rate and regime. Source: Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent neural
networks", ICML 2013 (eq. 3-5: the product of per-step Jacobians).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from nnprobe_services.errors import Cancelled, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import gradients
from nnprobe_services.sequence.recurrent.own_model_calls import (
    CellCaller,
    check_finite,
    check_repeatable,
    guarded,
    never,
)

#: Largest joint state width S a cell may have: each step costs an S x S Jacobian and an S^3 product.
MAX_STATE_WIDTH = 2048
#: What a failure of the cell's forward pass was doing.
RUNNING = "running the cell on x of shape (1, I) and states of shape (1, N)"
#: Longest sequence a cell is analysed over.
MAX_STEPS = 10_000


@dataclass
class OwnCell:
    """A user's cell (a ``torch.nn.Module``, float64 or float32, on the device the inputs are on), its
    input width I (0: it takes one token id per step) and the widths N_i of its one or two state tensors
    (h, or h and c)."""

    module: torch.nn.Module
    input_size: int
    state_sizes: tuple[int, ...]


@dataclass
class CellGradients:
    """The gradient flow of one cell over one sequence; lists are indexed by k = 0..T-1 (distance T - k)."""

    distances: list[int]
    #: |dh_T/dh_k|_2 (c_k held fixed for two-state cells).
    hidden_norms: list[float]
    log_hidden_norms: list[float]
    #: |dc_T/dc_k|_2; empty for one-state cells.
    cell_norms: list[float]
    #: |J_k|_2 = |ds_(k+1)/ds_k|_2, the joint per-step Jacobian norm.
    step_norms: list[float]
    growth_rate: float
    regime: str
    cell_growth_rate: float = 0.0
    cell_regime: str = ""


def check_cell(cell: OwnCell, steps: int, steps_field: str) -> None:
    """Refuse a cell or sequence length the analysis does not take (``InvalidArgument`` /
    ``ResourceExhausted`` naming ``model`` or ``steps_field``)."""
    if len(cell.state_sizes) not in (1, 2) or min(cell.state_sizes) < 1 or cell.input_size < 0:
        raise InvalidArgument(
            f"a recurrent cell needs an input size >= 0 and one or two states of size >= 1, got input "
            f"{cell.input_size} and states {list(cell.state_sizes)}",
            field="model",
        )
    width = sum(cell.state_sizes)
    if width > MAX_STATE_WIDTH:
        raise ResourceExhausted(
            f"the joint state width {width} exceeds the limit {MAX_STATE_WIDTH} of gradient analysis",
            field="model",
        )
    if not 1 <= steps <= MAX_STEPS:
        raise ResourceExhausted(f"T = {steps} is outside 1..{MAX_STEPS}", field=steps_field)


def analyze_cell(
    cell: OwnCell,
    inputs: torch.Tensor,
    initial: Sequence[torch.Tensor],
    *,
    regime_tolerance: float = 0.01,
    should_stop: Callable[[], bool] = never,
) -> Generator[gradients.Progress, None, CellGradients]:
    """Analyse ``cell`` over ``inputs`` (T, I), or token ids (T,), from ``initial`` (one (N_i,) tensor per
    state, same dtype and device). Yields ``Progress`` after each Jacobian step (done 1..T of T); returns the
    ``CellGradients``.

    Raises ``FailedPrecondition`` (field ``model``) when the cell cannot run on a batch of one or returns
    something other than its states, and ``Cancelled`` when ``should_stop`` turns true.
    """
    check_cell(cell, inputs.shape[0], "inputs")
    caller = CellCaller(cell.module, cell.state_sizes)
    sizes = cell.state_sizes
    states = _forward(caller, inputs, tuple(initial), should_stop)
    step = _joint_step(caller, sizes)
    jacobian = _jacobian_of(step, states[0], inputs[0])
    steps = inputs.shape[0]
    log_h, log_c, log_step = [0.0] * steps, [0.0] * steps, [0.0] * steps
    product = torch.eye(sum(sizes), dtype=initial[0].dtype, device=initial[0].device)
    exponent = 0  # the true product is product * 2**exponent
    h = sizes[0]
    for k in range(steps - 1, -1, -1):
        if should_stop():
            raise Cancelled(f"stopped with {k + 1} Jacobians of {steps} left", done=steps - k - 1)
        factor = guarded("the cell's Jacobian", partial(jacobian, states[k], inputs[k]))
        check_finite([factor], f"the cell's Jacobian at step {k + 1}")
        with torch.no_grad():
            log_step[k] = gradients._log_norm(factor, 0)
            product = product @ factor
            exponent += gradients._normalise(product)
            log_h[k] = gradients._log_norm(product[:h, :h], exponent)
            if len(sizes) == 2:
                log_c[k] = gradients._log_norm(product[h:, h:], exponent)
        yield gradients.Progress(steps - k, steps, "jacobian steps")
    return _result(steps, log_h, log_c if len(sizes) == 2 else [], log_step, regime_tolerance)


def _result(
    steps: int, log_h: list[float], log_c: list[float], log_step: list[float], tolerance: float
) -> CellGradients:
    distances = [steps - k for k in range(steps)]
    rate = gradients.growth_rate(distances, log_h)
    result = CellGradients(
        distances=distances,
        hidden_norms=[gradients._exp(v) for v in log_h],
        log_hidden_norms=log_h,
        cell_norms=[gradients._exp(v) for v in log_c],
        step_norms=[gradients._exp(v) for v in log_step],
        growth_rate=rate,
        regime=gradients.regime(rate, log_h, tolerance),
    )
    if log_c:
        result.cell_growth_rate = gradients.growth_rate(distances, log_c)
        result.cell_regime = gradients.regime(result.cell_growth_rate, log_c, tolerance)
    return result


def _forward(
    caller: CellCaller,
    inputs: torch.Tensor,
    initial: tuple[torch.Tensor, ...],
    should_stop: Callable[[], bool],
) -> list[torch.Tensor]:
    """Joint states s_0..s_(T-1) (the state each step starts from), flat (S,)."""
    if len(initial) != len(caller.sizes) or any(
        s.shape != (n,) for s, n in zip(initial, caller.sizes, strict=False)
    ):
        raise InvalidArgument(
            f"the initial state must be {len(caller.sizes)} vector(s) of sizes {list(caller.sizes)}",
            field="model",
        )
    state = initial
    joint = [torch.cat(state)]
    with torch.no_grad():  # the first step runs twice: it decides the calling convention, then repeats
        first = guarded(RUNNING, partial(caller.step, inputs[0], *state))
        check_finite(first, "the cell's state after step 1")
        check_repeatable(first, guarded(RUNNING, partial(caller.step, inputs[0], *state)), "the cell")
        for t in range(inputs.shape[0] - 1):
            if should_stop():
                raise Cancelled(f"stopped at forward step {t} of {inputs.shape[0]}", done=0)
            state = first if t == 0 else guarded(RUNNING, partial(caller.step, inputs[t], *state))
            check_finite(state, f"the cell's state after step {t + 1}")
            joint.append(torch.cat(state))
    return joint


def _joint_step(
    caller: CellCaller, sizes: tuple[int, ...]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """s (S,), x (I,) -> s' (S,): one step of the cell on the joint flat state."""

    def step(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(caller.step(x, *torch.split(s, list(sizes))))

    return step


def _jacobian_of(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], s: torch.Tensor, x: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ds'/ds (S x S) of ``step``: ``torch.func.jacrev`` when the graph can be vmapped (tried on the first
    state), else ``torch.autograd.functional.jacobian`` one row at a time."""
    vectorized = torch.func.jacrev(step)
    try:
        vectorized(s, x)
    except Exception:  # an operation without a batching rule: fall back to the looped form

        def looped(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return torch.autograd.functional.jacobian(lambda v: step(v, x), s)  # type: ignore[no-any-return]

        return looped
    return vectorized
