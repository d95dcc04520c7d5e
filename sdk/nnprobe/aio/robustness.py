"""The robustness methods of ``nnprobe.aio.VisionClient`` and ``AsyncRobustnessJobHandle``: the asyncio twins
of ``nnprobe.vision.robustness_jobs`` (the same requests, results and progress bar, over ``await``)."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT
from nnprobe.api.vision.v1 import robustness_pb2 as pb
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.progress_bar import ProgressBar
from nnprobe.vision.robustness import (
    TERMINAL,
    DatasetInfo,
    Endpoint,
    RobustnessEvent,
    RobustnessJob,
    RobustnessResult,
    _event,
    _job,
    dataset_messages,
    evaluation_request,
    state_values,
)
from nnprobe.vision.robustness_jobs import Timeout


class AsyncRobustnessJobHandle:
    """A robustness job by id on the server of an ``nnprobe.aio.VisionClient``; the methods of
    ``RobustnessJobHandle``, as coroutines."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    async def status(self) -> RobustnessJob:
        """The job now, with its result once it succeeded (``nnprobe.NotFound`` for an unknown id)."""
        return await self.client.get_robustness_job(self.job_id)

    async def watch(
        self,
        *,
        progress: bool = True,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> RobustnessJob:
        """Follow the job until it stops (a bar of units of work unless ``progress=False``); the job then."""
        job = await self.status()
        with ProgressBar(
            progress and job.state not in TERMINAL,
            description=f"robustness {job.name or self.job_id}",
            unit="units",
            total=job.units_total,
            initial=job.units_done,
        ) as bar:
            report = bar.wrap(on_progress)
            async for event in self.client.watch_robustness_job(self.job_id, timeout=timeout):
                message = f"ε={event.epsilon:.4g}" if event.epsilon else event.message
                report(Progress(event.job.units_done, event.job.units_total, "units", message, event))
        return await self.status()

    async def result(self, *, timeout: float | None = None) -> RobustnessResult:
        """Wait, silently, until the job stops; its result (``RuntimeError`` when it did not succeed)."""
        job = await self.watch(progress=False, timeout=timeout)
        if job.result is None:
            raise RuntimeError(f"robustness job {self.job_id} ended {job.state}: {job.error or 'no result'}")
        return job.result

    async def cancel(self) -> RobustnessJob:
        return await self.client.cancel_robustness_job(self.job_id)

    async def resume(self) -> RobustnessJob:
        return await self.client.resume_robustness_job(self.job_id)

    def __repr__(self) -> str:
        return f"AsyncRobustnessJobHandle(job_id={self.job_id!r})"

    def _repr_html_(self) -> str:
        return f"<code>AsyncRobustnessJobHandle(job_id={html.escape(repr(self.job_id))})</code>"


class AsyncRobustnessMethods:
    """The robustness methods of ``nnprobe.aio.VisionClient`` (see ``nnprobe.VisionClient``'s)."""

    _stub: Any
    _unary: Any
    _stream: Any

    async def upload_dataset(
        self,
        name: str,
        images: Iterable[Any] = (),
        labels: Sequence[str] = (),
        *,
        server_folder: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> DatasetInfo:
        images, labels = list(images), list(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        messages = dataset_messages(name, images, labels, server_folder)
        reply = await self._unary(self._stub.UploadDataset, messages, timeout)
        return DatasetInfo(reply.name, int(reply.images), list(reply.labels), int(reply.bytes))

    async def evaluate_robustness(
        self,
        model: str | None,
        dataset: str,
        *,
        eps: Sequence[float | str],
        norm: str = "linf",
        attacks: str | Sequence[str] = "standard",
        seed: int = 0,
        max_queries: int = 0,
        bisection: bool = False,
        steps: int = 0,
        batch_size: int = 0,
        model_version: int = 0,
        name: str = "",
        endpoint: Endpoint | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> AsyncRobustnessJobHandle:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "timeout")}
        reply = await self._unary(self._stub.EvaluateRobustness, evaluation_request(**arguments), timeout)
        return AsyncRobustnessJobHandle(self, reply.job.job_id)

    def robustness_job(self, job_id: str) -> AsyncRobustnessJobHandle:
        return AsyncRobustnessJobHandle(self, job_id)

    async def get_robustness_job(
        self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> RobustnessJob:
        request = pb.GetRobustnessJobRequest(job_id=job_id)
        reply = await self._unary(self._stub.GetRobustnessJob, request, timeout)
        return _job(reply.job, reply.result if reply.HasField("result") else None)

    async def list_robustness_jobs(
        self, *, states: Sequence[str] = (), limit: int = 0, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> list[RobustnessJob]:
        request = pb.ListRobustnessJobsRequest(states=state_values(states), limit=limit)
        return [
            _job(job) for job in (await self._unary(self._stub.ListRobustnessJobs, request, timeout)).jobs
        ]

    async def watch_robustness_job(
        self, job_id: str, *, after_sequence: int = 0, timeout: Timeout = None
    ) -> AsyncIterator[RobustnessEvent]:
        request = pb.WatchRobustnessJobRequest(job_id=job_id, after_sequence=after_sequence)
        async for message in self._stream(self._stub.WatchRobustnessJob, request, timeout):
            yield _event(message)

    async def cancel_robustness_job(
        self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> RobustnessJob:
        request = pb.CancelRobustnessJobRequest(job_id=job_id)
        return _job((await self._unary(self._stub.CancelRobustnessJob, request, timeout)).job)

    async def resume_robustness_job(
        self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> RobustnessJob:
        request = pb.ResumeRobustnessJobRequest(job_id=job_id)
        return _job((await self._unary(self._stub.ResumeRobustnessJob, request, timeout)).job)
