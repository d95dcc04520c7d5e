"""``nnprobe.aio.SequenceClient``: the asyncio twin of ``nnprobe.SequenceClient``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.aio._base import documented_as
from nnprobe.aio.job_handle import AsyncJobHandle
from nnprobe.aio.language_model import LanguageModelMethods
from nnprobe.aio.repository_models import RepositoryModelMethods
from nnprobe.api.sequence.v1 import models_pb2, sequence_pb2_grpc
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.sequence import corpus, gradients, rnn, truncation
from nnprobe.sequence.client import SequenceClient as SyncSequenceClient
from nnprobe.sequence.corpus import CorpusInfo
from nnprobe.sequence.gradients import GradientAnalysis
from nnprobe.sequence.progress import final_result_async
from nnprobe.sequence.rnn import RecurrentResult
from nnprobe.sequence.truncation import TruncationComparison


@documented_as(SyncSequenceClient)
class SequenceClient(LanguageModelMethods, RepositoryModelMethods):
    """``nnprobe.aio.SequenceClient("localhost:50052")``: ``await`` each method of
    ``nnprobe.SequenceClient`` (``async for`` over ``watch_job``); ``async with`` closes the channel."""

    SERVICE = "sequence"
    FULL_NAME = "nnprobe.sequence.v1.SequenceService"
    STUB = sequence_pb2_grpc.SequenceServiceStub
    _MODELS_PB = models_pb2

    def job(self, job_id: str) -> AsyncJobHandle:
        """A handle on the training job ``job_id``: ``await handle.watch()`` follows it with a progress bar
        and its curves, ``await handle.result()`` waits for it. No RPC until one of its methods is awaited."""
        return AsyncJobHandle(self, job_id)

    async def run_recurrent(
        self,
        inputs: np.ndarray,
        *,
        cell: str = "rnn_tanh",
        hidden_size: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        no_bias: bool = False,
        init: str = "pytorch",
        init_scale: float | None = None,
        seed: int = 0,
        output_size: int = 0,
        forget_bias: float = 0.0,
        initial_hidden: np.ndarray | None = None,
        initial_cell: np.ndarray | None = None,
        dtype: str | None = None,
        settle_tolerance: float | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> RecurrentResult:
        request = rnn.run_recurrent_request(**request_arguments(locals()))
        return rnn._recurrent_result(await self._unary(self._stub.RunRecurrent, request, timeout))

    async def analyze_gradients(
        self,
        *,
        cells: Sequence[str] | None = None,
        spectral_radii: Sequence[float] = (),
        hidden_size: int = 0,
        sequence_length: int = 0,
        input_size: int = 0,
        input_distribution: str = "normal",
        input_scale: float | None = None,
        seed: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        init: str = "pytorch",
        init_scale: float | None = None,
        forget_bias: float = 0.0,
        random_initial_state: bool = False,
        dtype: str | None = None,
        regime_tolerance: float | None = None,
        plot: bool = False,
        model: str = "",
        model_version: int = 0,
        inputs: np.ndarray | None = None,
        token_ids: Sequence[int] | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> GradientAnalysis:
        request = gradients.analyze_gradients_request(**request_arguments(locals()))
        events = self._stream(self._stub.AnalyzeGradients, request, timeout)
        with reporting(progress, on_progress, "gradients", gradients.PROGRESS_UNIT) as report:
            result = await final_result_async(events, report, gradients.PROGRESS_UNIT)
        return gradients._gradient_analysis(result)

    async def compare_truncation(
        self,
        *,
        chunk_counts: Sequence[int] = (),
        vocab_size: int = 0,
        embed_size: int = 0,
        hidden_size: int = 0,
        batch_size: int = 0,
        chunk_length: int = 0,
        seed: int = 0,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TruncationComparison:
        request = truncation.compare_truncation_request(**request_arguments(locals()))
        events = self._stream(self._stub.CompareTruncation, request, timeout)
        with reporting(progress, on_progress, "truncation", truncation.PROGRESS_UNIT) as report:
            result = await final_result_async(events, report, truncation.PROGRESS_UNIT)
        return truncation.truncation_comparison(result)

    async def upload_corpus(
        self,
        train: str,
        valid: str = "",
        test: str = "",
        *,
        name: str = "",
        chunk_bytes: int = 1 << 20,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> CorpusInfo:
        messages = corpus.upload_corpus_messages(**request_arguments(locals()))
        return corpus.corpus_info(await self._unary(self._stub.UploadCorpus, messages, timeout))
