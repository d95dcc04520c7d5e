"""The symmetry certificate of a token model: the declared action checked over permutations of the tokens,
the deviation judged against the model's own floating-point noise, the breaking node located on failure.

The model f is given twice, loaded in float64 and in float32 (the served precision). For every permutation
P of the T tokens (axis 1 of X (B, T, D)), both loads evaluate PX, one permutation per forward pass (an
exported graph has a fixed batch size, so permutations cannot be stacked into the batch):

- equivariance: err_p = max |f(PX) - P f(X)| over the output elements (the output is (B, T, ...));
- invariance:   err_p = max |f(PX) - f(X)| (the output, such as (B, D), must not change);

err_p is infinite when f(PX) is not finite (f(X) is, or no noise could be measured): the check fails there.

The float32 maximum over permutations is the deviation, judged as ``ratio = deviation / noise`` (``noise``)
against ``threshold`` (10 unless given); the float64 maximum is reported beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from nnprobe_services.attention import checks
from nnprobe_services.attention.certificates import noise as noise_scale
from nnprobe_services.attention.certificates.localize import (
    ACTIONS,
    FLOAT64_TOLERANCE,
    BreakingNode,
    first_breaking_node,
)
from nnprobe_services.errors import Cancelled, InvalidArgument, ShouldStop, never

#: Exhaustive checking by default up to this T (6! = 720 permutations, two forward passes each).
DEFAULT_EXHAUSTIVE_T = 6
#: Sampled permutations by default, besides the identity and the adjacent transpositions.
DEFAULT_SAMPLES = 100
#: Permutations between two polls of the stop signal.
POLL_EVERY = 8


@dataclass
class Certificate:
    """The outcome of certifying a token model.

    ``holds``: ratio <= threshold. ``action``: ``equivariance`` or ``invariance``. ``deviation`` and
    ``mean_deviation``: max and mean over permutations of the float32 per-permutation max error (absolute
    units of f); ``deviation_float64``: the float64 max. ``noise``, ``noise_floor``: see ``noise``.
    ``worst_permutation``: p of the largest float32 error, (PX)[:, i] = X[:, p[i]]. ``input_shape``:
    [B, T, D]. ``output``: f32(X), float32, the model's output shape. ``breaking``: the first breaking node
    when the check fails and a node breaks in float64, else None. ``seconds``: wall time.
    """

    holds: bool
    action: str
    permutations_checked: int
    exhaustive: bool
    deviation: float
    mean_deviation: float
    deviation_float64: float
    noise: float
    noise_floor: float
    ratio: float
    threshold: float
    worst_permutation: list[int]
    input_shape: list[int]
    output: np.ndarray
    breaking: BreakingNode | None
    seconds: float
    #: The repository model's name and version, when it came from the repository.
    model: str = ""
    model_version: int = 0


def permutations(t: int, *, exhaustive: bool, samples: int, seed: int) -> torch.Tensor:
    """All t! permutations (lexicographic), or the identity, the t - 1 adjacent transpositions and
    ``samples`` random ones drawn with ``seed``; (N, t) long."""
    if exhaustive:
        return checks.exhaustive_permutations(t)
    return checks.sampled_permutations(t, samples, seed)


def _check_output(action: str, x: torch.Tensor, reference: torch.Tensor) -> None:
    if action == "equivariance" and (reference.ndim < 2 or reference.shape[:2] != x.shape[:2]):
        raise InvalidArgument(
            f"equivariance needs an output (B, T, ...) = {list(x.shape[:2])} + ..., the model returns "
            f"{list(reference.shape)}; check a pooled output with CheckPoolingInvariance",
            field="model",
        )


def _error(action: str, out: torch.Tensor, reference: torch.Tensor, perm: torch.Tensor) -> float:
    target = reference.index_select(1, perm) if action == "equivariance" else reference
    if out.shape != target.shape:
        raise InvalidArgument(
            f"the output's shape changes under a permutation of the tokens: {list(out.shape)} for "
            f"{list(target.shape)}",
            field="model",
        )
    if not out.numel():
        return 0.0
    if not bool(torch.isfinite(out).all()):
        return math.inf  # f(X) is finite (measure_noise), f(PX) is not: as far from it as can be
    return float((out.to(torch.float64) - target.to(torch.float64)).abs().max())


def _scan(
    graphs: tuple[torch.nn.Module, torch.nn.Module],
    x: torch.Tensor,
    perms: torch.Tensor,
    scale: noise_scale.NoiseScale,
    action: str,
    should_stop: ShouldStop,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-permutation float32 and float64 max errors."""
    graph64, graph32 = graphs
    x32 = noise_scale.served_input(x)
    errors32, errors64 = np.zeros(len(perms)), np.zeros(len(perms))
    for i, perm in enumerate(perms):
        if i % POLL_EVERY == 0 and should_stop():
            raise Cancelled(f"stopped after {i} of {len(perms)} permutations", done=i)
        out32 = noise_scale.evaluate(graph32, x32.index_select(1, perm))
        out64 = noise_scale.evaluate(graph64, x.index_select(1, perm))
        errors32[i] = _error(action, out32, scale.served, perm)
        errors64[i] = _error(action, out64, scale.reference, perm)
    return errors32, errors64


def certify(
    graph64: torch.fx.GraphModule,
    graph32: torch.nn.Module,
    x: torch.Tensor,
    perms: torch.Tensor,
    *,
    action: str,
    exhaustive: bool,
    threshold: float = noise_scale.DEFAULT_THRESHOLD,
    tolerance: float = FLOAT64_TOLERANCE,
    should_stop: ShouldStop = never,
) -> Certificate:
    """Certify that the model commutes with every permutation in ``perms`` (N, T) (long).

    ``graph64``/``graph32``: the model loaded in float64 and in float32; ``x``: the input (B, T, D), float64
    holding float32-representable numbers (``noise.draw_input``), or token ids (B, T) int64 for a model
    that starts with an embedding; ``action``: ``equivariance`` or
    ``invariance``; ``threshold``: the largest ratio that holds; ``tolerance``: the relative float64
    tolerance of ``localize``. Raises ``InvalidArgument`` (field ``model``) when the model's output cannot
    carry the action, ``FailedPrecondition`` for a non-finite output, ``Cancelled`` when ``should_stop``
    answers true (polled every ``POLL_EVERY`` permutations).
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    started = time.perf_counter()
    perms = perms.to(device=x.device, dtype=torch.long)
    scale = noise_scale.measure_noise(graph64, graph32, x)
    _check_output(action, x, scale.reference)
    errors32, errors64 = _scan((graph64, graph32), x, perms, scale, action, should_stop)
    worst = int(errors32.argmax()) if len(perms) else 0
    deviation = float(errors32.max()) if len(perms) else 0.0
    ratio = noise_scale.ratio(deviation, scale)
    holds = ratio <= threshold
    breaking = None
    if not holds:
        worst_perm = perms[worst].tolist()
        breaking = first_breaking_node(graph64, x, worst_perm, action=action, tolerance=tolerance)
    return Certificate(
        holds=holds,
        action=action,
        permutations_checked=len(perms),
        exhaustive=exhaustive,
        deviation=deviation,
        mean_deviation=float(errors32.mean()) if len(perms) else 0.0,
        deviation_float64=float(errors64.max()) if len(perms) else 0.0,
        noise=scale.noise,
        noise_floor=scale.floor,
        ratio=ratio,
        threshold=threshold,
        worst_permutation=perms[worst].tolist() if len(perms) else [],
        input_shape=list(x.shape),
        output=scale.served.cpu().numpy(),
        breaking=breaking,
        seconds=time.perf_counter() - started,
    )
