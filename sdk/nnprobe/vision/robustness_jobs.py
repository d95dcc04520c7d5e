"""``VisionClient`` methods of the robustness evaluation (``upload_dataset``, ``evaluate_robustness`` and
the job methods) and ``RobustnessJobHandle``, a job by id that outlives the kernel that started it."""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
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

Timeout = float | UseClientDefault | None


class RobustnessJobHandle:
    """A robustness job by id on the server of ``client``; no RPC until a method is called."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def status(self) -> RobustnessJob:
        """The job now, with its result once it succeeded. ``NnprobeError`` NOT_FOUND for an unknown id."""
        return self.client.get_robustness_job(self.job_id)

    def watch(
        self,
        *,
        progress: bool = True,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> RobustnessJob:
        """Follow the job until it stops, with a bar of units of work (``progress=False``: none);
        ``on_progress`` gets a ``nnprobe.Progress`` (unit ``units``, ``detail`` the ``RobustnessEvent``)
        per event. Returns the job as it ended (with its result when it succeeded)."""
        job = self.status()
        with ProgressBar(
            progress and job.state not in TERMINAL,
            description=f"robustness {job.name or self.job_id}",
            unit="units",
            total=job.units_total,
            initial=job.units_done,
        ) as bar:
            report = bar.wrap(on_progress)
            for event in self.client.watch_robustness_job(self.job_id, timeout=timeout):
                done, total = event.job.units_done, event.job.units_total
                message = f"ε={event.epsilon:.4g}" if event.epsilon else event.message
                report(Progress(done, total, "units", message, event))
        return self.status()

    def result(self, *, timeout: float | None = None) -> RobustnessResult:
        """Wait, silently, until the job stops; its result. ``RuntimeError`` when it did not succeed."""
        job = self.watch(progress=False, timeout=timeout)
        if job.result is None:
            raise RuntimeError(f"robustness job {self.job_id} ended {job.state}: {job.error or 'no result'}")
        return job.result

    def cancel(self) -> RobustnessJob:
        """Cancel the job (``cancel_robustness_job``); its checkpoint is kept."""
        return self.client.cancel_robustness_job(self.job_id)

    def resume(self) -> RobustnessJob:
        """Continue a cancelled or interrupted job from its checkpoint (``resume_robustness_job``)."""
        return self.client.resume_robustness_job(self.job_id)

    def __repr__(self) -> str:
        return f"RobustnessJobHandle(job_id={self.job_id!r})"

    def _repr_html_(self) -> str:
        return f"<code>RobustnessJobHandle(job_id={html.escape(repr(self.job_id))})</code>"


class RobustnessMethods:
    """The robustness methods of ``VisionClient``."""

    _stub: Any
    _unary: Any
    _stream: Any

    def upload_dataset(
        self,
        name: str,
        images: Iterable[Any] = (),
        labels: Sequence[str] = (),
        *,
        server_folder: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> DatasetInfo:
        """Store a labelled data set ``name`` on the server (replacing one of that name): ``images`` (PNG or
        JPEG bytes, file paths, or (H, W, 3) uint8 arrays) with one label each (a class name of the model,
        or a class index as text); or ``server_folder``, an ImageFolder-layout folder (``<class>/<file>``)
        under the server's datasets root. Raises ``NnprobeError`` INVALID_ARGUMENT / RESOURCE_EXHAUSTED
        naming the field; ``ValueError`` when images and labels differ in length."""
        images, labels = list(images), list(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        messages = dataset_messages(name, images, labels, server_folder)
        reply = self._unary(self._stub.UploadDataset, messages, timeout)
        return DatasetInfo(reply.name, int(reply.images), list(reply.labels), int(reply.bytes))

    def evaluate_robustness(
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
    ) -> RobustnessJobHandle:
        """Start a robustness evaluation of ``model`` on the uploaded ``dataset`` as a durable job: robust
        accuracy at each ε of ``eps`` (pixel units, increasing; ``"4/255"`` accepted) in ``norm`` (linf,
        l2) under ``attacks`` ("standard": APGD-CE, APGD-T, FAB-T, Square; "pgd"; or a list of names).
        ``max_queries``: Square's queries per image (0: 5000); ``steps``: iterations per gradient attack
        (0: defaults); ``bisection``: each broken image's smallest breaking ε. Returns a handle
        (``watch()``, ``result()``, ``cancel()``, ``resume()``). Raises ``NnprobeError``: INVALID_ARGUMENT
        naming the field, NOT_FOUND (model, dataset), FAILED_PRECONDITION (white-box attacks on a model
        without gradients: use ``attacks=["square"]``). ``endpoint`` (with ``model`` None): a model on a
        remote Open Inference Protocol server instead, ``"HOST:PORT/MODEL[/VERSION]"`` or ``(address,
        model[, version])``, evaluated with Square only; labels must be class indices. ``ValueError`` for
        a malformed ``endpoint``."""
        arguments = {k: v for k, v in locals().items() if k not in ("self", "timeout")}
        reply = self._unary(self._stub.EvaluateRobustness, evaluation_request(**arguments), timeout)
        return RobustnessJobHandle(self, reply.job.job_id)

    def robustness_job(self, job_id: str) -> RobustnessJobHandle:
        """A handle on an existing job (after a kernel restart, say); no RPC."""
        return RobustnessJobHandle(self, job_id)

    def get_robustness_job(self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> RobustnessJob:
        """The job, with its result once it succeeded. ``NnprobeError`` NOT_FOUND for an unknown id."""
        reply = self._unary(self._stub.GetRobustnessJob, pb.GetRobustnessJobRequest(job_id=job_id), timeout)
        return _job(reply.job, reply.result if reply.HasField("result") else None)

    def list_robustness_jobs(
        self, *, states: Sequence[str] = (), limit: int = 0, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> list[RobustnessJob]:
        """Jobs, newest first (``states``: only those; ``limit`` 0: 100)."""
        request = pb.ListRobustnessJobsRequest(states=state_values(states), limit=limit)
        return [_job(job) for job in self._unary(self._stub.ListRobustnessJobs, request, timeout).jobs]

    def watch_robustness_job(
        self, job_id: str, *, after_sequence: int = 0, timeout: Timeout = None
    ) -> Iterator[RobustnessEvent]:
        """The job's events from ``after_sequence`` until it stops (no deadline unless ``timeout``)."""
        request = pb.WatchRobustnessJobRequest(job_id=job_id, after_sequence=after_sequence)
        for message in self._stream(self._stub.WatchRobustnessJob, request, timeout):
            yield _event(message)

    def cancel_robustness_job(self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> RobustnessJob:
        """Cancel a queued or running job; returns it once stopped (its checkpoint is kept)."""
        request = pb.CancelRobustnessJobRequest(job_id=job_id)
        return _job(self._unary(self._stub.CancelRobustnessJob, request, timeout).job)

    def resume_robustness_job(self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> RobustnessJob:
        """Queue a cancelled or interrupted job again; it continues from its checkpoint."""
        request = pb.ResumeRobustnessJobRequest(job_id=job_id)
        return _job(self._unary(self._stub.ResumeRobustnessJob, request, timeout).job)
