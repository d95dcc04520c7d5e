"""The AttentionService requests as validated plain plans.

``plan_*`` takes plain inputs (numpy arrays, ints, strings), checks every field against the others and
against the server's limits, and raises ``InvalidArgument``/``ResourceExhausted`` naming the request field
(``attention.model_dim``, ``widths[1]``). It only does arithmetic; ``workflow`` runs the plans it returns.

Field names are those of the ``nnprobe.attention.v1`` messages so that errors point at the request.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from nnprobe_services.attention import checks
from nnprobe_services.errors import InvalidArgument, ResourceExhausted

#: Sampled permutations when the request gives no ``num_samples``.
DEFAULT_SAMPLES = 1000
#: The precisions a computation may run in.
DTYPES = ("float32", "float64")
STRATEGIES = ("auto", "exhaustive", "sampled")
#: Most timing repeats one request may ask for.
MAX_TIMING_REPEATS = 1000


@dataclass(frozen=True)
class Limits:
    """The server's limits: elements of any one tensor (inputs, weights, scores, parameters) and sampled
    permutations per request."""

    max_tensor_elements: int
    max_permutations: int


@dataclass(frozen=True)
class AttentionSpec:
    """A self-attention layer and its input, as the ``SelfAttention`` message gives them.

    ``x``: (T, D) float32/float64, or None to draw X ~ N(0, 1) of ``sequence_length`` x ``model_dim``
    from ``seed``. ``weights``: (Wq, Wk, Wv) each (D, D), or three None to draw them ~ N(0, 1/D).
    ``heads``: 0 means 1. ``scale``: None means sqrt(D / heads); given, a finite number > 0. ``dtype``:
    ``float32`` or ``float64``, the precision of the whole computation.
    """

    x: np.ndarray | None = None
    sequence_length: int = 0
    model_dim: int = 0
    weights: tuple[np.ndarray | None, ...] = (None, None, None)
    heads: int = 0
    scale: float | None = None
    softmax: str = "row"
    positional: str = "none"
    causal: bool = False
    seed: int = 0
    dtype: str = "float64"


@dataclass(frozen=True)
class PermutationOptions:
    """Which permutations to check: ``strategy`` ``auto`` (exhaustive for T <= 8, else sampled),
    ``exhaustive`` or ``sampled`` (identity, adjacent transpositions and ``num_samples`` random ones, 0 for
    1000); ``tolerance`` relative to max |reference| (None: 1e-4 in float32, 1e-9 in float64; 0: exact
    equality)."""

    strategy: str = "auto"
    num_samples: int = 0
    tolerance: float | None = None


@dataclass(frozen=True)
class PermutationPlan:
    """A validated permutation check: T, D, heads and which permutations; the tolerance resolved."""

    spec: AttentionSpec
    t: int
    d: int
    heads: int
    exhaustive: bool
    samples: int
    tolerance: float


_WEIGHT_NAMES = ("w_query", "w_key", "w_value")


def _positive(value: int, name: str, *, default: int | None = None, maximum: int | None = None) -> int:
    if value == 0 and default is not None:
        value = default
    if value <= 0:
        raise InvalidArgument(f"must be positive, got {value}", field=name)
    if maximum is not None and value > maximum:
        raise ResourceExhausted(f"is {value}; the limit is {maximum}", field=name)
    return value


def _tolerance(value: float | None, name: str, default: float) -> float:
    """A tolerance field: None (unset) means ``default``; 0 is exact equality and is kept."""
    if value is None:
        return default
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            f"must be a finite number >= 0 (0 asks for exact equality; leave it unset for {default:g}), "
            f"got {value}",
            field=name,
        )
    return value


def _scale(value: float | None) -> float | None:
    """The score divisor: None (unset) stays None, for sqrt(D / heads); given, it must be finite and > 0."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise InvalidArgument(
            f"must be a finite number > 0 (scores are divided by it; leave it unset for sqrt(D/heads)), "
            f"got {value}",
            field="attention.scale",
        )
    return value


def _float_array(array: np.ndarray, name: str) -> None:
    if array.dtype.kind != "f":
        raise InvalidArgument(f"must be float32 or float64, not {array.dtype}", field=name)


def _dtype(value: str, name: str) -> str:
    if value not in DTYPES:
        raise InvalidArgument(f"must be float32 or float64, not {value!r}", field=name)
    return value


def _input_shape(spec: AttentionSpec, limit: int) -> tuple[int, int]:
    """(T, D) of the given or drawn input."""
    if spec.x is not None:
        _float_array(spec.x, "attention.x")
        if spec.x.ndim != 2:
            raise InvalidArgument(
                f"must have 2 dimensions, got shape {list(spec.x.shape)}", field="attention.x"
            )
        t, d = spec.x.shape
        for name, given, actual in (
            ("sequence_length", spec.sequence_length, t),
            ("model_dim", spec.model_dim, d),
        ):
            if given and given != actual:
                raise InvalidArgument(f"is {given} but x has shape {[t, d]}", field=f"attention.{name}")
        if t == 0 or d == 0:
            raise InvalidArgument(f"must have T >= 1 and D >= 1, got shape {[t, d]}", field="attention.x")
        return t, d
    t = _positive(spec.sequence_length, "attention.sequence_length", maximum=limit)
    d = _positive(spec.model_dim, "attention.model_dim", maximum=limit)
    if t * d > limit or d * d > limit:
        raise ResourceExhausted(
            f"T={t}, D={d} needs {max(t * d, d * d)} elements; the limit is {limit}",
            field="attention.model_dim",
        )
    return t, d


def _check_weights(spec: AttentionSpec, d: int, limit: int) -> None:
    given = [w is not None for w in spec.weights]
    if not any(given):
        if d * d > limit:
            raise ResourceExhausted(
                f"D={d} needs {d * d} weight elements; the limit is {limit}", field="attention.model_dim"
            )
        return
    if not all(given):
        missing = next(n for n, g in zip(_WEIGHT_NAMES, given, strict=True) if not g)
        raise InvalidArgument(
            "w_query, w_key and w_value must be given together", field=f"attention.{missing}"
        )
    for name, w in zip(_WEIGHT_NAMES, spec.weights, strict=True):
        assert w is not None
        _float_array(w, f"attention.{name}")
        if w.shape != (d, d):
            raise InvalidArgument(
                f"must have shape [{d}, {d}] to match x, got {list(w.shape)}", field=f"attention.{name}"
            )


def _permutation_count(options: PermutationOptions, t: int, limits: Limits) -> tuple[bool, int]:
    """(exhaustive, samples) for ``options`` at length ``t``."""
    if options.strategy not in STRATEGIES:
        raise InvalidArgument(
            f"must be one of {list(STRATEGIES)}, not {options.strategy!r}", field="permutations.strategy"
        )
    exhaustive = (
        t <= checks.MAX_EXHAUSTIVE_T if options.strategy == "auto" else options.strategy == "exhaustive"
    )
    if exhaustive:
        if t > checks.MAX_EXHAUSTIVE_T:
            raise InvalidArgument(
                f"exhaustive checking allows T <= {checks.MAX_EXHAUSTIVE_T} "
                f"({math.factorial(checks.MAX_EXHAUSTIVE_T):,} permutations); T={t} would need "
                f"{math.factorial(t):,}. Use PERMUTATION_STRATEGY_SAMPLED",
                field="permutations.strategy",
            )
        return True, 0
    samples = _positive(
        options.num_samples,
        "permutations.num_samples",
        default=DEFAULT_SAMPLES,
        maximum=limits.max_permutations,
    )
    return False, samples


def plan_permutation_check(
    spec: AttentionSpec, options: PermutationOptions, limits: Limits
) -> PermutationPlan:
    """Validate a permutation check (equivariance or pooling invariance) against ``limits``.

    Raises ``InvalidArgument`` for inconsistent or malformed fields and ``ResourceExhausted`` when the input,
    weights, T x T scores of every head, or the sampled permutations exceed the limits.
    """
    dtype = _dtype(spec.dtype, "attention.dtype")
    limit = limits.max_tensor_elements
    t, d = _input_shape(spec, limit)
    _check_weights(spec, d, limit)
    heads = spec.heads or 1
    if heads < 0 or d % heads:
        raise InvalidArgument(
            f"must be a positive divisor of model_dim={d}, got {spec.heads}", field="attention.heads"
        )
    _scale(spec.scale)
    if spec.softmax not in checks.SOFTMAX_MODES:
        raise InvalidArgument(f"must be one of {list(checks.SOFTMAX_MODES)}", field="attention.softmax")
    if spec.positional not in checks.POSITIONAL_ENCODINGS:
        raise InvalidArgument(
            f"must be one of {list(checks.POSITIONAL_ENCODINGS)}", field="attention.positional_encoding"
        )
    if heads * t * t > limit:
        raise ResourceExhausted(
            f"heads*T*T = {heads * t * t} attention scores exceed the limit {limit}",
            field="attention.sequence_length",
        )
    exhaustive, samples = _permutation_count(options, t, limits)
    tolerance = _tolerance(options.tolerance, "permutations.tolerance", 1e-4 if dtype == "float32" else 1e-9)
    return PermutationPlan(replace(spec, dtype=dtype), t, d, heads, exhaustive, samples, tolerance)


@dataclass(frozen=True)
class FeedForwardSpec:
    """The Linear-vs-Conv1d comparison as the request gives it.

    ``x``: (B, T, D) float32/float64, or None to draw (``batch_size`` 0 -> 4, ``sequence_length`` 0 -> 16)
    x ``widths[0]`` from ``seed``. ``widths``: layer widths, input first (empty: [D, 4D, D] with D =
    ``model_dim``, 0 -> 64). ``activation``: ``between`` or ``after_every_layer``. ``tolerance``: absolute
    (None: 1e-6 in float32, 1e-12 in float64; 0: exact equality). ``timing_repeats``: 0 -> 5, at most 1000.
    """

    x: np.ndarray | None = None
    model_dim: int = 0
    widths: tuple[int, ...] = ()
    activation: str = "between"
    tolerance: float | None = None
    timing_repeats: int = 0
    batch_size: int = 0
    sequence_length: int = 0
    seed: int = 0
    dtype: str = "float32"


@dataclass(frozen=True)
class FeedForwardPlan:
    """A validated comparison: widths, tolerance, repeats and the input's (B, T) resolved."""

    spec: FeedForwardSpec
    widths: list[int]
    tolerance: float
    repeats: int
    #: (B, T) of the drawn input; (0, 0) when x is given.
    batch: tuple[int, int]


def _feed_forward_widths(spec: FeedForwardSpec, limit: int) -> list[int]:
    if spec.x is not None:
        _float_array(spec.x, "x")
        if spec.x.ndim != 3:
            raise InvalidArgument(f"must have 3 dimensions, got shape {list(spec.x.shape)}", field="x")
        d = spec.x.shape[2]
    elif spec.widths:
        d = int(spec.widths[0])
        if spec.model_dim and spec.model_dim != d:
            raise InvalidArgument(f"is {spec.model_dim} but widths[0] is {d}", field="model_dim")
    else:
        d = _positive(spec.model_dim, "model_dim", default=64, maximum=limit)
    widths = [int(w) for w in spec.widths] or [d, 4 * d, d]
    if len(widths) < 2:
        raise InvalidArgument("needs at least two entries (input and output width)", field="widths")
    for i, w in enumerate(widths):
        _positive(w, f"widths[{i}]", maximum=limit)
    if spec.x is not None and widths[0] != d:
        raise InvalidArgument(f"widths[0]={widths[0]} but x has last dimension {d}", field="widths")
    parameters = sum(a * b + b for a, b in itertools.pairwise(widths))
    if parameters > limit:
        raise ResourceExhausted(f"would need {parameters} parameters; the limit is {limit}", field="widths")
    return widths


def plan_feed_forward(spec: FeedForwardSpec, limits: Limits) -> FeedForwardPlan:
    """Validate a Linear-vs-Conv1d comparison against ``limits``.

    Raises ``InvalidArgument`` for malformed fields and ``ResourceExhausted`` when the parameters, the drawn
    input's B*T*max(widths) or the repeats exceed the limits.
    """
    dtype = _dtype(spec.dtype, "dtype")
    limit = limits.max_tensor_elements
    widths = _feed_forward_widths(spec, limit)
    if spec.activation not in checks.ACTIVATIONS:
        raise InvalidArgument(f"must be one of {list(checks.ACTIVATIONS)}", field="activation")
    tolerance = _tolerance(spec.tolerance, "tolerance", 1e-6 if dtype == "float32" else 1e-12)
    repeats = _positive(spec.timing_repeats, "timing_repeats", default=5, maximum=MAX_TIMING_REPEATS)
    batch = (0, 0)
    if spec.x is None:
        b = _positive(spec.batch_size, "batch_size", default=4, maximum=limit)
        t = _positive(spec.sequence_length, "sequence_length", default=16, maximum=limit)
        if b * t * max(widths) > limit:
            raise ResourceExhausted(
                f"batch_size*sequence_length*max(widths) = {b * t * max(widths)} exceeds the limit {limit}",
                field="batch_size",
            )
        batch = (b, t)
    return FeedForwardPlan(replace(spec, dtype=dtype), widths, tolerance, repeats, batch)
