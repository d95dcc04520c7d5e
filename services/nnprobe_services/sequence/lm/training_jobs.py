"""Training jobs on a queue that every replica of the sequence server shares.

Lifecycle: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | INTERRUPTED. Each replica runs at most
one job per device. Its supervisor thread claims queued jobs for its free devices from the job store,
renews the lease of each job it runs (the heartbeat, which also reads cancel requests sent to any
replica), and takes over jobs whose owner's lease expired: the owner died (``kill -9``, a lost node), so
the job continues from its last checkpoint with the same data order and finishes with the same result as
an uninterrupted run. A replica that shuts down (``shutdown``) stops its running jobs at a step boundary,
checkpoints them and hands them back to the shared queue (QUEUED, claimable at once by any replica, this
one after a restart included), where they continue from that checkpoint exactly as a takeover does;
queued jobs stay in the queue. INTERRUPTED is left for jobs taken over too often (``max_takeovers``).
``resume`` queues an INTERRUPTED or CANCELLED job again.

``start`` is idempotent under a client's ``request_id``: a retry with the same key and the same request
(``request_digest``) gets the job the first call created, on any replica sharing the store.

Every event this replica records is announced to the listeners (``add_listener``), from the thread that
recorded it, so an event loop can wake its watchers; events other replicas record are seen by polling.

Running a claimed job (takeover, training, hand-over) is in ``running``. ``JobStop`` is re-exported here
for the runners.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.files import remove_partial_writes
from nnprobe_services.sequence.jobs.replica import JobStop, Leases, default_replica_id
from nnprobe_services.sequence.jobs.replica_jobs import ReplicaJobs
from nnprobe_services.sequence.jobs.store import (
    CANCELLED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStore,
    LeaseLost,
    redacted,
)
from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.corpus import CorpusStore
from nnprobe_services.sequence.lm.model import TrainingConfig, parameter_count
from nnprobe_services.sequence.lm.running import local_devices, run_claimed
from nnprobe_services.sequence.lm.training import Event, steps_per_epoch, total_steps
from nnprobe_services.sequence.lm.training_logs import TrainingLogs

log = logging.getLogger("nnprobe.sequence.lm")


def epoch_at(step: int, per_epoch: int) -> int:
    """The 1-based epoch of the step numbered ``step`` (0 before the first step), as ``Trainer.epoch_of``."""
    return (step - 1) // per_epoch + 1 if step > 0 and per_epoch > 0 else 0


#: How long CancelJob waits for a running job to reach a step boundary and save its checkpoint.
CANCEL_WAIT_SECONDS = 120.0
#: How often a watcher or waiter reads the store for events written by other replicas.
WATCH_POLL_SECONDS = 0.5


class JobManager(ReplicaJobs):
    """Language-model training jobs on the shared queue: the corpora, checkpoints, TensorBoard logs, and
    (from ``ReplicaJobs``) the store, this replica's supervisor and runner threads, fenced events."""

    close_wait_seconds = CANCEL_WAIT_SECONDS

    def __init__(
        self,
        data_dir: Path,
        corpora: CorpusStore,
        default_device: torch.device,
        *,
        max_queued: int,
        runner: Callable[..., bool] | None = None,
        database_url: str | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.root = data_dir / "jobs"
        self.corpora = corpora
        self.default_device = default_device
        self.max_queued = max_queued
        self.runner = runner
        self.training_logs = TrainingLogs(self.root)  # TensorBoard, written as events are recorded
        super().__init__(
            JobStore(database_url or f"sqlite:///{data_dir / 'jobs.sqlite3'}"),
            leases or Leases(default_replica_id()),
            lambda claim, job: run_claimed(self, claim, job),
            local_devices(),
        )
        log.info(
            "job store %s (schema version %d), replica %s",
            redacted(self.store.url),
            self.store.schema_versions[1],
            self.replica_id,
        )
        self._remove_partial_writes()
        expired = self.begin_claiming()
        if expired:
            log.warning(
                "replica %s restarted: its %d running job(s) will be taken over", self.replica_id, expired
            )

    # -- startup and shutdown ------------------------------------------------------------------------
    def _remove_partial_writes(self) -> None:
        """Delete the temporary files of checkpoint or corpus writes that a killed server left behind
        (older than one lease: another replica sharing the folder may be writing newer ones)."""
        older_than = time.time() - self.leases.lease_seconds
        for folder in (self.root, self.corpora.root):
            for path in remove_partial_writes(folder, older_than=older_than):
                log.warning("removed %s, the partial write of a server that stopped", path)

    def running(self) -> list[str]:
        """Ids of the jobs this replica runs now."""
        with self.supervisor.lock:
            return list(self.supervisor.running)

    # -- paths ---------------------------------------------------------------------------------------
    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / job_id / "checkpoint.pt"

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id) if job_id else None
        if job is None:
            raise NotFound(f"unknown job {job_id!r}", field="job_id")
        return job

    def queue_position(self, job: JobRecord) -> int:
        """Queued jobs for the same device ahead of ``job`` over all replicas; -1 unless it is queued."""
        return self.store.queue_position(job)

    # -- start, cancel, resume -----------------------------------------------------------------------
    def start(
        self,
        corpus_id: str,
        config: TrainingConfig,
        name: str,
        device: torch.device,
        *,
        request_id: str = "",
        request_digest: str = "",
    ) -> JobRecord:
        """Queue a new job; with a ``request_id`` (the client's idempotency key), return the job that key
        already names instead when there is one. ``request_digest`` identifies the request the key stands
        for; the same key with another digest raises ``InvalidArgument`` (field ``request_id``). Raises
        ``NotFound`` (corpus), ``ResourceExhausted`` (queue full)."""
        held = self.started(request_id, request_digest)
        if held is not None:
            return held
        corpus = self.corpora.get(corpus_id)
        per_epoch = steps_per_epoch(corpus.splits["train"].tokens, config.batch_size, config.sequence_length)
        from nnprobe_services.sequence.lm.model import LanguageModel

        with torch.device("meta"):
            parameters = parameter_count(LanguageModel(corpus.vocab_size, config))
        now = time.time()
        job = JobRecord(
            job_id="job-" + uuid.uuid4().hex[:12],
            name=name,
            corpus_id=corpus_id,
            corpus_name=corpus.name,
            state=QUEUED,
            config=config.to_dict(),
            device=str(device),
            created_at=now,
            updated_at=now,
            total_steps=total_steps(config, per_epoch),
            steps_per_epoch=per_epoch,
            vocab_size=corpus.vocab_size,
            parameters=parameters,
            queued_at=now,
            request_id=request_id,
            request_digest=request_digest,
        )
        held, created = self.store.insert(job, max_queued=self.max_queued)
        if not created:  # a concurrent call with the same key won
            return self._same_request(held, request_digest)
        self.add_event(job.job_id, "state", {"state": QUEUED, "message": "queued"})
        self.supervisor.wake.set()
        return self.get(job.job_id)

    def started(self, request_id: str, request_digest: str) -> JobRecord | None:
        """The job ``start`` already created under ``request_id`` ('' or unknown: None); ``InvalidArgument``
        (field ``request_id``) when that job was started by a request with another digest."""
        held = self.store.by_request_id(request_id) if request_id else None
        return None if held is None else self._same_request(held, request_digest)

    @staticmethod
    def _same_request(held: JobRecord, request_digest: str) -> JobRecord:
        if held.request_digest != request_digest:
            raise InvalidArgument(
                f"{held.request_id!r} already started job {held.job_id} with a different request "
                "(corpus_id, config or name); choose a new request_id for a new job",
                field="request_id",
            )
        return held

    def request_cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or ask the owner of a running one (on any replica) to stop it at a
        step boundary with a checkpoint. True when the job is running and still has to stop. Raises
        NotFound, or FailedPrecondition when the job is neither queued nor running."""
        self.get(job_id)
        found = self.store.request_cancel(job_id)
        if found == QUEUED:
            self.notify(job_id)
            return False
        if found != RUNNING:
            raise FailedPrecondition(
                f"job {job_id} is {found}; only queued or running jobs can be cancelled", field="job_id"
            )
        running = self.supervisor.get(job_id)
        if running is not None:  # this replica owns it: no need to wait for the heartbeat
            running.cancel = True
            running.stop.set()
        return True

    def cancel(self, job_id: str) -> JobRecord:
        """``request_cancel``, then wait (at most ``CANCEL_WAIT_SECONDS``) for a running job to stop."""
        if self.request_cancel(job_id):
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while self.get(job_id).state == RUNNING and time.monotonic() < deadline:
                time.sleep(self.leases.poll_seconds / 4)
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.state not in (INTERRUPTED, CANCELLED):
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; only interrupted or cancelled jobs can be resumed",
                field="job_id",
            )
        queued = self.store.count_by_state().get(QUEUED, 0)
        if queued >= self.max_queued:
            raise ResourceExhausted(
                f"{queued} jobs are already queued; the limit is {self.max_queued} (max_queued_jobs)",
                field="job_id",
            )
        sequence, rewound = self.checkpoint_state(job_id)
        step = rewound["step"]
        resumed = self.store.supersede_events(
            job_id,
            sequence,
            expect={"state": job.state, "attempt": job.attempt},
            state=QUEUED,
            **rewound,
            error="",
            owner="",
            takeovers=0,
            cancel_requested=False,
            queued_at=time.time(),
        )
        if not resumed:
            raise FailedPrecondition(f"job {job_id} changed while being resumed; try again", field="job_id")
        self.add_event(
            job_id, "state", {"state": QUEUED, "message": f"resumed from step {step}", "step": step}
        )
        self.supervisor.wake.set()
        return self.get(job_id)

    def checkpoint_state(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """The event sequence the job's checkpoint continues from, and the job row's progress columns as
        they were at that checkpoint (step, epoch, time spent, last and best evaluation), so that a job
        taken back to its checkpoint shows that checkpoint's step everywhere. (0, a fresh job's values)
        without a checkpoint."""
        path = self.checkpoint_path(job_id)
        payload = checkpoints.load(path) if path.is_file() else {}
        step = payload.get("step", 0)
        valid, test = payload.get("last_evaluation") or (0.0, 0.0)
        best = payload.get("best") or {}
        return payload.get("sequence", 0), {
            "step": step,
            "epoch": epoch_at(step, self.get(job_id).steps_per_epoch),
            "elapsed_seconds": payload.get("elapsed", 0.0),
            "valid_perplexity": valid,
            "test_perplexity": test,
            "best_step": best.get("step", -1),
            "best_valid_perplexity": best.get("valid_perplexity", 0.0),
        }

    # -- recording ----------------------------------------------------------------------------------
    def record(self, job_id: str, event: Event) -> None:
        """Store a training event, mirror it on the job row and add it to the job's TensorBoard log (an
        evaluation's text sample, when it has one, is kept in the stored event's payload as ``sample``)."""
        payload = dataclasses.asdict(event)
        kind = payload.pop("kind")
        if not payload["sample"]:
            del payload["sample"]  # only an evaluation with a text sample stores one
        changes: dict[str, Any] = {
            "step": event.step,
            "epoch": event.epoch,
            "elapsed_seconds": event.elapsed_seconds,
        }
        if kind == "step":
            changes.update(loss=event.loss, tokens_per_second=event.tokens_per_second)
        elif kind == "evaluation":
            changes.update(
                valid_perplexity=event.valid_perplexity,
                test_perplexity=event.test_perplexity,
                best_step=event.best_step,
                best_valid_perplexity=event.best_valid_perplexity,
            )
        self.add_event(job_id, kind, payload, **changes)
        self.training_logs.write(job_id, event)

    def save_checkpoint(self, job_id: str, payload: dict[str, Any]) -> None:
        """Write the checkpoint atomically, then record it (event + job row). Raises ``LeaseLost`` and
        writes nothing when another replica owns the job now."""
        job = self.get(job_id)
        running = self.supervisor.get(job_id)
        if running is None or running.lost or (job.owner, job.attempt) != (self.replica_id, running.attempt):
            raise LeaseLost(job_id)
        payload["sequence"] = job.last_sequence
        payload["corpus_id"] = job.corpus_id
        try:
            digest = checkpoints.save_last_and_best(self.checkpoint_path(job_id), payload)
        except checkpoints.WriteFailed as error:
            kept = (
                f"the checkpoint of step {job.checkpoint_step} is kept"
                if job.checkpoint_step >= 0
                else "no earlier checkpoint exists"
            )
            raise checkpoints.WriteFailed(
                error.errno, f"step {payload['step']}: {error.strerror}; {kept}"
            ) from error
        self.record_checkpoint(job_id, payload["step"], digest)

    def record_checkpoint(self, job_id: str, step: int, digest: str) -> None:
        """Record a checkpoint already written to ``checkpoint_path(job_id)`` (event + job row). The
        checkpoint's step is where training stands: the row's ``step`` and ``epoch`` become its own (a run
        may stop between two step events)."""
        epoch = epoch_at(step, self.get(job_id).steps_per_epoch)
        self.add_event(
            job_id,
            "checkpoint",
            {"step": step, "epoch": epoch, "sha256": digest},
            checkpoint_step=step,
            checkpoint_sha256=digest,
            step=step,
            epoch=epoch,
        )

    def add_event(self, job_id: str, kind: str, payload: dict[str, Any], **changes: Any) -> int:
        """Append an event; for a job this replica runs, only while it still holds the lease (else
        ``LeaseLost``). A state event without a ``step`` gets the job's step (after ``changes``), so the
        history's last event and the job agree on where training stands."""
        if kind == "state" and "step" not in payload:
            payload = {**payload, "step": changes.get("step", self.get(job_id).step)}
        return super().add_event(job_id, kind, payload, **changes)


__all__ = ["CANCEL_WAIT_SECONDS", "JobManager", "JobStop", "Leases"]
