"""The training-job and trained-model methods of ``nnprobe.aio.SequenceClient``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.aio._base import AsyncBaseClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.errors import NnprobeError
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.sequence import jobs
from nnprobe.sequence import language_model as lm
from nnprobe.sequence.jobs import JobEvent, TrainingJob
from nnprobe.sequence.language_model import EmbeddingDistance, NearestWords, Perplexity, SampleResult
from nnprobe.sequence.training_logs import TensorBoardLogs, TrainingLogs, training_logs
from nnprobe.sequence.watching import Reconnection


class LanguageModelMethods(AsyncBaseClient):
    """Training jobs (start, watch, list, get, cancel, resume, wait) and queries of a trained model."""

    async def start_training(
        self,
        corpus_id: str = "ptb",
        *,
        name: str = "",
        embed_size: int = 0,
        hidden_size: int = 0,
        num_layers: int = 0,
        epochs: int = 0,
        batch_size: int = 0,
        sequence_length: int = 0,
        learning_rate: float | None = None,
        clip_norm: float | None = None,
        optimizer: str = "adam",
        dropout: float = 0.0,
        tie_weights: bool = False,
        max_steps: int = 0,
        seed: int = 0,
        device: str = "",
        lr_decay: float = 0.0,
        lr_decay_start_epoch: int = 0,
        init_range: float = 0.0,
        log_interval: int = 0,
        checkpoint_interval: int = 0,
        eval_batch_size: int = 0,
        workers: int = 0,
        patience: int = 0,
        request_id: str | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TrainingJob:
        request = jobs.start_training_request(request_arguments(locals()))
        return jobs._training_job((await self._unary(self._stub.StartTraining, request, timeout)).job)

    async def watch_job(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        timeout: float | UseClientDefault | None = None,
        reconnect_seconds: float = 60.0,
    ) -> AsyncIterator[JobEvent]:
        watch = Reconnection(job_id, after_sequence, self._deadline(timeout), reconnect_seconds)
        while True:
            request, remaining = watch.next_request()
            try:
                async for response in self._stream(self._stub.WatchJob, request, remaining):
                    yield jobs._job_event(watch.seen(response))
                return
            except NnprobeError as error:
                if not watch.retries(error):
                    raise
            await asyncio.sleep(watch.pause())

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        limit: int = 0,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> list[TrainingJob]:
        request = jobs.list_jobs_request(states, limit)
        response = await self._unary(self._stub.ListJobs, request, timeout)
        return [jobs._training_job(j) for j in response.jobs]

    async def get_job(
        self,
        job_id: str,
        *,
        history: bool = False,
        plot: bool = False,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TrainingJob:
        request = pb.GetJobRequest(job_id=job_id, history=history, plot=plot)
        return jobs.job_result(await self._unary(self._stub.GetJob, request, timeout), request)

    async def cancel_job(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingJob:
        request = pb.CancelJobRequest(job_id=job_id)
        return jobs._training_job((await self._unary(self._stub.CancelJob, request, timeout)).job)

    async def resume_job(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingJob:
        request = pb.ResumeJobRequest(job_id=job_id)
        return jobs._training_job((await self._unary(self._stub.ResumeJob, request, timeout)).job)

    async def get_training_logs(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingLogs:
        request = pb.GetTrainingLogsRequest(job_id=job_id)
        return training_logs(await self._unary(self._stub.GetTrainingLogs, request, timeout), job_id)

    async def download_tensorboard(
        self,
        job_id: str,
        out_dir: str | os.PathLike[str],
        *,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TensorBoardLogs:
        found = await self.get_training_logs(job_id, timeout=timeout)
        return await asyncio.to_thread(found.save, out_dir)

    async def wait_job(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = None,
    ) -> TrainingJob:
        with reporting(progress, on_progress, f"job {job_id}", "steps") as report:
            async for event in self.watch_job(job_id, timeout=timeout):
                report(jobs.job_progress(event))
        return await self.get_job(job_id)

    async def evaluate_perplexity(
        self,
        job_id: str,
        *,
        split: str = "valid",
        batch_size: int = 0,
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Perplexity:
        request = lm.evaluate_perplexity_request(**request_arguments(locals()))
        return lm.perplexity_result(
            await self._unary(self._stub.EvaluatePerplexity, request, timeout), request
        )

    async def sample(
        self,
        job_id: str,
        *,
        prompt: str = "",
        start_word_id: int | None = None,
        num_words: int = 50,
        strategy: str = "multinomial",
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int = 0,
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> SampleResult:
        request = lm.sample_request(**request_arguments(locals()))
        return lm.sample_result(await self._unary(self._stub.Sample, request, timeout))

    async def embedding_distance(
        self,
        job_id: str,
        word_a: str,
        word_b: str,
        *,
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> EmbeddingDistance:
        request = lm.embedding_distance_request(**request_arguments(locals()))
        return lm.distance_result(await self._unary(self._stub.EmbeddingDistance, request, timeout), request)

    async def nearest_words(
        self,
        job_id: str,
        word: str,
        *,
        k: int = 10,
        metric: str = "euclidean",
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> NearestWords:
        request = lm.nearest_words_request(**request_arguments(locals()))
        return lm.nearest_result(await self._unary(self._stub.NearestWords, request, timeout), request)
