"""Following jobs from an event loop without holding a thread while idle.

``JobChanges`` turns a job manager's listener calls (made from job threads) into asyncio notifications
per job; ``follow`` yields a job's events as they are recorded and ends when the job leaves QUEUED/RUNNING;
``until_stopped`` waits for a job to leave them. Each store access is a short SQLite read run with
``asyncio.to_thread``; between them the coroutine awaits a notification, polling the store every
``POLL_SECONDS`` as well (another process sharing the store, or a missed wake-up, is seen then).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from nnprobe_services.sequence.jobs.store import ACTIVE, EventRecord, JobRecord

#: Longest a follower waits without looking at the store.
POLL_SECONDS = 1.0
#: Most events read from the store at once.
BATCH = 1000


class EventLog(Protocol):
    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[EventRecord]: ...


class Jobs(Protocol):
    """What following needs of a job manager: its store's event log, and ``get`` (NotFound for an unknown
    job)."""

    @property
    def store(self) -> EventLog: ...

    def get(self, job_id: str) -> JobRecord: ...


class JobChanges:
    """Per-job asyncio events on ``loop``, set when the job records an event (``notify`` is thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, job_id: str) -> None:
        """Wake the coroutines waiting on ``job_id`` (callable from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every waiting coroutine (call on the loop)."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def next_change(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change. Take it before reading the store, so a change made
        between the read and the wait is not missed."""
        return self._events.setdefault(job_id, asyncio.Event())

    @staticmethod
    async def wait(change: asyncio.Event, timeout: float = POLL_SECONDS) -> None:
        """Wait for ``change`` or ``timeout`` seconds, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(change.wait(), timeout)


def _read(jobs: Jobs, job_id: str, cursor: int) -> tuple[list[EventRecord], bool]:
    """Events after ``cursor`` and whether more may come (the job is still queued or running)."""
    events = jobs.store.events(job_id, cursor, limit=BATCH)
    if events:
        return events, True
    if jobs.get(job_id).state in ACTIVE:
        return [], True
    # It just ended: its last events may have been recorded after the first read.
    events = jobs.store.events(job_id, cursor, limit=BATCH)
    return events, bool(events)


async def follow(
    jobs: Jobs,
    changes: JobChanges,
    job_id: str,
    after: int = 0,
    until: Callable[[], bool] = lambda: False,
) -> AsyncIterator[EventRecord]:
    """The job's events after sequence ``after``, as they are recorded, until the job has left
    QUEUED/RUNNING and every event is out, or, earlier, once ``until()`` is true: then after the events
    recorded when it turned true (call ``changes.wake_all()`` after it does). The events another replica
    records after that are not waited for, so a stopping replica's streams end although the job runs on
    elsewhere. NotFound for an unknown job."""
    await asyncio.to_thread(jobs.get, job_id)
    cursor = after
    while True:
        ending = until()  # read before the events: those recorded by now are all delivered
        change = changes.next_change(job_id)
        events, more = await asyncio.to_thread(_read, jobs, job_id, cursor)
        for event in events:
            yield event
        if events:
            cursor = events[-1].sequence
        if ending and len(events) < BATCH:  # caught up with every event recorded before the stop
            return
        if events:
            continue
        if not more:
            return
        if not until():
            await changes.wait(change)


async def until_stopped(jobs: Jobs, changes: JobChanges, job_id: str, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) for the job to leave QUEUED/RUNNING; True when it has."""
    deadline = time.monotonic() + timeout
    while True:
        change = changes.next_change(job_id)
        job = await asyncio.to_thread(jobs.get, job_id)
        if job.state not in ACTIVE:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await changes.wait(change, min(POLL_SECONDS, left))


__all__ = ["POLL_SECONDS", "JobChanges", "follow", "until_stopped"]
