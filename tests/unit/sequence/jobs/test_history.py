"""What a job's history keeps when the job goes back to a checkpoint (resume, takeover, hand-over): the
events a continuing run records again leave it; state events and the checkpoint's own event stay. Checked
against a brute-force filter over any history, on each backend."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.sequence.jobs.store import QUEUED, RUNNING, JobRecord, JobStore

histories = st.lists(
    st.tuples(st.sampled_from(["step", "evaluation", "checkpoint", "state"]), st.integers(0, 40)),
    min_size=1,
    max_size=20,
)


@pytest.fixture
def store(database_url):
    store = JobStore(database_url)
    yield store
    store.close()


def new_job(job_id: str) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, "n", "corpus", QUEUED, {}, "cpu", now, now)


def kept(history: list[tuple[int, str, int]], after: int, step: int) -> list[int]:
    """The sequences that stay: every event up to ``after``; past it, state events and events at or
    before the checkpoint's ``step``."""
    return [seq for seq, kind, at in history if seq <= after or kind == "state" or at <= step]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=histories, data=st.data())
def test_going_back_to_a_checkpoint_keeps_state_events_and_drops_what_is_replayed(store, events, data):
    job_id = f"job-{time.monotonic_ns()}"
    store.insert(new_job(job_id))
    history = []
    for kind, step in events:
        payload = {"step": step, **({"state": "cancelled"} if kind == "state" else {})}
        history.append((store.add_event(job_id, kind, payload), kind, step))
    after = data.draw(st.integers(0, len(history)), label="after")
    step = data.draw(st.integers(0, 40), label="step")
    assert store.supersede_events(job_id, after, step=step)
    assert [e.sequence for e in store.events(job_id)] == kept(history, after, step)


def test_a_resumed_job_keeps_its_cancelled_event_before_the_resumed_one(store):
    """The run: steps 1-3, a checkpoint at 2 (written after sequence 2), cancelled at 3 with a checkpoint.
    Resuming from the checkpoint at 3 keeps all of it; resuming from 2 drops only the step past it."""
    store.insert(new_job("job-a"))
    for kind, payload in [
        ("step", {"step": 1}),
        ("step", {"step": 2}),
        ("checkpoint", {"step": 2}),
        ("step", {"step": 3}),
        ("checkpoint", {"step": 3}),
        ("state", {"state": "cancelled", "step": 3}),
    ]:
        store.add_event("job-a", kind, payload)
    assert store.supersede_events("job-a", 2, state=QUEUED, step=2)
    store.add_event("job-a", "state", {"state": QUEUED, "message": "resumed from step 2", "step": 2})
    history = [(e.kind, e.payload.get("state"), e.payload["step"]) for e in store.events("job-a")]
    assert history == [
        ("step", None, 1),
        ("step", None, 2),
        ("checkpoint", None, 2),
        ("state", "cancelled", 3),
        ("state", QUEUED, 2),
    ]
    job = store.get("job-a")
    assert job is not None and (job.state, job.step) == (QUEUED, 2) and job.state != RUNNING
