"""AttentionService between protobuf and plain values: the ``SelfAttention``, ``PermutationOptions`` and
feed-forward request fields read into ``plans``' specs (tensors decoded and checked against
``max_tensor_elements``, enums mapped to names; errors name the request field), and the checks' results
built into replies; a request naming a repository ``model`` is read into a ``ModelCheckSpec`` and its
certificate built into the reply. Decoding tensors is NumPy work: a servicer reads requests in its compute
pool."""

from __future__ import annotations

from typing import Any

import numpy as np
from nnprobe import tensors
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.common.v1 import common_pb2

from nnprobe_services import validation as valid
from nnprobe_services.attention.certificates.certify import Certificate
from nnprobe_services.attention.certificates.plans import ModelCheckSpec
from nnprobe_services.attention.checks import FeedForwardCheck, PermutationCheck
from nnprobe_services.attention.plans import AttentionSpec, FeedForwardSpec, Limits, PermutationOptions
from nnprobe_services.errors import InvalidArgument

SOFTMAX: dict[Any, str] = {pb.SOFTMAX_MODE_ROW: "row", pb.SOFTMAX_MODE_MATRIX: "matrix"}
POSITIONAL: dict[Any, str] = {
    pb.POSITIONAL_ENCODING_NONE: "none",
    pb.POSITIONAL_ENCODING_SINUSOIDAL: "sinusoidal",
}
POOLING: dict[Any, str] = {
    pb.POOLING_MEAN: "mean",
    pb.POOLING_SUM: "sum",
    pb.POOLING_MAX: "max",
    pb.POOLING_FIRST_TOKEN: "first_token",
}
ACTIVATION: dict[Any, str] = {
    pb.ACTIVATION_PLACEMENT_BETWEEN: "between",
    pb.ACTIVATION_PLACEMENT_AFTER_EVERY_LAYER: "after_every_layer",
}
STRATEGY: dict[Any, str] = {
    pb.PERMUTATION_STRATEGY_UNSPECIFIED: "auto",
    pb.PERMUTATION_STRATEGY_EXHAUSTIVE: "exhaustive",
    pb.PERMUTATION_STRATEGY_SAMPLED: "sampled",
}
WEIGHT_NAMES = ("w_query", "w_key", "w_value")


# -- requests --------------------------------------------------------------------------------------------
def _tensor(message: Any, name: str, ndim: int, limits: Limits) -> np.ndarray:
    return valid.tensor(message, name, max_elements=limits.max_tensor_elements, ndim=ndim)


def permutation_check(
    spec: pb.SelfAttention, options: pb.PermutationOptions, limits: Limits
) -> tuple[AttentionSpec, PermutationOptions]:
    """The layer and input of a permutation check, and which permutations to check."""
    return attention_spec(spec, limits), permutation_options(options)


def attention_spec(spec: pb.SelfAttention, limits: Limits) -> AttentionSpec:
    dtype = valid.float_dtype(spec.dtype, "attention.dtype", common_pb2.DTYPE_FLOAT64)
    return AttentionSpec(
        x=_tensor(spec.x, "attention.x", 2, limits) if spec.HasField("x") else None,
        sequence_length=spec.sequence_length,
        model_dim=spec.model_dim,
        weights=tuple(
            _tensor(getattr(spec, n), f"attention.{n}", 2, limits) if spec.HasField(n) else None  # type: ignore[arg-type]
            for n in WEIGHT_NAMES
        ),
        heads=spec.heads,
        scale=spec.scale if spec.HasField("scale") else None,
        softmax=SOFTMAX[
            valid.enum_value(spec.softmax, pb.SoftmaxMode, "attention.softmax", pb.SOFTMAX_MODE_ROW)
        ],
        positional=POSITIONAL[
            valid.enum_value(
                spec.positional_encoding,
                pb.PositionalEncoding,
                "attention.positional_encoding",
                pb.POSITIONAL_ENCODING_NONE,
            )
        ],
        causal=spec.causal_mask,
        seed=spec.seed,
        dtype=dtype.name,
    )


def permutation_options(options: pb.PermutationOptions) -> PermutationOptions:
    strategy = valid.enum_value(
        options.strategy,
        pb.PermutationStrategy,
        "permutations.strategy",
        pb.PERMUTATION_STRATEGY_UNSPECIFIED,
    )
    tolerance = options.tolerance if options.HasField("tolerance") else None
    return PermutationOptions(STRATEGY[strategy], options.num_samples, tolerance)


def pooling(request: pb.CheckPoolingInvarianceRequest) -> str:
    """The pooling's name (default: mean)."""
    return POOLING[valid.enum_value(request.pooling, pb.Pooling, "pooling", pb.POOLING_MEAN)]


def feed_forward_spec(request: pb.CheckFeedForwardEquivalenceRequest, limits: Limits) -> FeedForwardSpec:
    dtype = valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT32)
    activation = valid.enum_value(
        request.activation, pb.ActivationPlacement, "activation", pb.ACTIVATION_PLACEMENT_BETWEEN
    )
    return FeedForwardSpec(
        x=_tensor(request.x, "x", 3, limits) if request.HasField("x") else None,
        model_dim=request.model_dim,
        widths=tuple(request.widths),
        activation=ACTIVATION[activation],
        tolerance=request.tolerance if request.HasField("tolerance") else None,
        timing_repeats=request.timing_repeats,
        batch_size=request.batch_size,
        sequence_length=request.sequence_length,
        seed=request.seed,
        dtype=dtype.name,
    )


# -- replies ---------------------------------------------------------------------------------------------
def _permutation_fields(result: PermutationCheck) -> dict[str, Any]:
    return {
        "holds": result.holds,
        "permutations_checked": result.permutations_checked,
        "exhaustive": result.exhaustive,
        "max_deviation": result.max_deviation,
        "mean_deviation": result.mean_deviation,
        "worst_permutation": result.worst_permutation,
        "tolerance": result.tolerance,
        "seconds": result.seconds,
    }


def equivariance_reply(result: PermutationCheck) -> pb.CheckPermutationEquivarianceResponse:
    return pb.CheckPermutationEquivarianceResponse(
        **_permutation_fields(result), output=tensors.to_tensor(result.reference)
    )


def pooling_reply(result: PermutationCheck) -> pb.CheckPoolingInvarianceResponse:
    return pb.CheckPoolingInvarianceResponse(
        **_permutation_fields(result), pooled=tensors.to_tensor(result.reference)
    )


def feed_forward_reply(result: FeedForwardCheck) -> pb.CheckFeedForwardEquivalenceResponse:
    return pb.CheckFeedForwardEquivalenceResponse(
        equivalent=result.equivalent,
        max_deviation=result.max_deviation,
        linear_parameters=result.linear_parameters,
        conv_parameters=result.conv_parameters,
        linear_forward_seconds=result.linear_forward_seconds,
        conv_forward_seconds=result.conv_forward_seconds,
        tolerance=result.tolerance,
        widths=result.widths,
        output=tensors.to_tensor(result.output),
    )


# -- a repository token model ------------------------------------------------------------------------
MODEL_FIELDS = ("model_version", "noise_ratio_threshold", "x")


def refuse_model_fields(request: Any) -> None:
    """A check of a built layer: the fields that go with ``model`` must be unset (``InvalidArgument``)."""
    for name in MODEL_FIELDS:
        if request.HasField(name) if name != "model_version" else request.model_version:
            raise InvalidArgument(
                "goes with `model`; a built attention layer is described by `attention`", field=name
            )
    if request.seed:
        raise InvalidArgument("goes with `model`; a built layer's seed is attention.seed", field="seed")


def model_check(request: Any, action: str, limits: Limits) -> ModelCheckSpec:
    """A Check* request naming a ``model`` as a ``ModelCheckSpec`` (``action``: ``equivariance`` or
    ``invariance``). Raises ``InvalidArgument`` on ``attention`` or ``pooling`` when they are set too,
    and on ``x`` / ``permutations.strategy`` when malformed."""
    if request.HasField("attention"):
        raise InvalidArgument(
            "describes a built layer; leave it unset when `model` is given", field="attention"
        )
    if action == "invariance" and request.pooling != pb.POOLING_UNSPECIFIED:
        raise InvalidArgument(
            "a model pools inside itself; leave it unset when `model` is given", field="pooling"
        )
    options = permutation_options(request.permutations)
    return ModelCheckSpec(
        model=request.model,
        action=action,
        model_version=request.model_version,
        x=valid.tensor(request.x, "x", max_elements=limits.max_tensor_elements)
        if request.HasField("x")
        else None,
        seed=request.seed,
        strategy=options.strategy,
        num_samples=options.num_samples,
        threshold=(request.noise_ratio_threshold if request.HasField("noise_ratio_threshold") else None),
        tolerance=options.tolerance,
    )


def _certificate(result: Certificate) -> pb.SymmetryCertificate:
    certificate = pb.SymmetryCertificate(
        model=result.model,
        model_version=result.model_version,
        input_shape=result.input_shape,
        noise=result.noise,
        noise_floor=result.noise_floor,
        deviation=result.deviation,
        deviation_float64=result.deviation_float64,
        ratio=result.ratio,
        threshold=result.threshold,
    )
    node = result.breaking
    if node is not None:
        certificate.first_breaking_node.CopyFrom(
            pb.BreakingNode(
                name=node.name,
                op=node.op,
                target=node.target,
                deviation=node.deviation,
                tolerance=node.tolerance,
                shape=node.shape,
            )
        )
    return certificate


def _model_fields(result: Certificate) -> dict[str, Any]:
    return {
        "holds": result.holds,
        "permutations_checked": result.permutations_checked,
        "exhaustive": result.exhaustive,
        "max_deviation": result.deviation,
        "mean_deviation": result.mean_deviation,
        "worst_permutation": result.worst_permutation,
        "tolerance": result.threshold * max(result.noise, result.noise_floor),
        "seconds": result.seconds,
        "certificate": _certificate(result),
    }


def model_equivariance_reply(result: Certificate) -> pb.CheckPermutationEquivarianceResponse:
    """The reply of a model's equivariance certificate; ``output`` is f32(X)."""
    return pb.CheckPermutationEquivarianceResponse(
        **_model_fields(result), output=tensors.to_tensor(result.output)
    )


def model_pooling_reply(result: Certificate) -> pb.CheckPoolingInvarianceResponse:
    """The reply of a model's invariance certificate; ``pooled`` is f32(X)."""
    return pb.CheckPoolingInvarianceResponse(**_model_fields(result), pooled=tensors.to_tensor(result.output))
