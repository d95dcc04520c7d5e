"""Self-attention symmetry checks and the Linear-vs-Conv1d feed-forward equivalence (pure PyTorch).

Every permutation check evaluates all permutations as batched tensor operations, in chunks that bound
memory, never as a Python loop per permutation.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nnprobe_services.errors import Cancelled, never

#: Largest T for which all T! permutations may be checked (8! = 40,320).
MAX_EXHAUSTIVE_T = 8
#: Elements of intermediate tensors per chunk of permutations (bounds memory at ~16 MB in float64).
CHUNK_ELEMENTS = 2_000_000

SOFTMAX_MODES = ("row", "matrix")
POSITIONAL_ENCODINGS = ("none", "sinusoidal")
POOLINGS = ("mean", "sum", "max", "first_token")
ACTIVATIONS = ("between", "after_every_layer")


@dataclass(frozen=True)
class SelfAttention:
    """s(X) = softmax(Q Kᵀ / scale) V with Q = X Wq, K = X Wk, V = X Wv, split into ``heads`` blocks."""

    w_query: torch.Tensor
    w_key: torch.Tensor
    w_value: torch.Tensor
    heads: int = 1
    scale: float | None = None  # None: sqrt(D / heads)
    softmax: str = "row"
    positional: str = "none"
    causal: bool = False

    @property
    def model_dim(self) -> int:
        return self.w_query.shape[0]

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale else math.sqrt(self.model_dim // self.heads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to x of shape (..., T, D); returns (..., T, D)."""
        return self.attend(*self.project(x))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V for x (..., T, D), positional encoding added first."""
        if self.positional == "sinusoidal":
            x = x + sinusoidal_encoding(x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
        return x @ self.w_query, x @ self.w_key, x @ self.w_value

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(Q Kᵀ / scale) V per head; the part of the layer that mixes positions."""
        t, d = q.shape[-2], q.shape[-1]
        heads, d_head = self.heads, d // self.heads

        def split(m: torch.Tensor) -> torch.Tensor:  # (..., T, D) -> (..., H, T, d_head)
            return m.unflatten(-1, (heads, d_head)).transpose(-3, -2)

        scores = split(q) @ split(k).transpose(-1, -2) / self.effective_scale
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if self.softmax == "row":
            weights = scores.softmax(dim=-1)
        else:  # one softmax over the whole T x T score matrix of each head
            weights = scores.flatten(-2).softmax(dim=-1).unflatten(-1, (t, t))
        return (weights @ split(v)).transpose(-3, -2).flatten(-2)

    def on_permutations(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function perms (N, T) -> s(x[perms]) (N, T, D), evaluated as one batch.

        Without positional encoding the projections act on each row alone, so row i of (PX)Wq is row
        p[i] of XWq: they are computed once for the T rows and gathered. Everything that mixes positions
        (scores, mask, softmax, weighted sum) is evaluated for every permutation. With a positional
        encoding the whole layer is evaluated on each permuted input.
        """
        if self.positional != "none":
            return lambda perms: self(x[perms])
        q, k, v = self.project(x)
        return lambda perms: self.attend(q[perms], k[perms], v[perms])


def sinusoidal_encoding(t: int, d: int, *, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); shape (t, d)."""
    position = torch.arange(t, dtype=torch.float64).unsqueeze(1)
    frequency = torch.pow(10000.0, -torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(t, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency[: d // 2])
    return pe.to(dtype=dtype, device=device)


def generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU generator per (seed, stream), so X and the weights do not share draws."""
    mixed = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


def random_input(t: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """X ~ N(0, 1), drawn in float64 so float32 and float64 runs see the same numbers."""
    return torch.randn(t, d, generator=generator(seed, 0), dtype=torch.float64).to(dtype)


def random_weights(d: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wq, Wk, Wv ~ N(0, 1/D)."""
    g = generator(seed, 1)
    wq, wk, wv = (
        (torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)).to(dtype) for _ in range(3)
    )
    return wq, wk, wv


# -- permutations ------------------------------------------------------------------------------------
def exhaustive_permutations(t: int) -> torch.Tensor:
    """All t! permutations in lexicographic order, shape (t!, t)."""
    if t > MAX_EXHAUSTIVE_T:
        raise ValueError(f"exhaustive checking allows T <= {MAX_EXHAUSTIVE_T}, got T={t}")
    return torch.tensor(list(itertools.permutations(range(t))), dtype=torch.long).reshape(-1, t)


def sampled_permutations(t: int, samples: int, seed: int) -> torch.Tensor:
    """Identity, every adjacent transposition (i, i+1), then ``samples`` random permutations."""
    fixed = torch.arange(t).repeat(t, 1)
    for i in range(t - 1):
        fixed[i + 1, [i, i + 1]] = fixed[i + 1, [i + 1, i]]
    drawn = torch.rand(samples, t, generator=generator(seed, 2)).argsort(dim=1)
    return torch.cat([fixed, drawn])


# -- checks ------------------------------------------------------------------------------------------
@dataclass
class PermutationCheck:
    """Outcome of checking a property over a set of permutations."""

    holds: bool
    permutations_checked: int
    exhaustive: bool
    max_deviation: float
    mean_deviation: float
    worst_permutation: list[int]
    tolerance: float
    reference: np.ndarray  # s(X), or pool(s(X)) for the pooling check
    seconds: float
    deviations: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def _scan(
    x: torch.Tensor,
    perms: torch.Tensor,
    deviation: Callable[[torch.Tensor], torch.Tensor],
    per_perm_elements: int,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """Per-permutation maximum deviation, computed in chunks of permutations."""
    chunk = max(1, CHUNK_ELEMENTS // max(1, per_perm_elements))
    out = torch.empty(len(perms), dtype=torch.float64)
    perms = perms.to(x.device)
    for start in range(0, len(perms), chunk):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {start} of {len(perms)} permutations")
        block = perms[start : start + chunk]
        out[start : start + len(block)] = deviation(block).to("cpu", torch.float64)
    return out


def _summary(
    devs: torch.Tensor,
    perms: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float,
    exhaustive: bool,
    started: float,
) -> PermutationCheck:
    worst = int(devs.argmax())
    absolute = tolerance * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)
    max_dev = float(devs.max())
    return PermutationCheck(
        holds=max_dev <= absolute,
        permutations_checked=len(perms),
        exhaustive=exhaustive,
        max_deviation=max_dev,
        mean_deviation=float(devs.mean()),
        worst_permutation=perms[worst].tolist(),
        tolerance=absolute,
        reference=reference.cpu().numpy(),
        seconds=time.perf_counter() - started,
        deviations=devs.numpy(),
    )


def _elements_per_permutation(layer: SelfAttention, t: int) -> int:
    return 8 * t * layer.model_dim + 3 * layer.heads * t * t


@torch.inference_mode()
def check_equivariance(
    x: torch.Tensor,
    layer: SelfAttention,
    perms: torch.Tensor,
    *,
    tolerance: float,
    exhaustive: bool,
    should_stop: Callable[[], bool] | None = None,
) -> PermutationCheck:
    """Is s(PX) == P s(X) for every permutation P in ``perms``?"""
    started = time.perf_counter()
    reference = layer(x)

    permuted = layer.on_permutations(x)

    def deviation(block: torch.Tensor) -> torch.Tensor:
        return (permuted(block) - reference[block]).abs().amax(dim=(-2, -1))

    devs = _scan(x, perms, deviation, _elements_per_permutation(layer, x.shape[0]), should_stop)
    return _summary(devs, perms, reference, tolerance, exhaustive, started)


def pool(outputs: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (..., T, D) over T."""
    if how == "mean":
        return outputs.mean(dim=-2)
    if how == "sum":
        return outputs.sum(dim=-2)
    if how == "max":
        return outputs.amax(dim=-2)
    if how == "first_token":
        return outputs[..., 0, :]
    raise ValueError(f"unknown pooling {how!r}")


@torch.inference_mode()
def check_pooling(
    x: torch.Tensor,
    layer: SelfAttention,
    perms: torch.Tensor,
    pooling: str,
    *,
    tolerance: float,
    exhaustive: bool,
    should_stop: Callable[[], bool] | None = None,
) -> PermutationCheck:
    """Is pool(s(PX)) == pool(s(X)) for every permutation P in ``perms``?"""
    started = time.perf_counter()
    reference = pool(layer(x), pooling)

    permuted = layer.on_permutations(x)

    def deviation(block: torch.Tensor) -> torch.Tensor:
        return (pool(permuted(block), pooling) - reference).abs().amax(dim=-1)

    devs = _scan(x, perms, deviation, _elements_per_permutation(layer, x.shape[0]), should_stop)
    return _summary(devs, perms, reference, tolerance, exhaustive, started)


# -- feed-forward equivalence ------------------------------------------------------------------------
@dataclass
class FeedForwardCheck:
    """Outcome of comparing the nn.Linear and nn.Conv1d(kernel_size=1) stacks."""

    equivalent: bool
    max_deviation: float
    linear_parameters: int
    conv_parameters: int
    linear_forward_seconds: float
    conv_forward_seconds: float
    tolerance: float
    widths: list[int]
    output: np.ndarray


def conv_stack(widths: list[int], seed: int, dtype: torch.dtype) -> torch.nn.ModuleList:
    """Conv1d(kernel_size=1) layers with PyTorch's default initialisation, drawn from ``seed``."""
    g = generator(seed, 3)
    layers = torch.nn.ModuleList()
    for fan_in, fan_out in itertools.pairwise(widths):
        conv = torch.nn.Conv1d(fan_in, fan_out, kernel_size=1, dtype=dtype)
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias rule both give this
        with torch.no_grad():
            conv.weight.copy_(
                (torch.rand(fan_out, fan_in, 1, generator=g, dtype=torch.float64) * 2 - 1) * bound
            )
            conv.bias.copy_(  # type: ignore[union-attr]
                (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound
            )
        layers.append(conv)
    return layers


def linear_twin(convs: torch.nn.ModuleList) -> torch.nn.ModuleList:
    """nn.Linear layers holding the same numbers: weight = conv.weight.squeeze(-1)."""
    layers = torch.nn.ModuleList()
    for conv in convs:
        assert isinstance(conv, torch.nn.Conv1d)
        linear = torch.nn.Linear(
            conv.in_channels, conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device
        )
        with torch.no_grad():
            linear.weight.copy_(conv.weight.squeeze(-1))
            linear.bias.copy_(conv.bias)  # type: ignore[arg-type]
        layers.append(linear)
    return layers


def run_stack(layers: torch.nn.ModuleList, x: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply the layers with ReLU between them, or after every one (``after_every_layer``)."""
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < last or activation == "after_every_layer":
            x = torch.relu(x)
    return x


def _median_seconds(
    fn: Callable[[], torch.Tensor], repeats: int, device: torch.device, should_stop: Callable[[], bool]
) -> float:
    times = []
    for i in range(repeats):
        if should_stop():
            raise Cancelled(f"stopped after {i} of {repeats} timing repeats", done=i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def check_feed_forward(
    widths: list[int],
    x: torch.Tensor,
    *,
    activation: str,
    seed: int,
    tolerance: float,
    repeats: int,
    should_stop: Callable[[], bool] = never,
) -> FeedForwardCheck:
    """Linear stack on (B, T, D) versus Conv1d stack on the (B, D, T) layout, same weights.

    ``should_stop`` is polled before each timing repeat; when it answers true, ``Cancelled`` is raised.
    """
    convs = conv_stack(widths, seed, x.dtype).to(x.device)
    linears = linear_twin(convs)

    def via_linear() -> torch.Tensor:
        return run_stack(linears, x, activation)

    def via_conv() -> torch.Tensor:
        return run_stack(convs, x.transpose(1, 2), activation).transpose(1, 2)

    out_linear, out_conv = via_linear(), via_conv()
    max_dev = float((out_linear - out_conv).abs().max()) if out_linear.numel() else 0.0
    return FeedForwardCheck(
        equivalent=max_dev <= tolerance,
        max_deviation=max_dev,
        linear_parameters=sum(p.numel() for p in linears.parameters()),
        conv_parameters=sum(p.numel() for p in convs.parameters()),
        linear_forward_seconds=_median_seconds(via_linear, repeats, x.device, should_stop),
        conv_forward_seconds=_median_seconds(via_conv, repeats, x.device, should_stop),
        tolerance=tolerance,
        widths=list(widths),
        output=out_linear.cpu().numpy(),
    )


def random_batch(b: int, t: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, D) ~ N(0, 1), drawn in float64."""
    return torch.randn(b, t, d, generator=generator(seed, 4), dtype=torch.float64).to(dtype)
