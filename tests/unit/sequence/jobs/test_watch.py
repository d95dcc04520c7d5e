"""``follow``: a stopping replica's watch streams end after the events recorded when the stop began, even
while another replica keeps recording events of the job (a stream that followed those would hold the
stopping replica up until its grace period ran out)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.sequence.jobs.watch import JobChanges, follow


@dataclass
class Event:
    sequence: int


@dataclass
class Job:
    state: str = "running"


@dataclass
class Store:
    """A job's event log to which another replica adds ``per_read`` events before every read."""

    per_read: int
    log: list[Event] = field(default_factory=list)

    def record(self, count: int) -> None:
        for _ in range(count):
            self.log.append(Event(len(self.log) + 1))

    def events(self, job_id: str, after: int, limit: int) -> list[Event]:
        self.record(self.per_read)
        return [e for e in self.log if e.sequence > after][:limit]


@dataclass
class Jobs:
    store: Store

    def get(self, job_id: str) -> Job:
        return Job()


@settings(max_examples=30, deadline=None)
@given(before=st.integers(0, 50), stop_after=st.integers(0, 20), per_read=st.integers(1, 5))
def test_a_stopping_replica_ends_its_stream_once_caught_up(before, stop_after, per_read):
    async def run() -> tuple[list[int], int]:
        jobs = Jobs(Store(per_read))
        jobs.store.record(before)
        changes = JobChanges(asyncio.get_running_loop())
        stopping = {"at": None}
        seen: list[int] = []

        def until() -> bool:
            if stopping["at"] is None and len(seen) >= stop_after:
                stopping["at"] = len(jobs.store.log)  # what is recorded when the stop begins
            return stopping["at"] is not None

        async def consume() -> None:
            async for event in follow(jobs, changes, "job", 0, until=until):  # type: ignore[arg-type]
                seen.append(event.sequence)

        # Hang guard only: without the fix the stream follows the other replica for ever.
        await asyncio.wait_for(consume(), timeout=30)
        assert stopping["at"] is not None
        return seen, stopping["at"]

    seen, recorded_at_stop = asyncio.run(run())
    assert seen == list(range(1, len(seen) + 1))  # every event once, in order
    assert len(seen) >= recorded_at_stop  # nothing recorded before the stop is left out
