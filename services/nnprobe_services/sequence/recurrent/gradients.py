"""Gradient flow through time: exact Jacobian products dh_T/dh_k and the bound (gamma_W gamma_h)^(T-k).

With h_j = f(h_(j-1), x_j) for j = 1..T, the sensitivity of the last state to an earlier one is the
product of per-step Jacobians

    dh_T/dh_k = (dh_T/dh_(T-1)) (dh_(T-1)/dh_(T-2)) ... (dh_(k+1)/dh_k).

Each factor is computed with autograd (``torch.func.jacrev`` of one step); the product is accumulated
from k = T-1 down to 0, so T Jacobians and T matrix products give all T norms. The running product is
rescaled by powers of two (exact in floating point) and its scale carried as an exponent, so norms far
beyond the float range still have exact logarithms for the growth-rate fit.

For the plain RNN cells dh_(j+1)/dh_j = diag(phi'(a_j)) W_hh, so |dh_T/dh_k|_2 <= (gamma_W gamma_h)^(T-k)
with gamma_W = |W_hh|_2 and gamma_h = sup |phi'| (1 for tanh, ReLU and the identity). Gated cells (LSTM,
GRU) have no bound of that form: their Jacobians contain gate values and products of gate derivatives
with the state, so no bound is reported for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from nnprobe_services.errors import Cancelled
from nnprobe_services.sequence.recurrent import rnn

#: sup |phi'| of the nonlinearity, for cells whose Jacobian is diag(phi') W_hh.
DERIVATIVE_BOUNDS = {"rnn_tanh": 1.0, "rnn_relu": 1.0, "rnn_linear": 1.0}
INPUT_DISTRIBUTIONS = ("normal", "uniform", "constant", "zero")
REGIMES = ("vanishing", "stable", "exploding")


def _never() -> bool:
    return False


@dataclass
class GradientRun:
    """The gradient flow of one cell. Lists are indexed by k = 0..T-1 (inputs: k = 1..T)."""

    cell: str
    target_spectral_radius: float
    spectral_radius: float
    weight_norm: float
    derivative_bound: float | None
    distances: list[int]
    jacobian_norms: list[float]
    log_jacobian_norms: list[float]
    bounds: list[float]
    state_jacobian_norms: list[float]
    input_gradient_norms: list[float]
    growth_rate: float
    regime: str
    loss: float
    forget_bias: float = 0.0


@dataclass
class Progress:
    """``done`` of ``total`` units of work, with a note of what runs."""

    done: int
    total: int
    message: str


@dataclass
class Sweep:
    """All runs of one request."""

    runs: list[GradientRun] = field(default_factory=list)


def draw_inputs(
    steps: int, size: int, distribution: str, scale: float, seed: int, dtype: torch.dtype
) -> torch.Tensor:
    """Inputs x_1..x_T as a (T, D) tensor, drawn with their own generator seeded from ``seed``."""
    generator = torch.Generator().manual_seed((seed + 0x9E3779B97F4A7C15) % 2**64)
    if distribution == "normal":
        x = torch.randn(steps, size, generator=generator, dtype=torch.float64) * scale
    elif distribution == "uniform":
        x = (torch.rand(steps, size, generator=generator, dtype=torch.float64) * 2 - 1) * scale
    elif distribution == "constant":
        x = (torch.randn(1, size, generator=generator, dtype=torch.float64) * scale).expand(steps, size)
    else:
        x = torch.zeros(steps, size, dtype=torch.float64)
    return x.to(dtype).contiguous()


def draw_initial_state(size: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A random initial state vector (S,) from N(0, 1)."""
    generator = torch.Generator().manual_seed((seed + 0x2545F4914F6CDD1D) % 2**64)
    return torch.randn(size, generator=generator, dtype=torch.float64).to(dtype)


def analyze(
    cell: rnn.Cell,
    inputs: torch.Tensor,
    initial: torch.Tensor,
    *,
    target_spectral_radius: float = 0.0,
    regime_tolerance: float = 0.01,
    forget_bias: float = 0.0,
    should_stop: Callable[[], bool] = _never,
) -> Generator[int, None, GradientRun]:
    """Analyse ``cell`` on ``inputs`` (T, D) from ``initial`` (S,). Yields the number of Jacobian steps
    done so far; returns the ``GradientRun``."""
    steps = inputs.shape[0]
    hidden = cell.hidden_size
    states = _forward(cell, inputs, initial, should_stop)
    log_norms: list[float] = [0.0] * steps
    log_state_norms: list[float] = [0.0] * steps
    product = torch.eye(cell.state_size, dtype=inputs.dtype, device=inputs.device)
    exponent = 0  # the true product is product * 2**exponent
    jacobian = torch.func.jacrev(cell.step)
    for k in range(steps - 1, -1, -1):
        if should_stop():
            raise Cancelled(f"stopped with {k + 1} Jacobians of {steps} left")
        with torch.no_grad():
            product = product @ jacobian(states[k], inputs[k])
            exponent += _normalise(product)
            log_norms[k] = _log_norm(product[:hidden, :hidden], exponent)
            if cell.kind == "lstm":
                log_state_norms[k] = _log_norm(product, exponent)
        yield steps - k
    loss, input_norms = _input_gradients(cell, inputs, initial)
    distances = [steps - k for k in range(steps)]
    weight_norm = float(torch.linalg.matrix_norm(cell.weights["weight_hh_l0"], ord=2))
    gamma_h = DERIVATIVE_BOUNDS.get(cell.kind)
    rate = growth_rate(distances, log_norms)
    return GradientRun(
        cell=cell.kind,
        target_spectral_radius=target_spectral_radius,
        spectral_radius=rnn.spectral_radius(cell.weights["weight_hh_l0"]),
        weight_norm=weight_norm,
        derivative_bound=gamma_h,
        distances=distances,
        jacobian_norms=[_exp(v) for v in log_norms],
        log_jacobian_norms=log_norms,
        bounds=[] if gamma_h is None else [_power(weight_norm * gamma_h, d) for d in distances],
        state_jacobian_norms=[_exp(v) for v in log_state_norms] if cell.kind == "lstm" else [],
        input_gradient_norms=input_norms,
        growth_rate=rate,
        regime=regime(rate, log_norms, regime_tolerance),
        loss=loss,
        forget_bias=forget_bias if cell.kind == "lstm" else 0.0,
    )


def _forward(
    cell: rnn.Cell, inputs: torch.Tensor, initial: torch.Tensor, should_stop: Callable[[], bool]
) -> list[torch.Tensor]:
    """States h_0..h_(T-1) (the inputs of each step)."""
    states = [initial]
    with torch.no_grad():
        for t in range(inputs.shape[0] - 1):
            if should_stop():
                raise Cancelled(f"stopped at forward step {t} of {inputs.shape[0]}")
            states.append(cell.step(states[-1], inputs[t]))
    return states


def _input_gradients(
    cell: rnn.Cell, inputs: torch.Tensor, initial: torch.Tensor
) -> tuple[float, list[float]]:
    """L = |h_T|^2 / 2 and |dL/dx_k|_2 for k = 1..T, by one backward pass."""
    x = inputs.detach().clone().requires_grad_(True)
    state = initial
    with torch.enable_grad():
        for t in range(x.shape[0]):
            state = cell.step(state, x[t])
        loss = 0.5 * (state[: cell.hidden_size] ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return float(loss.detach()), torch.linalg.vector_norm(grad, dim=1).tolist()


def _normalise(product: torch.Tensor) -> int:
    """Scale ``product`` in place by a power of two so its largest |entry| is in [0.5, 1); return the
    exponent taken out. Exact in floating point."""
    peak = float(product.abs().max())
    if peak == 0.0 or not math.isfinite(peak):
        return 0
    exponent = math.frexp(peak)[1]
    # Scale by 2**-exponent in factors of at most 2**100 each: a single factor overflows (a Python float
    # for |exponent| > 1023, a float32 tensor's scalar for > 127) when the product is tiny or huge.
    remaining = -exponent
    while remaining:
        factor = max(-100, min(100, remaining))
        product.mul_(2.0**factor)
        remaining -= factor
    return exponent


def _log_norm(matrix: torch.Tensor, exponent: int) -> float:
    """log(|matrix * 2**exponent|_2), -inf for a zero matrix, inf when an entry overflowed (the SVD must
    not see inf or NaN)."""
    if not bool(torch.isfinite(matrix).all()):
        return math.inf
    norm = float(torch.linalg.matrix_norm(matrix, ord=2))
    return math.log(norm) + exponent * math.log(2.0) if norm > 0 else -math.inf


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _power(base: float, exponent: int) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def growth_rate(distances: list[int], log_norms: list[float]) -> float:
    """exp(slope) of the least-squares line through (T-k, log |dh_T/dh_k|), finite points only.

    With a single finite point the line is taken through the origin (the empty product is I, norm 1).
    With none (every product exactly zero) the rate is 0.
    """
    points = [(d, v) for d, v in zip(distances, log_norms, strict=True) if math.isfinite(v)]
    if not points:
        return 0.0
    if len(points) == 1:
        d, v = points[0]
        return _exp(v / d)
    mean_d = sum(d for d, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    covariance = sum((d - mean_d) * (v - mean_v) for d, v in points)
    variance = sum((d - mean_d) ** 2 for d, _ in points)
    return _exp(covariance / variance)


def regime(rate: float, log_norms: list[float], tolerance: float) -> str:
    """``vanishing`` below 1 - tolerance (or when a product is exactly zero), ``exploding`` above
    1 + tolerance, ``stable`` in between."""
    if any(v == -math.inf for v in log_norms) or rate < 1.0 - tolerance:
        return "vanishing"
    if rate > 1.0 + tolerance:
        return "exploding"
    return "stable"


def sweep(
    cells: list[rnn.Cell],
    targets: list[float],
    inputs: torch.Tensor,
    initials: list[torch.Tensor],
    *,
    regime_tolerance: float = 0.01,
    forget_bias: float = 0.0,
    should_stop: Callable[[], bool] = _never,
) -> Generator[Progress | Sweep, None, None]:
    """Analyse every cell of ``cells`` (with its ``initials`` state) at every target spectral radius
    (0: as given). Yields ``Progress`` events, then one ``Sweep``."""
    steps = inputs.shape[0]
    total = len(cells) * len(targets) * steps
    every = max(1, steps // 20)
    result = Sweep()
    done = 0
    for cell, initial in zip(cells, initials, strict=True):
        radii = rnn.block_radii(cell.weights["weight_hh_l0"]) if any(targets) else None
        for target in targets:
            if should_stop():  # the decompositions below are not interruptible: check before them
                raise Cancelled(f"stopped after {done} of {total} Jacobian steps")
            weights = dict(cell.weights)
            if target:
                weights["weight_hh_l0"] = rnn.rescale_spectral_radius(weights["weight_hh_l0"], target, radii)
            label = f"{cell.kind} rho={target:g}" if target else cell.kind
            run = analyze(
                rnn.Cell(cell.kind, weights),
                inputs,
                initial,
                target_spectral_radius=target,
                regime_tolerance=regime_tolerance,
                forget_bias=forget_bias,
                should_stop=should_stop,
            )
            while True:
                try:
                    step = next(run)
                except StopIteration as finished:
                    result.runs.append(finished.value)
                    break
                if step % every == 0 or step == steps:
                    yield Progress(done + step, total, label)
            done += steps
    yield result
