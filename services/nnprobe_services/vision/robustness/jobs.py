"""Robustness evaluations as durable jobs on the shared lease queue (``sequence.jobs``: SQLite or
PostgreSQL, claims, leases, takeovers; it knows nothing of what a job computes).

A job's row holds its request (``config``), ``step``/``total_steps`` as units of work done/in all, and its
state; the ``EvaluationState`` after every unit is written atomically to ``<data_dir>/robustness/<job
id>/state.json`` and recorded as a ``progress`` event, so a cancelled, handed-over or taken-over job
continues from it with the same per-image results. Jobs run on the device ``robustness`` (one at a time per
replica); language-model replicas, which claim ``cpu``/``cuda`` jobs, never claim them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnprobe_services.errors import FailedPrecondition, NotFound, ResourceExhausted
from nnprobe_services.files import atomic_write, remove_partial_writes
from nnprobe_services.sequence.jobs.records import (
    CANCELLED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    Claim,
    JobRecord,
    LeaseLost,
)
from nnprobe_services.sequence.jobs.replica import Leases, RunningJob
from nnprobe_services.sequence.jobs.replica_jobs import ReplicaJobs
from nnprobe_services.sequence.jobs.store import JobStore

log = logging.getLogger("nnprobe.vision.robustness")

#: The job device of robustness jobs: LM replicas (cpu, cuda...) never claim them.
DEVICE = "robustness"
#: How long CancelRobustnessJob waits for a running job to stop.
CANCEL_WAIT_SECONDS = 60.0


class RobustnessJobs(ReplicaJobs):
    """The job store, this replica's supervisor thread and its runner threads. ``run(jobs, claim,
    running)`` evaluates a claimed job (``running.run_claimed``)."""

    def __init__(
        self,
        data_dir: Path,
        run: Callable[[RobustnessJobs, Claim, RunningJob], None],
        *,
        leases: Leases,
        database_url: str | None = None,
        max_queued: int = 16,
    ) -> None:
        self.root = data_dir / "robustness"
        self.max_queued = max_queued
        super().__init__(
            JobStore(database_url or f"sqlite:///{data_dir / 'robustness.sqlite3'}"),
            leases,
            lambda claim, job: run(self, claim, job),
            [DEVICE],
        )
        remove_partial_writes(self.root, older_than=time.time() - leases.lease_seconds)
        if self.begin_claiming():
            log.warning("replica %s restarted: its robustness jobs will be taken over", self.replica_id)

    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / job_id / "state.json"

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id) if job_id else None
        if job is None:
            raise NotFound(f"unknown robustness job {job_id!r}", field="job_id")
        return job

    def start(self, config: dict[str, Any], name: str, dataset: str, images: int, units: int) -> JobRecord:
        """Queue a job for the request ``config`` (``EvaluationRequest.to_dict``). ``ResourceExhausted``
        when ``max_queued`` jobs wait already."""
        now = time.time()
        job = JobRecord(
            job_id="rob-" + uuid.uuid4().hex[:12],
            name=name,
            corpus_id=dataset,
            corpus_name=config["model"],
            state=QUEUED,
            config={**config, "images": images},
            device=DEVICE,
            created_at=now,
            updated_at=now,
            total_steps=units,
            queued_at=now,
        )
        self.store.insert(job, max_queued=self.max_queued)
        self.add_event(job.job_id, "state", {"state": QUEUED, "message": "queued"})
        self.supervisor.wake.set()
        return self.get(job.job_id)

    def request_cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or ask the owner of a running one (any replica) to stop it; True
        when it is running and still has to stop. ``FailedPrecondition`` when it is neither."""
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
        if running is not None:
            running.cancel = True
            running.stop.set()
        return True

    def resume(self, job_id: str) -> JobRecord:
        """Queue a cancelled or interrupted job again; it continues from its checkpoint."""
        job = self.get(job_id)
        if job.state not in (INTERRUPTED, CANCELLED):
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; only interrupted or cancelled jobs can be resumed",
                field="job_id",
            )
        if self.store.count_by_state().get(QUEUED, 0) >= self.max_queued:
            raise ResourceExhausted(f"{self.max_queued} jobs are already queued", field="job_id")
        done = self.units_done(job_id)
        resumed = self.store.supersede_events(
            job_id,
            job.last_sequence,
            expect={"state": job.state, "attempt": job.attempt},
            state=QUEUED,
            step=done,
            error="",
            owner="",
            takeovers=0,
            cancel_requested=False,
            queued_at=time.time(),
        )
        if not resumed:
            raise FailedPrecondition(f"job {job_id} changed while being resumed; try again", field="job_id")
        message = f"resumed from its checkpoint ({done} of {job.total_steps} units done)"
        self.add_event(job_id, "state", {"state": QUEUED, "message": message, "step": done})
        self.supervisor.wake.set()
        return self.get(job_id)

    # -- checkpoints and events ---------------------------------------------------------------------
    def checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The job's saved ``EvaluationState`` as a dict, None before its first unit."""
        path = self.checkpoint_path(job_id)
        return json.loads(path.read_bytes()) if path.is_file() else None

    def units_done(self, job_id: str) -> int:
        state = self.checkpoint(job_id)
        return 0 if state is None else units_done(state)

    def save_checkpoint(self, job_id: str, running: RunningJob, state: dict[str, Any]) -> int:
        """Write ``state`` atomically and record a progress event; ``LeaseLost`` (nothing written) when
        another replica owns the job now. Returns the units done."""
        job = self.get(job_id)
        if running.lost or (job.owner, job.attempt) != (self.replica_id, running.attempt):
            raise LeaseLost(job_id)
        atomic_write(self.checkpoint_path(job_id), json.dumps(state).encode())
        done = units_done(state)
        epsilon = _last_epsilon(state)
        payload = {"units_done": done, "units_total": job.total_steps, "epsilon": epsilon}
        self.add_event(job_id, "progress", payload, step=done)
        return done


def units_done(state: dict[str, Any]) -> int:
    """Units (ε × batch) of ``state`` (an ``EvaluationState`` dict) whose images all have a status."""
    records, size = state["records"], state["batch_size"]
    return sum(
        all(r["status"][k] is not None for r in records[start : start + size])
        for k in range(len(state["epsilons"]))
        for start in range(0, len(records), size)
    )


def _last_epsilon(state: dict[str, Any]) -> float:
    done = [
        eps
        for k, eps in enumerate(state["epsilons"])
        if any(r["status"][k] is not None for r in state["records"])
    ]
    return done[-1] if done else 0.0
