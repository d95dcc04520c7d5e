"""Watching a training job across reconnections: the decisions ``watch_job`` makes, shared by the sync and
asyncio clients (which differ only in how they wait)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.errors import DeadlineExceeded, NnprobeError


class Reconnection:
    """One watch of job ``job_id``: the cursor (the last event sequence seen), the whole watch's deadline
    (``total`` seconds, None for none) and how long a broken stream is retried without an event
    (``reconnect_seconds``)."""

    def __init__(self, job_id: str, after_sequence: int, total: float | None, reconnect_seconds: float):
        self.job_id = job_id
        self.cursor = after_sequence
        self.total = total
        self.reconnect_seconds = reconnect_seconds
        self.end = None if total is None else time.monotonic() + total
        self.give_up = time.monotonic() + reconnect_seconds

    def next_request(self) -> tuple[pb.WatchJobRequest, float | None]:
        """The next ``WatchJobRequest`` (from the cursor on) and the seconds left for it (None: no limit).

        Raises:
            nnprobe.DeadlineExceeded: the watch's ``timeout`` passed while reconnecting.
        """
        self.give_up = time.monotonic() + self.reconnect_seconds
        remaining = None if self.end is None else self.end - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(
                f"watching job {self.job_id}: the timeout of {self.total:g}s passed while reconnecting"
            )
        return pb.WatchJobRequest(job_id=self.job_id, after_sequence=self.cursor), remaining

    def seen(self, response: Any) -> Any:
        """Move the cursor past ``response``'s event; returns the event message."""
        self.cursor = response.event.sequence
        self.give_up = time.monotonic() + self.reconnect_seconds
        return response.event

    def retries(self, error: NnprobeError) -> bool:
        """Whether a stream broken by ``error`` is watched again: UNAVAILABLE within ``reconnect_seconds``
        of the last event."""
        return error.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < self.give_up

    def pause(self) -> float:
        """Seconds to wait before watching again (at most 1, never past a deadline)."""
        pause = min(1.0, max(0.0, self.give_up - time.monotonic()))
        if self.end is not None:
            pause = min(pause, max(0.0, self.end - time.monotonic()))
        return pause
