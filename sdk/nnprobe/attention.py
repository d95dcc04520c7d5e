"""Client for AttentionService: numerical checks of self-attention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe._client import FLOAT_DTYPES, USE_CLIENT_DEFAULT, UseClientDefault, choice
from nnprobe._requests import request_arguments
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.attention.v1 import attention_pb2_grpc, models_pb2
from nnprobe.api.common.v1 import common_pb2
from nnprobe.attention_certificates import SymmetryCertificate, certificate, model_fields
from nnprobe.display import rich_result
from nnprobe.repository_models import RepositoryModelMethods

_SOFTMAX = {"row": pb.SOFTMAX_MODE_ROW, "matrix": pb.SOFTMAX_MODE_MATRIX}
_POSITIONAL = {
    None: pb.POSITIONAL_ENCODING_NONE,
    "none": pb.POSITIONAL_ENCODING_NONE,
    "sinusoidal": pb.POSITIONAL_ENCODING_SINUSOIDAL,
}
_STRATEGY = {
    "auto": pb.PERMUTATION_STRATEGY_UNSPECIFIED,
    "exhaustive": pb.PERMUTATION_STRATEGY_EXHAUSTIVE,
    "sampled": pb.PERMUTATION_STRATEGY_SAMPLED,
}
_POOLING = {
    "mean": pb.POOLING_MEAN,
    "sum": pb.POOLING_SUM,
    "max": pb.POOLING_MAX,
    "first_token": pb.POOLING_FIRST_TOKEN,
}
_ACTIVATION = {
    "between": pb.ACTIVATION_PLACEMENT_BETWEEN,
    "after_every_layer": pb.ACTIVATION_PLACEMENT_AFTER_EVERY_LAYER,
}

SOFTMAX_MODES = tuple(_SOFTMAX)
STRATEGIES = tuple(_STRATEGY)
POOLINGS = tuple(_POOLING)
ACTIVATIONS = tuple(_ACTIVATION)


@rich_result()
@dataclass
class PermutationCheckResult:
    """Outcome of a permutation check (equivariance or pooling invariance)."""

    holds: bool
    permutations_checked: int
    exhaustive: bool
    max_deviation: float
    mean_deviation: float
    worst_permutation: list[int]
    tolerance: float
    #: s(X) for the equivariance check, pool(s(X)) for the pooling check; f32(X) for a model.
    output: np.ndarray
    seconds: float
    #: For a repository model (``model=``): the deviation judged against the model's own noise.
    certificate: SymmetryCertificate | None = None
    raw: Any = field(repr=False, default=None)

    @classmethod
    def _from(cls, response: Any, output: common_pb2.Tensor) -> PermutationCheckResult:
        return cls(
            holds=response.holds,
            permutations_checked=response.permutations_checked,
            exhaustive=response.exhaustive,
            max_deviation=response.max_deviation,
            mean_deviation=response.mean_deviation,
            worst_permutation=list(response.worst_permutation),
            tolerance=response.tolerance,
            output=tensors.to_numpy(output),
            seconds=response.seconds,
            certificate=certificate(response),
            raw=response,
        )


@rich_result()
@dataclass
class FeedForwardResult:
    """Outcome of the Linear-vs-Conv1d feed-forward comparison."""

    equivalent: bool
    max_deviation: float
    linear_parameters: int
    conv_parameters: int
    linear_forward_seconds: float
    conv_forward_seconds: float
    tolerance: float
    widths: list[int]
    output: np.ndarray
    raw: Any = field(repr=False, default=None)


def attention_spec(
    *,
    x: np.ndarray | None,
    sequence_length: int,
    model_dim: int,
    seed: int,
    weights: Sequence[np.ndarray] | None,
    heads: int,
    scale: float | None,
    softmax: str,
    positional_encoding: str | None,
    causal_mask: bool,
    dtype: str | None,
) -> pb.SelfAttention:
    """The ``SelfAttention`` of a check (sync and asyncio clients)."""
    spec = pb.SelfAttention(
        sequence_length=sequence_length,
        model_dim=model_dim,
        seed=seed,
        heads=heads,
        scale=scale,
        softmax=choice(_SOFTMAX, softmax, "softmax"),
        positional_encoding=choice(_POSITIONAL, positional_encoding, "positional_encoding"),
        causal_mask=causal_mask,
        dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
    )
    if x is not None:
        spec.x.CopyFrom(tensors.to_tensor(x))
    if weights is not None:
        if len(weights) != 3:
            raise ValueError("weights must be (w_query, w_key, w_value)")
        for name, w in zip(("w_query", "w_key", "w_value"), weights, strict=True):
            getattr(spec, name).CopyFrom(tensors.to_tensor(w))
    return spec


def permutation_options(strategy: str, num_samples: int, tolerance: float | None) -> pb.PermutationOptions:
    """The ``PermutationOptions`` of a check."""
    return pb.PermutationOptions(
        strategy=choice(_STRATEGY, strategy, "strategy"),
        num_samples=num_samples,
        tolerance=tolerance,
    )


def permutation_request(**arguments: Any) -> pb.CheckPermutationEquivarianceRequest:
    """The request of ``check_permutation_equivariance`` from its arguments by name."""
    options = {k: arguments.pop(k) for k in ("strategy", "num_samples", "tolerance")}
    own = model_fields(arguments)
    if own is not None:
        return pb.CheckPermutationEquivarianceRequest(permutations=permutation_options(**options), **own)
    return pb.CheckPermutationEquivarianceRequest(
        attention=attention_spec(**arguments), permutations=permutation_options(**options)
    )


def pooling_request(*, pooling: str, **arguments: Any) -> pb.CheckPoolingInvarianceRequest:
    """The request of ``check_pooling_invariance`` from its arguments by name."""
    checked = permutation_request(**arguments)
    if checked.model:  # the model pools inside itself
        if pooling != "mean":
            raise ValueError("pooling applies to a built attention layer; a model pools inside itself")
        return pb.CheckPoolingInvarianceRequest(
            permutations=checked.permutations,
            model=checked.model,
            model_version=checked.model_version,
            seed=checked.seed,
            noise_ratio_threshold=(
                checked.noise_ratio_threshold if checked.HasField("noise_ratio_threshold") else None
            ),
            x=checked.x if checked.HasField("x") else None,
        )
    return pb.CheckPoolingInvarianceRequest(
        attention=checked.attention,
        permutations=checked.permutations,
        pooling=choice(_POOLING, pooling, "pooling"),
    )


def feed_forward_request(
    *,
    x: np.ndarray | None,
    widths: Sequence[int],
    batch_size: int,
    sequence_length: int,
    model_dim: int,
    activation: str,
    seed: int,
    dtype: str | None,
    tolerance: float | None,
    timing_repeats: int,
) -> pb.CheckFeedForwardEquivalenceRequest:
    """The request of ``check_feed_forward_equivalence``."""
    request = pb.CheckFeedForwardEquivalenceRequest(
        widths=list(widths),
        batch_size=batch_size,
        sequence_length=sequence_length,
        model_dim=model_dim,
        activation=choice(_ACTIVATION, activation, "activation"),
        seed=seed,
        dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
        tolerance=tolerance,
        timing_repeats=timing_repeats,
    )
    if x is not None:
        request.x.CopyFrom(tensors.to_tensor(x))
    return request


def feed_forward_result(r: Any) -> FeedForwardResult:
    """A ``CheckFeedForwardEquivalenceResponse`` as a ``FeedForwardResult``."""
    return FeedForwardResult(
        equivalent=r.equivalent,
        max_deviation=r.max_deviation,
        linear_parameters=r.linear_parameters,
        conv_parameters=r.conv_parameters,
        linear_forward_seconds=r.linear_forward_seconds,
        conv_forward_seconds=r.conv_forward_seconds,
        tolerance=r.tolerance,
        widths=list(r.widths),
        output=tensors.to_numpy(r.output),
        raw=r,
    )


class AttentionClient(RepositoryModelMethods):
    """``AttentionClient("localhost:50053")``; see each method for its options. ``upload_model``,
    ``list_models`` and ``delete_model`` manage the repository of the user's own token models.

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure.
    """

    SERVICE = "attention"
    FULL_NAME = "nnprobe.attention.v1.AttentionService"
    _MODELS_PB = models_pb2

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)

    def check_permutation_equivariance(
        self,
        x: np.ndarray | None = None,
        *,
        sequence_length: int = 0,
        model_dim: int = 0,
        seed: int = 0,
        weights: Sequence[np.ndarray] | None = None,
        heads: int = 1,
        scale: float | None = None,
        softmax: str = "row",
        positional_encoding: str | None = None,
        causal_mask: bool = False,
        dtype: str | None = None,
        strategy: str = "auto",
        num_samples: int = 0,
        tolerance: float | None = None,
        model: str | None = None,
        model_version: int = 0,
        noise_ratio_threshold: float | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> PermutationCheckResult:
        """Is s(PX) == P s(X)? Give ``x`` (T, D) or ``sequence_length``/``model_dim`` and a ``seed``.

        ``weights`` = (Wq, Wk, Wv), each (D, D), or drawn from ``seed``. ``scale`` defaults to
        sqrt(D/heads). ``softmax``: ``row`` or ``matrix`` (the original notebook's). ``positional_encoding``:
        ``none`` or ``sinusoidal``. ``strategy``: ``auto`` (all T! when T <= 8), ``exhaustive``, ``sampled``.
        ``tolerance``: relative to max(1, max |s(X)|); None for the server's default (1e-9 in float64,
        1e-4 in float32), 0 for exact equality. A ``scale`` of 0 or below is refused (INVALID_ARGUMENT).

        Your own model: ``model`` names a ``token_model`` of the repository (``model_version``: 0 for the
        latest), taking X (B, T, D) with tokens on axis 1. ``x`` is then (B, T, D) (token ids (B, T) for
        a model with a vocabulary), or drawn from ``seed`` at the configured shape; the layer arguments are
        left out. The result's ``certificate`` judges the float32 deviation against the model's own
        float32-vs-float64 noise: it holds when the ratio is <= ``noise_ratio_threshold`` (default 10).
        ``strategy`` ``auto`` checks all T! permutations when T <= 6; ``tolerance`` is then the relative
        float64 tolerance of locating the first breaking node (1e-9).
        """
        request = permutation_request(**request_arguments(locals()))
        response = self._unary(self._stub.CheckPermutationEquivariance, request, timeout)
        return PermutationCheckResult._from(response, response.output)

    def check_pooling_invariance(
        self,
        x: np.ndarray | None = None,
        *,
        pooling: str = "mean",
        sequence_length: int = 0,
        model_dim: int = 0,
        seed: int = 0,
        weights: Sequence[np.ndarray] | None = None,
        heads: int = 1,
        scale: float | None = None,
        softmax: str = "row",
        positional_encoding: str | None = None,
        causal_mask: bool = False,
        dtype: str | None = None,
        strategy: str = "auto",
        num_samples: int = 0,
        tolerance: float | None = None,
        model: str | None = None,
        model_version: int = 0,
        noise_ratio_threshold: float | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> PermutationCheckResult:
        """Is pool(s(PX)) == pool(s(X))? ``pooling``: ``mean``, ``sum``, ``max`` or ``first_token``.

        The other options are those of ``check_permutation_equivariance``. With ``model``: is f(PX) == f(X)
        for the repository model's own (pooled) output? ``pooling`` is then left at its default.
        """
        request = pooling_request(**request_arguments(locals()))
        response = self._unary(self._stub.CheckPoolingInvariance, request, timeout)
        return PermutationCheckResult._from(response, response.pooled)

    def check_feed_forward_equivalence(
        self,
        x: np.ndarray | None = None,
        *,
        widths: Sequence[int] = (),
        batch_size: int = 0,
        sequence_length: int = 0,
        model_dim: int = 0,
        activation: str = "between",
        seed: int = 0,
        dtype: str | None = None,
        tolerance: float | None = None,
        timing_repeats: int = 0,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> FeedForwardResult:
        """nn.Linear stack vs nn.Conv1d(kernel_size=1) stack with the same weights.

        ``widths``: input, hidden..., output (default [D, 4D, D]). ``x``: (B, T, widths[0]) or drawn from
        ``seed``. ``activation``: ``between`` (standard) or ``after_every_layer`` (the notebook's).
        ``tolerance``: absolute; None for the server's default (1e-6 in float32, 1e-12 in float64), 0 for
        exact equality.
        """
        request = feed_forward_request(**request_arguments(locals()))
        return feed_forward_result(self._unary(self._stub.CheckFeedForwardEquivalence, request, timeout))
