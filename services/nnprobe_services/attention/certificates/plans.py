"""A certificate request as a validated plan: the input's shape, which permutations, the threshold.

``plan_model_check`` takes plain values (numpy arrays, ints, strings) and raises ``InvalidArgument`` /
``ResourceExhausted`` / ``FailedPrecondition`` naming the request field (``x``, ``noise_ratio_threshold``,
``permutations.strategy``); field names are those of the ``nnprobe.attention.v1`` Check* requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from nnprobe_services.attention import checks
from nnprobe_services.attention.certificates.certify import DEFAULT_EXHAUSTIVE_T, DEFAULT_SAMPLES
from nnprobe_services.attention.certificates.localize import ACTIONS, FLOAT64_TOLERANCE
from nnprobe_services.attention.certificates.noise import DEFAULT_THRESHOLD
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

STRATEGIES = ("auto", "exhaustive", "sampled")


@dataclass(frozen=True)
class TokenModel:
    """A repository token model loaded in one precision: its name, version, the graph (float64 or
    float32, on the device), the input shape its configuration declares ((B, T, D), or (B, T) token ids
    with a ``vocabulary``; None: none) and its vocabulary size (None: it takes float inputs)."""

    name: str
    version: int
    graph: torch.fx.GraphModule
    input_shape: tuple[int, ...] | None
    vocabulary: int | None = None
    #: Per axis of ``input_shape``, whether the configuration fixes its size (``batch_size``,
    #: ``sequence_length``, ``d_model``); a given x may take any size on the other axes. None: all fixed.
    fixed_axes: tuple[bool, ...] | None = None


#: (name, version (0: latest), dtype) -> the model loaded in ``dtype``; raises ``NotFound`` on ``model`` /
#: ``model_version`` for an unknown name or version and ``FailedPrecondition`` on ``model`` for a model of
#: another task.
Resolve = Callable[[str, int, torch.dtype], TokenModel]


@dataclass(frozen=True)
class ModelCheckSpec:
    """A certificate request as plain values.

    ``model``/``model_version``: the repository model (version 0: latest). ``action``: ``equivariance``
    or ``invariance``. ``x``: the input (B, T, D) float32/float64 (token ids (B, T) for a model with a
    vocabulary), or None to draw one of the configured shape with ``seed``. ``strategy``: ``auto``
    (exhaustive for T <= 6), ``exhaustive`` (T <= 8) or ``sampled`` (``num_samples``, 0 for 100, besides
    the identity and adjacent transpositions). ``threshold``: None for 10, else finite and >= 1.
    ``tolerance``: relative float64 tolerance of the localisation, None for 1e-9.
    """

    model: str
    action: str
    model_version: int = 0
    x: np.ndarray | None = None
    seed: int = 0
    strategy: str = "auto"
    num_samples: int = 0
    threshold: float | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class ModelPlan:
    """A validated certificate: the input's (B, T, D) or (B, T), which permutations, threshold and
    tolerance."""

    spec: ModelCheckSpec
    shape: tuple[int, ...]
    exhaustive: bool
    samples: int
    threshold: float
    tolerance: float


def _check_given(x: np.ndarray, vocabulary: int | None) -> None:
    if vocabulary is None:
        if x.dtype.kind != "f":
            raise InvalidArgument(f"must be float32 or float64, not {x.dtype}", field="x")
        if not np.isfinite(x).all():
            raise InvalidArgument("must be finite (no NaN or infinity)", field="x")
        return
    if x.dtype.kind not in "iu":
        raise InvalidArgument(
            f"must be token ids (integers) for a model with a vocabulary, not {x.dtype}", field="x"
        )
    if x.size and (int(x.min()) < 0 or int(x.max()) >= vocabulary):
        raise InvalidArgument(
            f"holds ids in [{int(x.min())}, {int(x.max())}]; the model's vocabulary is [0, {vocabulary})",
            field="x",
        )


def _mismatch(shape: tuple[int, ...], configured: tuple[int, ...], fixed: tuple[bool, ...] | None) -> bool:
    if len(shape) != len(configured):
        return True
    fixed = fixed or (True,) * len(configured)
    return any(is_fixed and n != m for n, m, is_fixed in zip(shape, configured, fixed, strict=False))


def _takes(configured: tuple[int, ...], fixed: tuple[bool, ...] | None) -> str:
    fixed = fixed or (True,) * len(configured)
    names = ("B", "T", "D")
    return (
        "["
        + ", ".join(
            str(n) if f else names[i] for i, (n, f) in enumerate(zip(configured, fixed, strict=False))
        )
        + "]"
    )


def _shape(
    spec: ModelCheckSpec,
    configured: tuple[int, ...] | None,
    limit: int,
    vocabulary: int | None,
    fixed: tuple[bool, ...] | None = None,
) -> tuple[int, ...]:
    layout = "(B, T) of token ids" if vocabulary is not None else "(B, T, D)"
    if spec.x is None:
        if configured is None:
            raise FailedPrecondition(
                f"model {spec.model!r} declares no input shape in its configuration; give x, a {layout} "
                "tensor of the shape it takes",
                field="x",
            )
        shape = tuple(int(n) for n in configured)
    else:
        _check_given(spec.x, vocabulary)
        shape = tuple(int(n) for n in spec.x.shape)
        if configured is not None and _mismatch(shape, tuple(configured), fixed):
            raise InvalidArgument(
                f"has shape {list(shape)}; model {spec.model!r} takes {_takes(tuple(configured), fixed)}"
                " (the sizes its configuration fixes)",
                field="x",
            )
    if len(shape) != (2 if vocabulary is not None else 3) or min(shape) < 1:
        raise InvalidArgument(
            f"a token model's input is {layout} with each >= 1, got {list(shape)}", field="x"
        )
    if math.prod(shape) > limit:
        raise ResourceExhausted(
            f"{list(shape)} has {math.prod(shape)} elements; the limit is {limit}", field="x"
        )
    return shape


def _permutations(spec: ModelCheckSpec, t: int, max_permutations: int, max_elements: int) -> tuple[bool, int]:
    if spec.strategy not in STRATEGIES:
        raise InvalidArgument(f"must be one of {list(STRATEGIES)}", field="permutations.strategy")
    exhaustive = t <= DEFAULT_EXHAUSTIVE_T if spec.strategy == "auto" else spec.strategy == "exhaustive"
    if exhaustive:
        if t > checks.MAX_EXHAUSTIVE_T or math.factorial(t) > max_permutations:
            raise InvalidArgument(
                f"exhaustive checking of a model allows T <= {checks.MAX_EXHAUSTIVE_T} and T! <= "
                f"{max_permutations}; T={t} would need {math.factorial(t):,} permutations. Use "
                "PERMUTATION_STRATEGY_SAMPLED",
                field="permutations.strategy",
            )
        return True, 0
    samples = spec.num_samples or DEFAULT_SAMPLES
    if samples < 0:
        raise InvalidArgument(f"must be positive, got {samples}", field="permutations.num_samples")
    if samples > max_permutations:
        raise ResourceExhausted(
            f"is {samples}; the limit is {max_permutations}", field="permutations.num_samples"
        )
    _check_sampled_size(t, samples, max_permutations, max_elements)
    return False, samples


def _check_sampled_size(t: int, samples: int, max_permutations: int, max_elements: int) -> None:
    """The sampled table is the identity, the t - 1 adjacent transpositions and ``samples`` draws: (t +
    samples) permutations of t tokens, each two forward passes. Raises ``ResourceExhausted`` on ``x`` when
    T alone exceeds the limits, else on ``permutations.num_samples``."""
    count = t + samples
    field = "x" if t * t > max_elements or t > max_permutations else "permutations.num_samples"
    if count > max_permutations or count * t > max_elements:
        longest = min(math.isqrt(max_elements), max_permutations) - 1
        raise ResourceExhausted(
            f"sampled checking of T={t} tokens evaluates the identity, {t - 1} adjacent transpositions and "
            f"{samples} drawn permutations: {count:,} permutations of {t} tokens ({count * t:,} elements); "
            f"the limits are {max_permutations:,} permutations and {max_elements:,} elements "
            f"(max_tensor_elements): give a shorter x (T < {longest:,}) or fewer num_samples",
            field=field,
        )


def _positive_finite(value: float | None, default: float, name: str, minimum: float, why: str) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or value < minimum:
        raise InvalidArgument(f"must be a finite number >= {minimum:g} ({why}), got {value}", field=name)
    return value


def plan_model_check(
    spec: ModelCheckSpec,
    configured_shape: tuple[int, ...] | None,
    *,
    max_tensor_elements: int,
    max_permutations: int,
    vocabulary: int | None = None,
    fixed_axes: tuple[bool, ...] | None = None,
) -> ModelPlan:
    """Validate ``spec`` for a model whose configuration declares ``configured_shape`` (B, T, D) (None:
    none, then ``x`` is required); with ``vocabulary`` the model takes token ids (B, T) in [0, vocabulary).
    A given ``x`` must match ``configured_shape`` on the axes ``fixed_axes`` marks (None: all of them);
    the others take any size >= 1 (a model exported with dynamic dimensions).

    Raises ``InvalidArgument`` for malformed fields (``model_version``, ``x``, ``permutations.*``,
    ``noise_ratio_threshold``), ``FailedPrecondition`` (``x``) when no shape is known and
    ``ResourceExhausted`` when the input or the permutations exceed the limits (sampled: T + num_samples
    permutations, their (T + num_samples) x T table within ``max_tensor_elements``).
    """
    if spec.action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {spec.action!r}")
    if spec.model_version < 0:
        raise InvalidArgument(
            f"must be >= 0 (0 is the latest), got {spec.model_version}", field="model_version"
        )
    shape = _shape(spec, configured_shape, max_tensor_elements, vocabulary, fixed_axes)
    exhaustive, samples = _permutations(spec, shape[1], max_permutations, max_tensor_elements)
    threshold = _positive_finite(
        spec.threshold,
        DEFAULT_THRESHOLD,
        "noise_ratio_threshold",
        1.0,
        "a ratio below 1 fails a symmetric model",
    )
    tolerance = _positive_finite(
        spec.tolerance, FLOAT64_TOLERANCE, "permutations.tolerance", 0.0, "relative, for float64 node outputs"
    )
    return ModelPlan(spec, shape, exhaustive, samples, threshold, tolerance)
