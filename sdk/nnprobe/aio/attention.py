"""``nnprobe.aio.AttentionClient``: the asyncio twin of ``nnprobe.AttentionClient``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnprobe import attention
from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.aio._base import documented_as
from nnprobe.aio.repository_models import RepositoryModelMethods
from nnprobe.api.attention.v1 import attention_pb2_grpc, models_pb2
from nnprobe.attention import FeedForwardResult, PermutationCheckResult


@documented_as(attention.AttentionClient)
class AttentionClient(RepositoryModelMethods):
    """``nnprobe.aio.AttentionClient("localhost:50053")``: ``await`` each method of
    ``nnprobe.AttentionClient``; ``async with`` closes the channel."""

    SERVICE = "attention"
    FULL_NAME = "nnprobe.attention.v1.AttentionService"
    STUB = attention_pb2_grpc.AttentionServiceStub
    _MODELS_PB = models_pb2

    async def check_permutation_equivariance(
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
        request = attention.permutation_request(**request_arguments(locals()))
        response = await self._unary(self._stub.CheckPermutationEquivariance, request, timeout)
        return PermutationCheckResult._from(response, response.output)

    async def check_pooling_invariance(
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
        request = attention.pooling_request(**request_arguments(locals()))
        response = await self._unary(self._stub.CheckPoolingInvariance, request, timeout)
        return PermutationCheckResult._from(response, response.pooled)

    async def check_feed_forward_equivalence(
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
        request = attention.feed_forward_request(**request_arguments(locals()))
        response = await self._unary(self._stub.CheckFeedForwardEquivalence, request, timeout)
        return attention.feed_forward_result(response)
