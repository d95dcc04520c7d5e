"""Training jobs: a durable queue per device, one running job per device, checkpoints, resume.

Lifecycle: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED. A server that shuts down (``shutdown``)
stops its running job at the next step boundary, checkpoints it and marks it INTERRUPTED, and marks its
queued jobs INTERRUPTED; one that was killed finds its jobs at the next start and marks them INTERRUPTED.
``resume`` queues an INTERRUPTED or CANCELLED job again and it continues from its last checkpoint with the
same data order.

Every recorded event is announced to the listeners (``add_listener``), from the thread that recorded it,
so an event loop can wake its watchers without polling.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnprobe_services.errors import FailedPrecondition, NotFound, ResourceExhausted
from nnprobe_services.files import remove_partial_writes
from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.corpus import CorpusStore
from nnprobe_services.sequence.lm.model import TrainingConfig, parameter_count
from nnprobe_services.sequence.lm.store import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    JobStore,
)
from nnprobe_services.sequence.lm.training import Event, Trainer, steps_per_epoch, total_steps

log = logging.getLogger("nnprobe.sequence.lm")

#: How long CancelJob waits for a running job to reach a step boundary and save its checkpoint.
CANCEL_WAIT_SECONDS = 120.0


class JobStop(threading.Event):
    """The stop flag of a running job; ``deadline`` (a ``time.monotonic()`` value, or None) is when the work
    must have ended, for runners that have to force an end (data-parallel workers are killed then)."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline: float | None = None


@dataclass
class _Running:
    device: str
    stop: JobStop
    thread: threading.Thread
    cancel: bool = False


class JobManager:
    """Owns the job database, the per-device queues and the runner threads."""

    def __init__(
        self,
        data_dir: Path,
        corpora: CorpusStore,
        default_device: torch.device,
        *,
        max_queued: int,
        runner: Callable[..., bool] | None = None,
    ) -> None:
        self.root = data_dir / "jobs"
        self.store = JobStore(data_dir / "jobs.sqlite3")
        self.corpora = corpora
        self.default_device = default_device
        self.max_queued = max_queued
        self.runner = runner
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._running: dict[str, _Running] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._closing = False
        self._remove_partial_writes()
        self._mark_interrupted()

    # -- startup -------------------------------------------------------------------------------------
    def _remove_partial_writes(self) -> None:
        """Delete the temporary files of checkpoint or corpus writes that a killed server left behind."""
        started = time.time()
        for folder in (self.root, self.corpora.root):
            for path in remove_partial_writes(folder, older_than=started):
                log.warning("removed %s, the partial write of a server that stopped", path)

    def _mark_interrupted(self) -> None:
        for job in self.store.jobs((QUEUED, RUNNING), limit=1_000_000):
            where = f"at step {job.checkpoint_step}" if job.checkpoint_step >= 0 else "none yet"
            message = f"the server stopped while the job was {job.state} (last checkpoint: {where})"
            self.store.add_event(
                job.job_id,
                "state",
                {"state": INTERRUPTED, "message": message, "step": job.step, "epoch": job.epoch},
                state=INTERRUPTED,
                error=message,
            )
            log.warning("job %s interrupted: %s", job.job_id, message)

    # -- paths ---------------------------------------------------------------------------------------
    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / job_id / "checkpoint.pt"

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id) if job_id else None
        if job is None:
            raise NotFound(f"unknown job {job_id!r}", field="job_id")
        return job

    def queue_position(self, job: JobRecord) -> int:
        with self._lock:
            queue = self._queues.get(job.device)
            if job.state != QUEUED or queue is None or job.job_id not in queue:
                return -1
            return list(queue).index(job.job_id)

    # -- start, cancel, resume -----------------------------------------------------------------------
    def start(self, corpus_id: str, config: TrainingConfig, name: str, device: torch.device) -> JobRecord:
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
            state=QUEUED,
            config=config.to_dict(),
            device=str(device),
            created_at=now,
            updated_at=now,
            total_steps=total_steps(config, per_epoch),
            steps_per_epoch=per_epoch,
            vocab_size=corpus.vocab_size,
            parameters=parameters,
        )
        with self._lock:
            self._check_queue_room()
            self.store.insert(job)
            self._queues[job.device].append(job.job_id)
        self._event(job.job_id, "state", {"state": QUEUED, "message": "queued"})
        self._dispatch(job.device)
        return self.get(job.job_id)

    def _check_queue_room(self) -> None:
        queued = sum(len(q) for q in self._queues.values())
        if queued >= self.max_queued:
            raise ResourceExhausted(
                f"{queued} jobs are already queued; the limit is {self.max_queued} (max_queued_jobs)",
                field="corpus_id",
            )

    def request_cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or ask a running one to stop at its next step boundary (it then
        saves a checkpoint and becomes CANCELLED). True when the job is running and still has to stop.
        Raises NotFound, or FailedPrecondition when the job is neither queued nor running."""
        job = self.get(job_id)
        with self._lock:
            running = self._running.get(job_id)
            if job.state == QUEUED and running is None:
                queue = self._queues.get(job.device)
                if queue is not None and job_id in queue:
                    queue.remove(job_id)
            elif running is not None:
                running.cancel = True
                running.stop.set()
            else:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state}; only queued or running jobs can be cancelled",
                    field="job_id",
                )
        if running is None:
            self._event(
                job_id, "state", {"state": CANCELLED, "message": "cancelled while queued"}, state=CANCELLED
            )
            return False
        return True

    def cancel(self, job_id: str) -> JobRecord:
        """``request_cancel``, then wait (at most ``CANCEL_WAIT_SECONDS``) for a running job to stop."""
        if self.request_cancel(job_id):
            with self._lock:
                running = self._running.get(job_id)
            if running is not None:
                running.thread.join(CANCEL_WAIT_SECONDS)
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.state not in (INTERRUPTED, CANCELLED):
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; only interrupted or cancelled jobs can be resumed",
                field="job_id",
            )
        path = self.checkpoint_path(job_id)
        with self._lock:
            self._check_queue_room()
            if path.is_file():
                payload = checkpoints.load(path)
                sequence, step = payload["sequence"], payload["step"]
            else:
                sequence, step = 0, 0
            self.store.truncate_events(job_id, sequence, state=QUEUED, step=step, error="")
            self._queues[job.device].append(job_id)
        self._event(job_id, "state", {"state": QUEUED, "message": f"resumed from step {step}", "step": step})
        self._dispatch(job.device)
        return self.get(job_id)

    # -- running -------------------------------------------------------------------------------------
    def _dispatch(self, device: str) -> None:
        with self._lock:
            if self._closing or any(running.device == device for running in self._running.values()):
                return
            queue = self._queues.get(device)
            if not queue:
                return
            job_id = queue.popleft()
            stop = JobStop()
            thread = threading.Thread(target=self._run, args=(job_id, stop), name=f"lm-{job_id}", daemon=True)
            self._running[job_id] = _Running(device, stop, thread)
        thread.start()

    def _run(self, job_id: str, stop: JobStop) -> None:
        job = self.get(job_id)
        try:
            self._event(
                job_id, "state", {"state": RUNNING, "message": f"running on {job.device}"}, state=RUNNING
            )
            finished = self._train(job, stop)
            with self._lock:
                cancelled = self._running[job_id].cancel
            if finished:
                self._event(job_id, "state", {"state": SUCCEEDED, "message": "finished"}, state=SUCCEEDED)
            elif cancelled:
                self._event(job_id, "state", {"state": CANCELLED, "message": "cancelled"}, state=CANCELLED)
            else:
                step = self.get(job_id).checkpoint_step
                message = f"the server stopped (shutdown); the job resumes from its checkpoint at step {step}"
                self._event(
                    job_id,
                    "state",
                    {"state": INTERRUPTED, "message": message, "step": step},
                    state=INTERRUPTED,
                    error=message,
                )
        except Exception as error:  # recorded on the job; the server keeps running
            log.exception("job %s failed", job_id)
            message = f"{type(error).__name__}: {error}"
            self._event(job_id, "state", {"state": FAILED, "message": message}, state=FAILED, error=message)
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            self._dispatch(job.device)

    def _train(self, job: JobRecord, stop: JobStop) -> bool:
        config = TrainingConfig.from_dict(job.config)
        corpus = self.corpora.get(job.corpus_id)
        path = self.checkpoint_path(job.job_id)
        payload = checkpoints.load(path) if path.is_file() else None
        splits = {name: split.ids for name, split in corpus.splits.items()}
        if self.runner is not None and config.workers > 1:
            return self.runner(self, job, config, splits, corpus.words, payload, stop)
        trainer = Trainer(config, corpus.words, splits, torch.device(job.device), payload)
        finished = trainer.run(
            lambda event: self.record(job.job_id, event),
            should_stop=stop.is_set,
            on_checkpoint=lambda t: self.save_checkpoint(job.job_id, t.checkpoint()),
        )
        if not finished and stop.is_set():
            self.save_checkpoint(job.job_id, trainer.checkpoint())
        return finished

    def record(self, job_id: str, event: Event) -> None:
        """Store a training event and mirror it on the job row."""
        payload = dataclasses.asdict(event)
        kind = payload.pop("kind")
        changes: dict[str, Any] = {
            "step": event.step,
            "epoch": event.epoch,
            "elapsed_seconds": event.elapsed_seconds,
        }
        if kind == "step":
            changes.update(loss=event.loss, tokens_per_second=event.tokens_per_second)
        elif kind == "evaluation":
            changes.update(valid_perplexity=event.valid_perplexity, test_perplexity=event.test_perplexity)
        self._event(job_id, kind, payload, **changes)

    def save_checkpoint(self, job_id: str, payload: dict[str, Any]) -> None:
        """Write the checkpoint atomically, then record it (event + job row)."""
        job = self.get(job_id)
        payload["sequence"] = job.last_sequence
        payload["corpus_id"] = job.corpus_id
        try:
            digest = checkpoints.save(self.checkpoint_path(job_id), payload)
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
        """Record a checkpoint already written to ``checkpoint_path(job_id)`` (event + job row)."""
        self._event(
            job_id,
            "checkpoint",
            {"step": step, "epoch": self.get(job_id).epoch, "sha256": digest},
            checkpoint_step=step,
            checkpoint_sha256=digest,
        )

    def _event(self, job_id: str, kind: str, payload: dict[str, Any], **changes: Any) -> int:
        sequence = self.store.add_event(job_id, kind, payload, **changes)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job_id)
            except Exception:  # a listener's failure must not fail the job
                log.exception("job listener failed")
        return sequence

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after every event recorded from now on (from the recording thread;
        it must be quick and must not block)."""
        with self._lock:
            self._listeners.append(listener)

    def running(self) -> list[str]:
        """Ids of the jobs running now."""
        with self._lock:
            return list(self._running)

    # -- shutdown ------------------------------------------------------------------------------------
    def shutdown(self, grace: float) -> list[str]:
        """Stop every job for a server shutdown, within ``grace`` seconds: queued jobs become INTERRUPTED
        at once; running ones stop at their next step boundary, write a checkpoint and become INTERRUPTED
        (resumable). No job starts afterwards. Returns the ids of jobs still running when ``grace`` ran out
        (their threads could not be joined)."""
        deadline = time.monotonic() + grace
        with self._lock:
            self._closing = True
            queued = [job_id for queue in self._queues.values() for job_id in queue]
            self._queues.clear()
            running = list(self._running.values())
            for job in running:
                job.stop.deadline = deadline - min(1.0, grace / 4)  # leave time to record the outcome
                job.stop.set()
        for job_id in queued:
            message = "the server stopped (shutdown) before the job started; resume it to queue it again"
            self._event(
                job_id, "state", {"state": INTERRUPTED, "message": message}, state=INTERRUPTED, error=message
            )
        for job in running:
            job.thread.join(max(0.0, deadline - time.monotonic()))
        return [job.thread.name.removeprefix("lm-") for job in running if job.thread.is_alive()]
