"""This replica's part in the shared queue: a supervisor thread that claims queued jobs for its free
devices, renews the lease of each job it runs (the heartbeat, which also reads cancel requests sent to any
replica), and takes over jobs whose owner's lease expired."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nnprobe_services.sequence.jobs.store import Claim, JobStore

log = logging.getLogger("nnprobe.sequence.lm")


def default_replica_id() -> str:
    """``<host name>-<process id>``: unique among live replicas (a pod's host name is its own)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def device_slot(device: str) -> str:
    """The device a job occupies: ``cuda`` is ``cuda:0``."""
    return "cuda:0" if device == "cuda" else device


class JobStop(threading.Event):
    """The stop flag of a running job; ``deadline`` (a ``time.monotonic()`` value, or None) is when the work
    must have ended, for runners that have to force an end (data-parallel workers are killed then)."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline: float | None = None


@dataclass
class RunningJob:
    """A job this replica runs, under the lease of claim number ``attempt``."""

    slot: str
    attempt: int
    stop: JobStop = field(default_factory=JobStop)
    thread: threading.Thread | None = None
    cancel: bool = False
    lost: bool = False
    renewed_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Leases:
    """How this replica takes part in the shared queue."""

    #: This replica's name in the store (``owner`` of the jobs it runs).
    replica_id: str
    #: Seconds a claim or a renewal holds a job; another replica takes the job over after that.
    lease_seconds: float = 30.0
    #: Seconds between the supervisor's rounds (claims and lease renewals).
    poll_seconds: float = 1.0
    #: Takeovers after which a job is left INTERRUPTED instead of claimed again.
    max_takeovers: int = 3


class Supervisor:
    """Runs ``run(claim, job)`` in a new thread for each job it claims; ``running`` holds them. ``devices``:
    the job device names this replica can run (``cpu``, ``cuda``, ``cuda:0``...), given by whoever knows
    them (the queue itself knows nothing of devices)."""

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
        self.devices = list(devices)
        self.run = run
        self.lock = threading.Lock()
        self.running: dict[str, RunningJob] = {}
        self.wake = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="lm-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def get(self, job_id: str) -> RunningJob | None:
        with self.lock:
            return self.running.get(job_id)

    def finished(self, job_id: str) -> None:
        """The runner of ``job_id`` ended: its device is free."""
        with self.lock:
            self.running.pop(job_id, None)
        self.wake.set()

    def close(self, stop_by: float, deadline: float) -> list[str]:
        """Stop claiming; ask every running job to stop by ``stop_by`` and wait for them until ``deadline``
        (``time.monotonic()`` values). Returns the ids of jobs still running then."""
        self.closed.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            running = dict(self.running)
        for job in running.values():
            job.stop.deadline = stop_by
            job.stop.set()
        for job in running.values():
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
        return [job_id for job_id, job in running.items() if job.thread is not None and job.thread.is_alive()]

    def _supervise(self) -> None:
        while not self.closed.is_set():
            try:
                self._heartbeat()
                if not self.closed.is_set():
                    self._claim()
            except Exception:  # a database outage: the next round tries again
                log.exception("replica %s could not reach the job store", self.replica_id)
            self.wake.wait(self.leases.poll_seconds)
            self.wake.clear()

    def _heartbeat(self) -> None:
        """Renew the lease of every job running here; stop those cancelled elsewhere or lost."""
        with self.lock:
            running = dict(self.running)
        for job_id, job in running.items():
            try:
                requested = self.store.renew_lease(
                    job_id, self.replica_id, job.attempt, self.leases.lease_seconds
                )
            except Exception:
                if time.monotonic() - job.renewed_at > self.leases.lease_seconds:
                    log.warning("job %s: lease not renewed for a whole lease; stopping it", job_id)
                    job.lost = True
                    job.stop.set()
                raise
            job.renewed_at = time.monotonic()
            if requested is None:
                log.warning("job %s: lease lost (another replica took it over); stopping it", job_id)
                job.lost = True
                job.stop.set()
            elif requested and not job.cancel:
                job.cancel = True
                job.stop.set()

    def _claim(self) -> None:
        while True:
            with self.lock:
                busy = {job.slot for job in self.running.values()}
            free = [d for d in self.devices if device_slot(d) not in busy]
            claim = self.store.claim_next(
                self.replica_id, free, self.leases.lease_seconds, self.leases.max_takeovers
            )
            if claim is None:
                return
            job = claim.job
            running = RunningJob(device_slot(job.device), job.attempt, cancel=job.cancel_requested)
            thread = threading.Thread(target=self.run, args=(claim, running), name=f"lm-{job.job_id}")
            thread.daemon = True
            running.thread = thread
            with self.lock:
                self.running[job.job_id] = running
            thread.start()
