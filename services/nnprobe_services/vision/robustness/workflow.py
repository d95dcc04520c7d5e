"""The robustness RPCs with plain inputs and outputs (no gRPC): start a job after checking its request
against the model and the data set, read a job with its result, follow, cancel and resume jobs.
``open_jobs`` builds this replica's job manager from the server's settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nnprobe_services.errors import Unavailable
from nnprobe_services.sequence.jobs.records import ACTIVE, EventRecord, JobRecord
from nnprobe_services.sequence.jobs.replica import Leases, default_replica_id
from nnprobe_services.sequence.jobs.watch import JobChanges, follow, until_stopped
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models.store import ModelStore
from nnprobe_services.vision.robustness import remote_inputs, running
from nnprobe_services.vision.robustness.datasets import DatasetStore
from nnprobe_services.vision.robustness.evaluate import masking_warnings
from nnprobe_services.vision.robustness.jobs import CANCEL_WAIT_SECONDS, RobustnessJobs
from nnprobe_services.vision.robustness.plot import accuracy_curve
from nnprobe_services.vision.robustness.requests import EvaluationRequest, checked
from nnprobe_services.vision.robustness.results import EvaluationState, RobustnessResult, summarise


@dataclass
class Robustness:
    """What the robustness RPCs need: the job manager, the model and data-set stores, the image limits."""

    jobs: RobustnessJobs
    models: ModelStore
    datasets: DatasetStore
    limits: decode.ImageLimits
    max_steps: int


def open_jobs(config, models: ModelStore, datasets: DatasetStore, limits: decode.ImageLimits) -> Robustness:
    """This replica's robustness jobs, in ``vision.robustness_database_url`` (default
    ``<data_dir>/robustness.sqlite3``), with the sequence section's replica id, lease and poll seconds."""
    sequence = config.sequence
    leases = Leases(
        sequence.replica_id or default_replica_id(),
        lease_seconds=sequence.job_lease_seconds,
        poll_seconds=sequence.job_poll_seconds,
    )

    def run(jobs, claim, job) -> None:
        running.run_claimed(jobs, models, datasets, limits, claim, job)

    jobs = RobustnessJobs(
        Path(config.common.data_dir),
        run,
        leases=leases,
        database_url=config.vision.robustness_database_url,
        max_queued=sequence.max_queued_jobs,
    )
    return Robustness(jobs, models, datasets, limits, config.vision.max_attack_steps)


def start(robustness: Robustness, request: EvaluationRequest, deadline: float | None = None) -> JobRecord:
    """Check the request (fields, model, data set, labels, gradients) and queue its job; run in the compute
    pool (loads the model and decodes the data set). A remote model's metadata is read within ``deadline``
    seconds (the request's remaining deadline; None: ``transfer.REMOTE_TIMEOUT_SECONDS``); an unreachable
    endpoint still gets its job, which fails with the UNAVAILABLE message if it stays unreachable."""
    request = checked(request, robustness.max_steps)
    if request.is_remote:
        count = remote_inputs.check(robustness.datasets, robustness.limits, request, deadline)
        class_names: list[str] = []
        shown = f"{request.remote_model}@{request.remote_address}"
    else:
        data = running.inputs(robustness.models, robustness.datasets, robustness.limits, request)
        count, class_names, shown = len(data.labels), list(data.model.labels), request.model
    units = running.units(count, len(request.epsilons), request.batch_size)
    config = {**request.to_dict(), "model": shown, "class_names": class_names}
    return robustness.jobs.start(config, request.name, request.dataset, count, units)


@dataclass
class JobResult:
    """A finished job's result, the data set's labels and the model's class names, and the plot."""

    result: RobustnessResult
    labels: list[str]
    class_names: list[str]
    plot_png: bytes


def result(robustness: Robustness, job: JobRecord) -> JobResult | None:
    """The result of a job that succeeded (None otherwise), from its final checkpoint."""
    if job.state != "succeeded":
        return None
    state = robustness.jobs.checkpoint(job.job_id)
    if state is None:
        return None
    summary = summarise(EvaluationState.from_dict(state))
    summary.warnings.extend(masking_warnings(summary.state))
    labels = robustness.datasets.load(job.corpus_id).labels
    title = f"{job.config['model']} on {job.corpus_id}"
    return JobResult(summary, labels, list(job.config.get("class_names", [])), accuracy_curve(summary, title))


def list_jobs(robustness: Robustness, states: list[str], limit: int) -> list[JobRecord]:
    return robustness.jobs.store.jobs(states, limit)


async def watch(
    robustness: Robustness, changes: JobChanges, job_id: str, after: int, drained: asyncio.Event
) -> AsyncIterator[EventRecord]:
    """The job's events after ``after``, then live ones until it stops; ``Unavailable`` (naming the
    cursor) when this replica drains while the job goes on elsewhere."""
    cursor = after
    async for event in follow(robustness.jobs, changes, job_id, after, until=drained.is_set):
        cursor = event.sequence
        yield event
    if drained.is_set() and (await asyncio.to_thread(robustness.jobs.get, job_id)).state in ACTIVE:
        raise Unavailable(
            f"this replica is shutting down and job {job_id} goes on elsewhere; watch again "
            f"with after_sequence={cursor}"
        )


async def cancel(robustness: Robustness, changes: JobChanges, job_id: str) -> JobRecord:
    """Ask the job to stop and wait (at most ``CANCEL_WAIT_SECONDS``) until it has."""
    if await asyncio.to_thread(robustness.jobs.request_cancel, job_id):
        await until_stopped(robustness.jobs, changes, job_id, CANCEL_WAIT_SECONDS)
    return await asyncio.to_thread(robustness.jobs.get, job_id)
