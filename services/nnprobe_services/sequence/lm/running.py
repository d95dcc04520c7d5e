"""Running a claimed training job on this replica: take it over from a replica whose lease expired (from its
checkpoint), train it on its device, or with data-parallel workers through the manager's ``runner``, and
record how it ended: SUCCEEDED, CANCELLED, FAILED, or handed back to the shared queue when this replica
stops. ``local_devices`` names the devices this process can run jobs on."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import torch

from nnprobe_services.sequence.jobs.replica import RunningJob
from nnprobe_services.sequence.jobs.store import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Claim,
    JobRecord,
    LeaseLost,
)
from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.best import stop_reason
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Trainer

if TYPE_CHECKING:
    from nnprobe_services.sequence.lm.training_jobs import JobManager

log = logging.getLogger("nnprobe.sequence.lm")


def local_devices() -> list[str]:
    """The job device names this process can run: ``cpu`` and each visible GPU."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return names


def run_claimed(manager: JobManager, claim: Claim, running: RunningJob) -> None:
    """Run a job the supervisor claimed for this replica, to its end or until this replica stops it; record
    the outcome. Every event is fenced by the claim's lease: when another replica owns the job now, stop."""
    job = claim.job
    job_id = job.job_id
    try:
        if claim.takeover:
            sequence, rewound = manager.checkpoint_state(job_id)
            step = rewound["step"]
            if not manager.store.supersede_events(job_id, sequence, expect=manager.fence(running), **rewound):
                raise LeaseLost(job_id)
            message = (
                f"taken over by replica {manager.replica_id} from {claim.previous_owner}, whose lease "
                f"expired; resuming from step {step}"
            )
            manager.add_event(job_id, "state", {"state": RUNNING, "message": message, "step": step})
            log.warning("job %s: %s", job_id, message)
        manager.training_logs.open(job_id, job.config, manager.get(job_id).step)
        message = f"running on {job.device} (replica {manager.replica_id})"
        manager.add_event(job_id, "state", {"state": RUNNING, "message": message})
        finished = False if running.cancel else _train(manager, manager.get(job_id), running)
        if running.lost:
            raise LeaseLost(job_id)
        release = {"owner": "", "lease_expires_at": 0.0, "cancel_requested": False}
        if finished:
            reason = _stop_reason(manager.get(job_id))
            succeeded = {"state": SUCCEEDED, "message": reason}
            manager.add_event(job_id, "state", succeeded, state=SUCCEEDED, stop_reason=reason, **release)
        elif running.cancel:
            cancelled = {"state": CANCELLED, "message": "cancelled"}
            manager.add_event(job_id, "state", cancelled, state=CANCELLED, **release)
        else:
            _hand_over(manager, job_id, running)
    except LeaseLost:
        log.warning("job %s: another replica owns it now; this replica stopped running it", job_id)
    except Exception as error:  # recorded on the job; the server keeps running
        manager.record_failure(job_id, error)
    finally:
        manager.training_logs.close(job_id)
        manager.supervisor.finished(job_id)


def _hand_over(manager: JobManager, job_id: str, running: RunningJob) -> None:
    """Give a job this replica stopped for its shutdown back to the shared queue (``JobStore.release``)
    from its checkpoint: the events past the checkpoint leave the history (the next run records them
    again), and a state event says who handed it over at which step."""
    sequence, rewound = manager.checkpoint_state(job_id)
    step = rewound["step"]
    message = (
        f"handed over by replica {manager.replica_id} at step {step}: the replica stopped (shutdown); "
        f"queued again, the job resumes from its checkpoint at step {step} on the replica that claims it"
    )
    payload = {"state": QUEUED, "message": message, "step": step}
    if (
        manager.store.release(job_id, manager.replica_id, running.attempt, sequence, payload, **rewound)
        is None
    ):
        raise LeaseLost(job_id)
    log.info("job %s: %s", job_id, message)
    manager.notify(job_id)


def _stop_reason(job: JobRecord) -> str:
    """Why a job that finished stopped, from its row (its step is its final checkpoint's)."""
    patience = TrainingConfig.from_dict(job.config).patience
    return stop_reason(job.step, job.total_steps, patience, job.best_step, job.best_valid_perplexity)


def _train(manager: JobManager, job: JobRecord, running: RunningJob) -> bool:
    """Train the job from its checkpoint (if any) until it finishes (True) or its stop flag is set; a
    stopped job writes a checkpoint unless its lease was lost."""
    config = TrainingConfig.from_dict(job.config)
    corpus = manager.corpora.get(job.corpus_id)
    path = manager.checkpoint_path(job.job_id)
    payload = checkpoints.load(path) if path.is_file() else None
    splits = {name: split.ids for name, split in corpus.splits.items()}
    stop = running.stop
    if manager.runner is not None and config.workers > 1:
        return manager.runner(manager, job, config, splits, corpus.words, payload, stop)
    samples = functools.partial(manager.training_logs.writing, job.job_id)  # no log, no sample
    trainer = Trainer(config, corpus.words, splits, torch.device(job.device), payload, samples=samples)
    finished = trainer.run(
        lambda event: manager.record(job.job_id, event),
        should_stop=stop.is_set,
        on_checkpoint=lambda t: manager.save_checkpoint(job.job_id, t.checkpoint()),
    )
    if not finished and stop.is_set() and not running.lost:
        manager.save_checkpoint(job.job_id, trainer.checkpoint())
    return finished
