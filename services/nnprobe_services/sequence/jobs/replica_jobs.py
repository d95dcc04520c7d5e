"""One replica's side of the shared job queue, whatever its jobs compute: the store, the supervisor thread
that claims jobs of the replica's devices and runs them, events appended only while the replica still holds
a job's lease (fenced by owner, claim number and state), the listeners told of each event (watch streams),
and a graceful shutdown. Language-model training and robustness evaluation both build on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from nnprobe_services.sequence.jobs.records import FAILED, RUNNING, LeaseLost
from nnprobe_services.sequence.jobs.replica import Leases, RunningJob, Supervisor
from nnprobe_services.sequence.jobs.store import Claim, JobStore

log = logging.getLogger("nnprobe.sequence.jobs")


class ReplicaJobs:
    """``run(claim, running)`` runs a job this replica claimed, on one of ``devices``. Subclasses set up
    what their jobs need, then call ``begin_claiming()``."""

    #: Seconds ``close`` gives running jobs to stop and save their checkpoint.
    close_wait_seconds = 60.0

    def __init__(
        self,
        store: JobStore,
        leases: Leases,
        run: Callable[[Claim, RunningJob], None],
        devices: list[str],
    ) -> None:
        self.store = store
        self.leases = leases
        self.replica_id = leases.replica_id
        self._listeners_lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self.supervisor = Supervisor(store, leases, run, devices)

    def begin_claiming(self) -> int:
        """Mark the jobs an earlier process of this replica left running for takeover, then start claiming.
        Returns how many were marked."""
        expired = self.store.expire_leases(self.replica_id)
        self.supervisor.start()
        return expired

    def shutdown(self, grace: float) -> list[str]:
        """Stop this replica within ``grace`` seconds: claim nothing more; running jobs stop at their next
        step boundary, save their checkpoint and go back to the shared queue for any replica to continue;
        queued jobs stay queued. Returns the ids of jobs still running when ``grace`` ran out (their leases
        expire and another replica takes them over)."""
        deadline = time.monotonic() + grace
        return self.supervisor.close(deadline - min(1.0, grace / 4), deadline)

    def close(self) -> None:
        """``shutdown`` within ``close_wait_seconds``, then release the store."""
        self.shutdown(self.close_wait_seconds)
        self.store.close()

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after every event this replica records from now on (from the recording
        thread; it must be quick and must not block)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def fence(self, running: RunningJob) -> dict[str, Any]:
        """What the job's row must hold while ``running`` (this replica's claim) still owns it."""
        return {"owner": self.replica_id, "attempt": running.attempt, "state": RUNNING}

    def add_event(self, job_id: str, kind: str, payload: dict[str, Any], **changes: Any) -> int:
        """Append an event (and ``changes`` to the job's row); for a job this replica runs, only while it
        still holds the lease, else ``LeaseLost`` and nothing is written. Returns the event's sequence."""
        running = self.supervisor.get(job_id)
        expect = self.fence(running) if running is not None else None
        sequence = self.store.add_event(job_id, kind, payload, expect=expect, **changes)
        if sequence is None:
            raise LeaseLost(job_id)
        self.notify(job_id)
        return sequence

    def record_failure(self, job_id: str, error: Exception) -> None:
        """Record that ``job_id`` failed with ``error`` (logged with its traceback; the server keeps running):
        a ``failed`` state event naming the error's type and text, unless another replica owns it now."""
        log.exception("job %s failed", job_id, exc_info=error)
        message = f"{type(error).__name__}: {error}"
        try:
            self.add_event(
                job_id, "state", {"state": FAILED, "message": message}, state=FAILED, error=message, owner=""
            )
        except LeaseLost:
            log.warning("job %s: failed after another replica took it over", job_id)

    def notify(self, job_id: str) -> None:
        """Tell every listener that ``job_id`` has a new event; a failing listener never fails the job."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job_id)
            except Exception:
                log.exception("job listener failed")
