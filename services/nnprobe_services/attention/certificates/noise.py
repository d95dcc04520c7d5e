"""The scale a symmetry deviation is judged on: the model's own floating-point noise.

The same input X (float32-representable numbers, so both precisions see exactly the same input) is evaluated
by the model loaded in float64 and by the model loaded in float32, the served precision. Their difference,

    noise = max over output elements of |f32(X) - f64(X)|        (the max norm, absolute units of f)

is what float32 rounding alone does to this model on this input. It is floored at one float32 unit of the
output's scale, ``noise_floor = eps32 * max |f64(X)|`` (eps32 = 2^-23), so that a model computed in float32
even when loaded in float64 (casts inside its graph), whose two evaluations agree exactly, still gets a
finite ratio.

Why ``deviation / noise <= 10`` certifies the symmetry. Permuting the tokens of a symmetric model changes
nothing but the order in which floating-point reductions over the token axis are summed (attention's
weighted sums, softmax normalisers, pooling); every per-token operation sees the same numbers. The rounding
error of such a reordered float32 evaluation is bounded by the same forward-error bound as the error of the
float32 evaluation against float64 (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, ch. 3:
|error| <= gamma_n * sum |terms| for a sum of n terms, whatever the order), so both are of the same order:
ratios between about 0.5 and 3 are typical (a TransformerEncoderLayer over all 720 permutations of T = 6
gives 1.25). The maximum over up to T! permutations of an error that behaves like a sum of rounding errors
grows only like sqrt(2 log N) (about 3.6 for N = 720), hence the margin of 10. A structural asymmetry, a
learned positional embedding of scale 0.02 or first-token pooling, gives deviations of the size of the
model's outputs and ratios of 1e5 and more: the two cases are separated by orders of magnitude.

The float64 deviation is reported beside it: for an exactly symmetric model it is rounding of float64,
about 1e-15 relative; an asymmetry that float32 cannot resolve (ratio <= 10 yet float64 deviation far
above 1e-15 relative) is visible there. The judgement is made on float32 because that is the precision the
model is served in: it certifies that no permutation changes the served output by more than the served
arithmetic itself does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from nnprobe_services.attention.checks import generator
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ServiceError

#: The check holds when deviation / noise is at most this (see the module docstring for why 10).
DEFAULT_THRESHOLD = 10.0
#: float32 machine epsilon, 2^-23.
EPS32 = float(torch.finfo(torch.float32).eps)
#: Two float64 evaluations of the same input may differ by at most this, relative to max(1, max |f|):
#: a deterministic model repeats itself to rounding (exactly on a CPU), a random one (dropout in training
#: mode, sampling) does not, and its noise would hide any asymmetry.
REPEAT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class NoiseScale:
    """The two evaluations of one input and the noise between them.

    ``reference``: f64(X), float64, the model's output shape. ``served``: f32(X), float32, same shape.
    ``noise``: max |f32(X) - f64(X)| (max norm). ``floor``: EPS32 * max |f64(X)|.
    """

    reference: torch.Tensor
    served: torch.Tensor
    noise: float
    floor: float

    @property
    def scale(self) -> float:
        """max(noise, floor), the denominator of the ratio."""
        return max(self.noise, self.floor)


def draw_input(shape: tuple[int, ...], seed: int, vocabulary: int | None = None) -> torch.Tensor:
    """X ~ N(0, 1) of ``shape`` (B, T, D), float64 holding float32-representable numbers (drawn in float64
    and rounded through float32), so that ``X.float()`` is exact; with ``vocabulary``, token ids (B, T)
    int64 drawn uniformly from [0, vocabulary)."""
    if vocabulary is not None:
        return torch.randint(vocabulary, shape, generator=generator(seed, 5), dtype=torch.int64)
    x = torch.randn(*shape, generator=generator(seed, 5), dtype=torch.float64)
    return x.to(torch.float32).to(torch.float64)


def served_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the float32 load takes it: float inputs in float32, token ids unchanged."""
    return x.to(torch.float32) if x.is_floating_point() else x


def single_output(value: object) -> torch.Tensor:
    """The one tensor a token model returns (a tensor, or a tuple/list holding exactly one).

    Raises ``InvalidArgument`` (field ``model``) for any other output.
    """
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(
            f"a token model must return one tensor, got {type(value).__name__}", field="model"
        )
    return value


Result = TypeVar("Result")
#: How a ``torch.export`` module refuses an input whose shape its export fixed (the guard of each version).
SHAPE_GUARDS = ("Guard failed:", "Expected input at ")


def guarded(call: Callable[[], Result]) -> Result:
    """``call()``; an input shape the export's guards refuse becomes ``InvalidArgument`` on ``x``, any
    other failure of the model itself (an operator that fails) ``FailedPrecondition`` on ``model``; domain
    errors and cancellations pass through."""
    try:
        return call()
    except ServiceError:
        raise
    except Exception as error:  # the user's graph raised
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        if any(marker in message for marker in SHAPE_GUARDS):
            raise InvalidArgument(
                f"the model does not take an input of this shape ({message}): it was exported with "
                "fixed or bounded sizes; give x of the sizes it was exported for, or export it with "
                "dynamic dimensions (torch.export.Dim)",
                field="x",
            ) from None
        raise FailedPrecondition(
            f"the model failed on its input: {type(error).__name__}: {message}", field="model"
        ) from None


@torch.inference_mode()
def evaluate(graph: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """graph(x) as one tensor (``single_output``), in the graph's own precision. Raises
    ``FailedPrecondition`` (field ``model``) when the model fails on ``x``."""
    return single_output(guarded(lambda: graph(x)))


def measure_noise(graph64: torch.nn.Module, graph32: torch.nn.Module, x: torch.Tensor) -> NoiseScale:
    """Evaluate ``x`` (float64, float32-representable) on both loads of the model.

    Raises ``FailedPrecondition`` (field ``model``) when an output is not finite (no scale can be measured)
    or the float64 load does not repeat itself on ``x`` (``check_deterministic``), and ``InvalidArgument``
    (field ``model``) when the two loads give different shapes.
    """
    reference = evaluate(graph64, x).to(torch.float64)
    check_deterministic(reference, evaluate(graph64, x).to(torch.float64))
    served = evaluate(graph32, served_input(x))
    if reference.shape != served.shape:
        raise InvalidArgument(
            f"the float64 and float32 loads give shapes {list(reference.shape)} and {list(served.shape)}",
            field="model",
        )
    if not (torch.isfinite(reference).all() and torch.isfinite(served).all()):
        raise FailedPrecondition("the model's output on the input is not finite", field="model")
    noise = float((served.to(torch.float64) - reference).abs().max()) if reference.numel() else 0.0
    floor = EPS32 * (float(reference.abs().max()) if reference.numel() else 0.0)
    return NoiseScale(reference, served, noise, floor)


def check_deterministic(first: torch.Tensor, second: torch.Tensor) -> None:
    """Raise ``FailedPrecondition`` (field ``model``) when two float64 evaluations of the same input differ
    by more than ``REPEAT_TOLERANCE * max(1, max |first|)``, or in shape: a model with random outputs
    (dropout left in training mode) would measure its randomness as noise and pass any asymmetry."""
    if first.shape != second.shape:
        raise FailedPrecondition(
            f"the model is not deterministic: two evaluations of the same input return shapes "
            f"{list(first.shape)} and {list(second.shape)}",
            field="model",
        )
    if not first.numel():
        return
    both_finite = bool(torch.isfinite(first).all() and torch.isfinite(second).all())
    if not both_finite:
        return  # reported as a non-finite output by measure_noise
    difference = float((first - second).abs().max())
    scale = max(1.0, float(first.abs().max()))
    if difference > REPEAT_TOLERANCE * scale:
        raise FailedPrecondition(
            f"the model is not deterministic: two evaluations of the same input differ by {difference:.3g} "
            f"(max |f| {scale:.3g}), so no permutation's effect can be told from its randomness; export it "
            "in eval mode (model.eval(): dropout off) and without random operators",
            field="model",
        )


def ratio(deviation: float, scale: NoiseScale) -> float:
    """deviation / max(noise, floor); 0 when both are 0, infinity for a deviation over a zero scale."""
    if deviation == 0:
        return 0.0
    return deviation / scale.scale if scale.scale > 0 else math.inf
