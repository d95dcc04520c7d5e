"""AttentionService: each handler converts the request to plain values, plans and runs one check of
``plans``, and converts the result back. Decoding tensors and checking them is NumPy work, so the whole
conversion runs in the compute pool with the check, never on the event loop."""

from __future__ import annotations

from typing import Any

import grpc
from nnprobe import tensors
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.attention.v1 import attention_pb2_grpc
from nnprobe.api.common.v1 import common_pb2

from nnprobe_services.attention import workflow as plans
from nnprobe_services.attention.checks import FeedForwardCheck, PermutationCheck
from nnprobe_services.errors import StopSignal
from nnprobe_services.server import validation as valid
from nnprobe_services.server.app import Registration, Runtime

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


class AttentionServicer(attention_pb2_grpc.AttentionServiceServicer):
    """Thin layer over ``nnprobe_services.attention.workflow``."""

    def __init__(self, runtime: Runtime) -> None:
        self.device = runtime.device
        self.compute = runtime.compute
        self.limits = plans.Limits(runtime.config.max_tensor_elements, runtime.config.max_permutations)

    async def CheckPermutationEquivariance(self, request, context):
        def check(stop: StopSignal) -> PermutationCheck:
            plan = self._permutation_plan(request.attention, request.permutations)
            return plans.run_equivariance(plan, self.device, should_stop=stop)

        result = await self.compute.run(context, check)
        return pb.CheckPermutationEquivarianceResponse(
            **_permutation_fields(result), output=tensors.to_tensor(result.reference)
        )

    async def CheckPoolingInvariance(self, request, context):
        pooling = POOLING[valid.enum_value(request.pooling, pb.Pooling, "pooling", pb.POOLING_MEAN)]

        def check(stop: StopSignal) -> PermutationCheck:
            plan = self._permutation_plan(request.attention, request.permutations)
            return plans.run_pooling_invariance(plan, pooling, self.device, should_stop=stop)

        result = await self.compute.run(context, check)
        return pb.CheckPoolingInvarianceResponse(
            **_permutation_fields(result), pooled=tensors.to_tensor(result.reference)
        )

    async def CheckFeedForwardEquivalence(self, request, context):
        def check(stop: StopSignal) -> FeedForwardCheck:
            plan = plans.plan_feed_forward(self._feed_forward_spec(request), self.limits)
            return plans.run_feed_forward(plan, self.device, should_stop=stop)

        result = await self.compute.run(context, check)
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

    # -- protobuf -> plain values --------------------------------------------------------------------
    def _tensor(self, message: Any, name: str, ndim: int) -> Any:
        return valid.tensor(message, name, max_elements=self.limits.max_tensor_elements, ndim=ndim)

    def _permutation_plan(
        self, spec: pb.SelfAttention, options: pb.PermutationOptions
    ) -> plans.PermutationPlan:
        dtype = valid.float_dtype(spec.dtype, "attention.dtype", common_pb2.DTYPE_FLOAT64)
        weight_names = ("w_query", "w_key", "w_value")
        attention = plans.AttentionSpec(
            x=self._tensor(spec.x, "attention.x", 2) if spec.HasField("x") else None,
            sequence_length=spec.sequence_length,
            model_dim=spec.model_dim,
            weights=tuple(
                self._tensor(getattr(spec, n), f"attention.{n}", 2) if spec.HasField(n) else None  # type: ignore[arg-type]
                for n in weight_names
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
        strategy = valid.enum_value(
            options.strategy,
            pb.PermutationStrategy,
            "permutations.strategy",
            pb.PERMUTATION_STRATEGY_UNSPECIFIED,
        )
        tolerance = options.tolerance if options.HasField("tolerance") else None
        chosen = plans.PermutationOptions(STRATEGY[strategy], options.num_samples, tolerance)
        return plans.plan_permutation_check(attention, chosen, self.limits)

    def _feed_forward_spec(self, request: pb.CheckFeedForwardEquivalenceRequest) -> plans.FeedForwardSpec:
        dtype = valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT32)
        activation = valid.enum_value(
            request.activation, pb.ActivationPlacement, "activation", pb.ACTIVATION_PLACEMENT_BETWEEN
        )
        return plans.FeedForwardSpec(
            x=self._tensor(request.x, "x", 3) if request.HasField("x") else None,
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


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add the servicer to ``server``; return the full names of the services added."""
    attention_pb2_grpc.add_AttentionServiceServicer_to_server(AttentionServicer(runtime), server)
    return Registration([pb.DESCRIPTOR.services_by_name["AttentionService"].full_name])
