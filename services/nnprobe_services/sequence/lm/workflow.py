"""The language model's job and corpus RPCs as plain calls: open this replica's job manager, start a training
job (a retry with the same ``request_id`` gets the job the first call created), list jobs, read one with its
history and training curves, and each job as the client sees it: its record and its place in the queue.
Model queries on a trained job (perplexity, sampling, embeddings) are plain calls of ``queries``.

Job-store reads are short; a servicer calls them with ``asyncio.to_thread``, or in its compute pool where
they compute (reading a corpus or checkpoint, rendering a plot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch

from nnprobe_services.errors import Unavailable
from nnprobe_services.sequence.jobs.replica import Leases, default_replica_id
from nnprobe_services.sequence.jobs.store import ACTIVE, EventRecord, JobRecord
from nnprobe_services.sequence.jobs.watch import JobChanges, follow, until_stopped
from nnprobe_services.sequence.lm import plots, supervisor, training_checks, training_logs
from nnprobe_services.sequence.lm.corpus import CorpusStore
from nnprobe_services.sequence.lm.training_jobs import CANCEL_WAIT_SECONDS, JobManager
from nnprobe_services.server.config import ServerConfig

#: Events read from the store at once when a job's whole history is asked for.
HISTORY_BATCH = 10_000


@dataclass(frozen=True)
class TrainingRequest:
    """A StartTraining request: the client's idempotency key (''), the corpus, the job's name, the config
    fields the client set, and the digest that tells a retry from another request under the same key."""

    request_id: str
    corpus_id: str
    name: str
    given: dict[str, Any]
    digest: str


@dataclass(frozen=True)
class JobView:
    """A job as a client sees it: its record and its place in the queue (-1 unless queued)."""

    record: JobRecord
    queue_position: int


@dataclass(frozen=True)
class JobDetail:
    """A job with its event history (empty unless asked for) and training curves (empty unless asked for)."""

    view: JobView
    events: list[EventRecord]
    plot_png: bytes


def open_jobs(config: ServerConfig, corpora: CorpusStore, device: torch.device) -> JobManager:
    """This replica's job manager on the configured store, running data-parallel jobs with
    ``supervisor.run_job``; its supervisor starts claiming jobs at once."""
    return JobManager(
        config.common.data_dir,
        corpora,
        device,
        max_queued=config.sequence.max_queued_jobs,
        runner=supervisor.run_job,
        database_url=config.sequence.database_url,
        leases=Leases(
            config.sequence.replica_id or default_replica_id(),
            config.sequence.job_lease_seconds,
            config.sequence.job_poll_seconds,
            config.sequence.max_job_takeovers,
        ),
    )


def view(jobs: JobManager, record: JobRecord) -> JobView:
    return JobView(record, jobs.queue_position(record))


def job_view(jobs: JobManager, job_id: str) -> JobView:
    """The job (NotFound for an unknown one) and its place in the queue."""
    return view(jobs, jobs.get(job_id))


def is_active(jobs: JobManager, job_id: str) -> bool:
    """Whether the job is still queued or running."""
    return jobs.get(job_id).state in ACTIVE


def start_training(
    jobs: JobManager, corpora: CorpusStore, request: TrainingRequest, limit: int, device: torch.device
) -> JobView:
    """Queue a training job, or return the one this request's ``request_id`` already started (even if the
    limits changed since). The config is completed and checked against the corpus, ``limit``
    (``max_tensor_elements``) and the device first."""
    held = jobs.started(request.request_id, request.digest)
    if held is None:
        corpus = corpora.get(request.corpus_id)
        config, job_device = training_checks.training_config(
            request.given, corpus, limit=limit, device=device
        )
        held = jobs.start(
            request.corpus_id,
            config,
            request.name,
            job_device,
            request_id=request.request_id,
            request_digest=request.digest,
        )
    return view(jobs, held)


def list_jobs(jobs: JobManager, states: list[str], limit: int) -> list[JobView]:
    """At most ``limit`` jobs in ``states`` (every state when empty)."""
    return [view(jobs, job) for job in jobs.store.jobs(states, limit)]


def get_job(jobs: JobManager, job_id: str, history: bool, plot: bool) -> JobDetail:
    """The job; with ``history`` its every event, with ``plot`` its training curves as a PNG."""
    job = jobs.get(job_id)
    found = view(jobs, job)
    if not (history or plot):
        return JobDetail(found, [], b"")
    events = job_history(jobs, job.job_id)
    picture = b""
    if plot:
        title = f"{job.job_id} on {job.corpus_id} ({job.state}, step {job.step}/{job.total_steps})"
        picture = plots.training_curves(events, title)
    return JobDetail(found, events if history else [], picture)


def training_log_files(jobs: JobManager, job_id: str, max_message_bytes: int) -> list[tuple[str, bytes]]:
    """The job's TensorBoard event files (base name, bytes), in reading order. Raises ``NotFound`` (field
    ``job_id``) for an unknown job, ``ResourceExhausted`` when they exceed ``max_message_bytes`` less 64 KiB
    (the reply's framing)."""
    job = jobs.get(job_id)
    return training_logs.read_files(jobs.training_logs.folder(job.job_id), max_message_bytes - 65_536)


def job_history(jobs: JobManager, job_id: str) -> list[EventRecord]:
    """Every event of the job, in order."""
    events: list[EventRecord] = []
    while True:
        batch = jobs.store.events(job_id, events[-1].sequence if events else 0, limit=HISTORY_BATCH)
        events.extend(batch)
        if len(batch) < HISTORY_BATCH:
            return events


async def watch(
    jobs: JobManager, changes: JobChanges, job_id: str, after: int, drained: asyncio.Event
) -> AsyncIterator[EventRecord]:
    """The job's events after sequence ``after``, then live ones until the job stops (no thread held while
    idle). When this replica drains while the job goes on elsewhere, the stream ends with ``Unavailable``
    naming the cursor to watch again with (``after_sequence``)."""
    cursor = after
    async for event in follow(jobs, changes, job_id, after, until=drained.is_set):
        cursor = event.sequence
        yield event
    if drained.is_set() and await asyncio.to_thread(is_active, jobs, job_id):
        raise Unavailable(
            f"this replica is shutting down and job {job_id} goes on elsewhere; watch again "
            f"with after_sequence={cursor}"
        )


async def cancel(jobs: JobManager, changes: JobChanges, job_id: str) -> JobView:
    """Ask the job to stop and wait (at most ``CANCEL_WAIT_SECONDS``) until it has; the job as it is then."""
    if await asyncio.to_thread(jobs.request_cancel, job_id):
        await until_stopped(jobs, changes, job_id, CANCEL_WAIT_SECONDS)
    return await asyncio.to_thread(job_view, jobs, job_id)


def resume(jobs: JobManager, job_id: str) -> JobView:
    """Queue an interrupted, failed or cancelled job again from its last checkpoint (reads the checkpoint:
    run it in the compute pool)."""
    return view(jobs, jobs.resume(job_id))
