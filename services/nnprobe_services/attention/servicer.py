"""AttentionService: validate the request, convert it, call ``checks``, convert back."""

from __future__ import annotations

import itertools
import math
from typing import Any

import grpc
import numpy as np
import torch
from nnprobe import tensors
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.attention.v1 import attention_pb2_grpc
from nnprobe.api.common.v1 import common_pb2

from nnprobe_services.attention import checks
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
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
DEFAULT_SAMPLES = 1000
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class AttentionServicer(attention_pb2_grpc.AttentionServiceServicer):
    """Thin layer over ``nnprobe_services.attention.checks``."""

    def __init__(self, runtime: Runtime) -> None:
        self.config = runtime.config
        self.device = runtime.device
        self.compute = runtime.compute

    # -- RPCs ----------------------------------------------------------------------------------------
    async def CheckPermutationEquivariance(self, request, context):
        x, layer, perms, exhaustive, tolerance = self._prepare(request.attention, request.permutations)
        result = await self.compute.run(
            context,
            lambda stop: checks.check_equivariance(
                x, layer, perms, tolerance=tolerance, exhaustive=exhaustive, should_stop=stop
            ),
        )
        return pb.CheckPermutationEquivarianceResponse(
            **self._common_fields(result), output=tensors.to_tensor(result.reference)
        )

    async def CheckPoolingInvariance(self, request, context):
        pooling = POOLING[valid.enum_value(request.pooling, pb.Pooling, "pooling", pb.POOLING_MEAN)]
        x, layer, perms, exhaustive, tolerance = self._prepare(request.attention, request.permutations)
        result = await self.compute.run(
            context,
            lambda stop: checks.check_pooling(
                x, layer, perms, pooling, tolerance=tolerance, exhaustive=exhaustive, should_stop=stop
            ),
        )
        return pb.CheckPoolingInvarianceResponse(
            **self._common_fields(result), pooled=tensors.to_tensor(result.reference)
        )

    async def CheckFeedForwardEquivalence(self, request, context):
        dtype = valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT32)
        limit = self.config.max_tensor_elements
        if request.HasField("x"):
            x_np = valid.tensor(request.x, "x", max_elements=limit, ndim=3)
            if x_np.dtype.kind != "f":
                raise InvalidArgument(f"must be float32 or float64, not {x_np.dtype}", field="x")
            d = x_np.shape[2]
        elif request.widths:
            x_np, d = None, int(request.widths[0])
            if request.model_dim and request.model_dim != d:
                raise InvalidArgument(f"is {request.model_dim} but widths[0] is {d}", field="model_dim")
        else:
            x_np = None
            d = valid.positive(request.model_dim, "model_dim", default=64, maximum=limit)
        widths = [int(w) for w in request.widths] or [d, 4 * d, d]
        if len(widths) < 2:
            raise InvalidArgument("needs at least two entries (input and output width)", field="widths")
        for i, w in enumerate(widths):
            valid.positive(w, f"widths[{i}]", maximum=limit)
        if x_np is not None and widths[0] != d:
            raise InvalidArgument(f"widths[0]={widths[0]} but x has last dimension {d}", field="widths")
        parameters = sum(a * b + b for a, b in itertools.pairwise(widths))
        if parameters > limit:
            raise ResourceExhausted(
                f"would need {parameters} parameters; the limit is {limit}", field="widths"
            )
        activation = ACTIVATION[
            valid.enum_value(
                request.activation, pb.ActivationPlacement, "activation", pb.ACTIVATION_PLACEMENT_BETWEEN
            )
        ]
        tolerance = valid.finite_non_negative(request.tolerance, "tolerance") or (
            1e-6 if dtype == np.float32 else 1e-12
        )
        repeats = valid.positive(request.timing_repeats, "timing_repeats", default=5, maximum=1000)
        torch_dtype = TORCH_DTYPES[dtype]
        if x_np is not None:
            x = torch.from_numpy(x_np).to(torch_dtype)
        else:
            b = valid.positive(request.batch_size, "batch_size", default=4, maximum=limit)
            t = valid.positive(request.sequence_length, "sequence_length", default=16, maximum=limit)
            if b * t * max(widths) > limit:
                raise ResourceExhausted(
                    f"batch_size*sequence_length*max(widths) = {b * t * max(widths)} "
                    f"exceeds the limit {limit}",
                    field="batch_size",
                )
            x = checks.random_batch(b, t, d, request.seed, torch_dtype)
        result = await self.compute.run(
            context,
            lambda stop: checks.check_feed_forward(
                widths,
                x.to(self.device),
                activation=activation,
                seed=request.seed,
                tolerance=tolerance,
                repeats=repeats,
                should_stop=stop,
            ),
        )
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

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _common_fields(result: checks.PermutationCheck) -> dict:
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

    def _prepare(self, spec: pb.SelfAttention, options: pb.PermutationOptions):
        """Validate the attention spec and permutation options; build X, the layer and the permutations."""
        dtype = valid.float_dtype(spec.dtype, "attention.dtype", common_pb2.DTYPE_FLOAT64)
        torch_dtype = TORCH_DTYPES[dtype]
        limit = self.config.max_tensor_elements
        x = self._input(spec, limit).to(torch_dtype)
        t, d = x.shape
        weights = self._weights(spec, d, limit, torch_dtype)
        heads = spec.heads or 1
        if heads < 0 or d % heads:
            raise InvalidArgument(
                f"must be a positive divisor of model_dim={d}, got {spec.heads}", field="attention.heads"
            )
        if not math.isfinite(spec.scale) or spec.scale < 0:
            raise InvalidArgument(
                f"must be a finite number > 0 (or 0 for sqrt(D/heads)), got {spec.scale}",
                field="attention.scale",
            )
        wq, wk, wv = (w.to(self.device) for w in weights)
        layer = checks.SelfAttention(
            wq,
            wk,
            wv,
            heads=heads,
            scale=spec.scale or None,
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
        )
        if heads * t * t > limit:
            raise ResourceExhausted(
                f"heads*T*T = {heads * t * t} attention scores exceed the limit {limit}",
                field="attention.sequence_length",
            )
        perms, exhaustive = self._permutations(options, t, spec.seed)
        tolerance = valid.finite_non_negative(options.tolerance, "permutations.tolerance") or (
            1e-4 if dtype == np.float32 else 1e-9
        )
        return x.to(self.device), layer, perms, exhaustive, tolerance

    def _input(self, spec: pb.SelfAttention, limit: int) -> torch.Tensor:
        if spec.HasField("x"):
            x = valid.tensor(spec.x, "attention.x", max_elements=limit, ndim=2)
            if x.dtype.kind != "f":
                raise InvalidArgument(f"must be float32 or float64, not {x.dtype}", field="attention.x")
            t, d = x.shape
            for name, given, actual in (
                ("sequence_length", spec.sequence_length, t),
                ("model_dim", spec.model_dim, d),
            ):
                if given and given != actual:
                    raise InvalidArgument(
                        f"is {given} but x has shape {list(x.shape)}", field=f"attention.{name}"
                    )
            if t == 0 or d == 0:
                raise InvalidArgument(
                    f"must have T >= 1 and D >= 1, got shape {list(x.shape)}", field="attention.x"
                )
            return torch.from_numpy(x)
        t = valid.positive(spec.sequence_length, "attention.sequence_length", maximum=limit)
        d = valid.positive(spec.model_dim, "attention.model_dim", maximum=limit)
        if t * d > limit or d * d > limit:
            raise ResourceExhausted(
                f"T={t}, D={d} needs {max(t * d, d * d)} elements; the limit is {limit}",
                field="attention.model_dim",
            )
        return checks.random_input(t, d, spec.seed, torch.float64)

    def _weights(
        self, spec: pb.SelfAttention, d: int, limit: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, ...] | list[torch.Tensor]:
        names = ("w_query", "w_key", "w_value")
        given = [spec.HasField(n) for n in names]  # type: ignore[arg-type]
        if not any(given):
            if d * d > limit:
                raise ResourceExhausted(
                    f"D={d} needs {d * d} weight elements; the limit is {limit}", field="attention.model_dim"
                )
            return checks.random_weights(d, spec.seed, dtype)
        if not all(given):
            missing = [n for n, g in zip(names, given, strict=True) if not g]
            raise InvalidArgument(
                "w_query, w_key and w_value must be given together", field=f"attention.{missing[0]}"
            )
        weights = []
        for name in names:
            w = valid.tensor(getattr(spec, name), f"attention.{name}", max_elements=limit, ndim=2)
            if w.dtype.kind != "f":
                raise InvalidArgument(f"must be float32 or float64, not {w.dtype}", field=f"attention.{name}")
            if w.shape != (d, d):
                raise InvalidArgument(
                    f"must have shape [{d}, {d}] to match x, got {list(w.shape)}", field=f"attention.{name}"
                )
            weights.append(torch.from_numpy(w).to(dtype))
        return weights

    def _permutations(self, options: pb.PermutationOptions, t: int, seed: int):
        strategy = valid.enum_value(
            options.strategy,
            pb.PermutationStrategy,
            "permutations.strategy",
            pb.PERMUTATION_STRATEGY_UNSPECIFIED,
        )
        if strategy == pb.PERMUTATION_STRATEGY_UNSPECIFIED:
            strategy = (
                pb.PERMUTATION_STRATEGY_EXHAUSTIVE
                if t <= checks.MAX_EXHAUSTIVE_T
                else pb.PERMUTATION_STRATEGY_SAMPLED
            )
        if strategy == pb.PERMUTATION_STRATEGY_EXHAUSTIVE:
            if t > checks.MAX_EXHAUSTIVE_T:
                raise InvalidArgument(
                    f"exhaustive checking allows T <= {checks.MAX_EXHAUSTIVE_T} "
                    f"({math.factorial(checks.MAX_EXHAUSTIVE_T):,} permutations); T={t} would need "
                    f"{math.factorial(t):,}. Use PERMUTATION_STRATEGY_SAMPLED",
                    field="permutations.strategy",
                )
            return checks.exhaustive_permutations(t), True
        samples = valid.positive(
            options.num_samples,
            "permutations.num_samples",
            default=DEFAULT_SAMPLES,
            maximum=self.config.max_permutations,
        )
        return checks.sampled_permutations(t, samples, seed), False


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add the servicer to ``server``; return the full names of the services added."""
    attention_pb2_grpc.add_AttentionServiceServicer_to_server(AttentionServicer(runtime), server)
    return Registration([pb.DESCRIPTOR.services_by_name["AttentionService"].full_name])
