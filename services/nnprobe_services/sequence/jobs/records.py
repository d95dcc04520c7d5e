"""The job store's records: job states, a job row, an event, a claim."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = (QUEUED, RUNNING)


class LeaseLost(Exception):
    """The job is no longer this replica's (its lease expired and another replica claimed it)."""


@dataclass
class JobRecord:
    """One row of ``jobs``; ``config`` is the TrainingConfig as a dict, times are Unix seconds."""

    job_id: str
    name: str
    corpus_id: str
    state: str
    config: dict[str, Any]
    device: str
    created_at: float
    updated_at: float
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch: int = 0
    loss: float = 0.0
    valid_perplexity: float = 0.0
    test_perplexity: float = 0.0
    checkpoint_step: int = -1
    checkpoint_sha256: str = ""
    error: str = ""
    elapsed_seconds: float = 0.0
    tokens_per_second: float = 0.0
    vocab_size: int = 0
    parameters: int = 0
    last_sequence: int = 0
    owner: str = ""
    lease_expires_at: float = 0.0
    attempt: int = 0
    takeovers: int = 0
    cancel_requested: bool = False
    queued_at: float = 0.0
    request_id: str = ""
    request_digest: str = ""
    corpus_name: str = ""
    best_step: int = -1
    best_valid_perplexity: float = 0.0
    stop_reason: str = ""


@dataclass
class EventRecord:
    """One row of ``events``; ``sequence`` counts 1, 2, ... per job; ``payload`` holds the event's fields."""

    job_id: str
    sequence: int
    kind: str
    time: float
    payload: dict[str, Any]


@dataclass
class Claim:
    """A job a replica now owns; ``takeover``: it was running under a lease that expired."""

    job: JobRecord
    takeover: bool
    previous_owner: str


COLUMNS = [f.name for f in fields(JobRecord)]
