"""The job store on both backends (SQLite and a real PostgreSQL server): migrations, the shared queue's
claims, leases, takeover and fencing, cancel requests, and the per-job event sequence.

Expected values come from the test's own bookkeeping (a list model of the events, counted threads), never
from the store."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import ResourceExhausted
from nnprobe_services.sequence.jobs import schema
from nnprobe_services.sequence.jobs.store import (
    CANCELLED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStore,
)

#: The embedded store's schema before migrations were recorded, as the earlier server wrote it.
LEGACY_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, corpus_id TEXT NOT NULL, state TEXT NOT NULL,
    config TEXT NOT NULL, device TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    steps_per_epoch INTEGER NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0,
    loss REAL NOT NULL DEFAULT 0, valid_perplexity REAL NOT NULL DEFAULT 0,
    test_perplexity REAL NOT NULL DEFAULT 0, checkpoint_step INTEGER NOT NULL DEFAULT -1,
    checkpoint_sha256 TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
    elapsed_seconds REAL NOT NULL DEFAULT 0, tokens_per_second REAL NOT NULL DEFAULT 0,
    vocab_size INTEGER NOT NULL DEFAULT 0, parameters INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE events (
    job_id TEXT NOT NULL, sequence INTEGER NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (job_id, sequence)
);
"""


def new_job(job_id: str, queued_at: float = 0.0, device: str = "cpu") -> JobRecord:
    now = time.time()
    return JobRecord(job_id, "n", "corpus", QUEUED, {"seed": 1}, device, now, now, queued_at=queued_at)


@pytest.fixture
def store(database_url):
    store = JobStore(database_url)
    yield store
    store.close()


def test_legacy_sqlite_file_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
        db.execute(
            "INSERT INTO jobs (job_id, name, corpus_id, state, config, device, created_at, updated_at, step,"
            " last_sequence) VALUES ('job-old', 'old', 'ptb', 'succeeded', '{\"seed\": 3}', 'cpu', 5.0, 6.0,"
            " 40, 1)"
        )
        db.execute("INSERT INTO events VALUES ('job-old', 1, 'state', 6.0, '{\"state\": \"succeeded\"}')")
    store = JobStore(f"sqlite:///{path}")
    assert store.schema_versions == (1, schema.VERSION)
    old = store.get("job-old")
    assert old is not None
    assert (old.step, old.config, old.owner, old.attempt, old.queued_at) == (40, {"seed": 3}, "", 0, 5.0)
    # Version 4: the corpus name defaults to the id; no best checkpoint, no stop reason recorded.
    assert (old.corpus_name, old.best_step, old.best_valid_perplexity, old.stop_reason) == (
        "ptb",
        -1,
        0.0,
        "",
    )
    assert [e.payload for e in store.events("job-old")] == [{"state": "succeeded"}]
    store.close()
    again = JobStore(f"sqlite:///{path}")
    assert again.schema_versions == (schema.VERSION, schema.VERSION)
    with again.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version")).all()
    assert [v for (v,) in versions] == list(range(1, schema.VERSION + 1))
    again.close()


def test_a_newer_schema_is_refused(database_url):
    JobStore(database_url).close()
    engine = sa.create_engine(JobStore(database_url).url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_migrations VALUES (:v, 0)"), {"v": schema.VERSION + 1})
    engine.dispose()
    with pytest.raises(RuntimeError, match=f"schema version {schema.VERSION + 1}"):
        JobStore(database_url)


def test_replicas_starting_together_migrate_once(database_url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: JobStore(database_url), range(4)))
    found = sorted(s.schema_versions[0] for s in stores)
    assert found == [0, schema.VERSION, schema.VERSION, schema.VERSION]
    for s in stores:
        s.close()


def test_concurrent_claims_take_each_job_exactly_once(database_url):
    setup = JobStore(database_url)
    ids = [f"job-{i:03d}" for i in range(24)]
    for i, job_id in enumerate(ids):
        setup.insert(new_job(job_id, queued_at=float(i)))
    replicas = [JobStore(database_url) for _ in range(4)]
    claimed: dict[str, list[str]] = {f"r{i}": [] for i in range(4)}

    def drain(index: int) -> None:
        while (claim := replicas[index].claim_next(f"r{index}", ["cpu"], 60, 3)) is not None:
            claimed[f"r{index}"].append(claim.job.job_id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    everything = [job_id for jobs in claimed.values() for job_id in jobs]
    assert sorted(everything) == ids
    for replica, jobs in claimed.items():
        assert jobs == sorted(jobs)  # each replica takes the oldest claimable job first
        for job_id in jobs:
            job = setup.get(job_id)
            assert job is not None and (job.state, job.owner, job.attempt) == (RUNNING, replica, 1)
    for s in [setup, *replicas]:
        s.close()


def test_claims_only_take_the_replicas_devices(store):
    store.insert(new_job("job-gpu", 0.0, device="cuda:1"))
    store.insert(new_job("job-cpu", 1.0, device="cpu"))
    assert store.claim_next("r", [], 60, 3) is None
    claim = store.claim_next("r", ["cpu", "cuda:0"], 60, 3)
    assert claim is not None and claim.job.job_id == "job-cpu"
    assert store.claim_next("r", ["cpu", "cuda:0"], 60, 3) is None
    gpu = store.claim_next("r", ["cuda:1"], 60, 3)
    assert gpu is not None and gpu.job.job_id == "job-gpu"


def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced(store):
    store.insert(new_job("job-a"))
    first = store.claim_next("r1", ["cpu"], -1, 3)  # a lease that has already ended
    assert first is not None and not first.takeover
    fence1 = {"owner": "r1", "attempt": first.job.attempt}
    assert store.add_event("job-a", "step", {"step": 1}, expect=fence1, step=1) == 1
    second = store.claim_next("r2", ["cpu"], 60, 3)
    assert second is not None and second.takeover and second.previous_owner == "r1"
    assert (second.job.owner, second.job.attempt, second.job.takeovers) == ("r2", 2, 1)
    # The first owner's writes and renewals no longer reach the job.
    assert store.add_event("job-a", "step", {"step": 2}, expect=fence1, step=2) is None
    assert not store.supersede_events("job-a", 0, expect=fence1)
    assert store.renew_lease("job-a", "r1", 1, 60) is None
    assert store.renew_lease("job-a", "r2", 2, 60) is False
    assert store.claim_next("r3", ["cpu"], 60, 3) is None  # r2's lease holds
    job = store.get("job-a")
    assert job is not None and (job.step, job.last_sequence) == (1, 1)


def test_a_job_whose_replicas_keep_dying_is_interrupted_after_max_takeovers(store):
    store.insert(new_job("job-a"))
    owners = []
    for replica in ("r1", "r2", "r3"):
        claim = store.claim_next(replica, ["cpu"], -1, 2)
        assert claim is not None
        owners.append((claim.job.owner, claim.job.takeovers))
    assert owners == [("r1", 0), ("r2", 1), ("r3", 2)]
    assert store.claim_next("r4", ["cpu"], 60, 2) is None
    job = store.get("job-a")
    assert job is not None and job.state == INTERRUPTED and job.owner == ""
    assert "taken over 2 times" in job.error
    assert store.events("job-a")[-1].payload["state"] == INTERRUPTED


def test_expire_leases_frees_only_the_owners_jobs(store):
    for job_id in ("job-a", "job-b"):
        store.insert(new_job(job_id, 0.0 if job_id == "job-a" else 1.0))
    assert store.claim_next("r1", ["cpu"], 600, 3) is not None
    assert store.claim_next("r2", ["cpu"], 600, 3) is not None
    assert store.expire_leases("r1") == 1
    claim = store.claim_next("r1", ["cpu"], 600, 3)
    assert claim is not None and claim.job.job_id == "job-a" and claim.takeover


def test_cancel_reaches_queued_and_running_jobs(store):
    store.insert(new_job("job-q", 0.0))
    store.insert(new_job("job-r", 1.0, device="cuda:0"))
    assert store.claim_next("r1", ["cuda:0"], 600, 3) is not None
    assert store.request_cancel("job-q") == QUEUED
    queued = store.get("job-q")
    assert queued is not None and queued.state == CANCELLED
    assert [e.payload["state"] for e in store.events("job-q")] == [CANCELLED]
    assert store.renew_lease("job-r", "r1", 1, 600) is False
    assert store.request_cancel("job-r") == RUNNING
    assert store.renew_lease("job-r", "r1", 1, 600) is True  # the owner's heartbeat learns of it
    assert store.request_cancel("job-q") == CANCELLED  # nothing more to do
    assert store.request_cancel("job-none") == ""


def test_queue_limit_holds_under_concurrent_inserts(database_url):
    stores = [JobStore(database_url) for _ in range(4)]
    outcomes: list[str] = []

    def start(i: int) -> None:
        try:
            stores[i % 4].insert(new_job(f"job-{i:02d}", float(i)), max_queued=5)
            outcomes.append("queued")
        except ResourceExhausted:
            outcomes.append("refused")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(start, range(12)))
    assert sorted(outcomes).count("queued") == 5
    assert stores[0].count_by_state() == {QUEUED: 5}
    positions = sorted(stores[0].queue_position(j) for j in stores[0].jobs([QUEUED]))
    assert positions == [0, 1, 2, 3, 4]
    for s in stores:
        s.close()


def test_concurrent_events_get_consecutive_sequences(database_url):
    stores = [JobStore(database_url) for _ in range(3)]
    stores[0].insert(new_job("job-a"))
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: stores[i % 3].add_event("job-a", "step", {"i": i}, step=i), range(60)))
    assert sorted(got) == list(range(1, 61))
    events = stores[0].events("job-a", limit=1000)
    assert [e.sequence for e in events] == list(range(1, 61))
    assert {e.sequence: e.payload["i"] for e in events} == {s: i for i, s in enumerate(got)}
    for s in stores:
        s.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 1000)),
        st.tuples(st.just("supersede"), st.integers(0, 30)),
        st.tuples(st.just("read"), st.integers(0, 30)),
    ),
    max_size=25,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_event_log_behaves_like_a_list(store, ops):
    """Any mix of appends, supersessions and cursor reads matches a plain list model: sequences only grow
    (1, 2, ... over every append, superseded or not), superseding drops exactly the visible tail after a
    sequence, and a cursor read returns the visible events after it."""
    job_id = f"job-{time.monotonic_ns()}"
    store.insert(new_job(job_id))
    model: list[tuple[int, int]] = []  # the visible (sequence, value) pairs
    appended = 0
    for op, value in ops:
        if op == "add":
            appended += 1
            assert store.add_event(job_id, "step", {"v": value}) == appended
            model.append((appended, value))
        elif op == "supersede":
            assert store.supersede_events(job_id, value)
            model = [(seq, v) for seq, v in model if seq <= value]
        else:
            got = [(e.sequence, e.payload["v"]) for e in store.events(job_id, after=value)]
            assert got == [(seq, v) for seq, v in model if seq > value]
    job = store.get(job_id)
    assert job is not None and job.last_sequence == appended
    assert [(e.sequence, e.payload["v"]) for e in store.events(job_id)] == model


def test_a_released_job_is_claimable_at_once_and_its_old_lease_is_fenced(store):
    store.insert(new_job("job-a"))
    first = store.claim_next("r1", ["cpu"], 600, 3)
    assert first is not None
    fence1 = {"owner": "r1", "attempt": first.job.attempt, "state": RUNNING}
    for step in (1, 2, 3):  # the run's events: steps 1 and 2 are checkpointed (sequence 2), step 3 not
        assert store.add_event("job-a", "step", {"step": step}, expect=fence1, step=step) == step
    handed = {"state": QUEUED, "message": "handed over by r1 at step 2", "step": 2}
    assert store.release("job-a", "r1", first.job.attempt, 2, handed, step=2) == 4
    job = store.get("job-a")
    assert job is not None
    assert (job.state, job.owner, job.lease_expires_at, job.attempt, job.takeovers, job.step) == (
        QUEUED,
        "",
        0.0,
        first.job.attempt + 1,
        0,
        2,
    )
    # The old lease can no longer record steps, renew, release again or supersede.
    assert store.add_event("job-a", "step", {"step": 4}, expect=fence1, step=4) is None
    assert store.renew_lease("job-a", "r1", first.job.attempt, 600) is None
    assert store.release("job-a", "r1", first.job.attempt, 0, handed) is None
    assert not store.supersede_events("job-a", 0, expect=fence1)
    # The history: the checkpointed steps, then the hand-over (step 3 was past the checkpoint).
    assert [(e.sequence, e.payload.get("step")) for e in store.events("job-a")] == [(1, 1), (2, 2), (4, 2)]
    # Claimable at once (the lease of 600 s did not have to expire), and not as a takeover.
    second = store.claim_next("r2", ["cpu"], 600, 3)
    assert second is not None and not second.takeover
    assert (second.job.owner, second.job.attempt, second.job.takeovers) == ("r2", first.job.attempt + 2, 0)


def test_a_release_keeps_a_queue_place_and_cancel_request(store):
    store.insert(new_job("job-old", 0.0))
    store.insert(new_job("job-new", 5.0))
    claim = store.claim_next("r1", ["cpu"], 600, 3)
    assert claim is not None and claim.job.job_id == "job-old"
    assert store.request_cancel("job-old") == RUNNING
    assert store.release("job-old", "r1", claim.job.attempt, 0, {"state": QUEUED}) is not None
    again = store.claim_next("r2", ["cpu"], 600, 3)
    assert again is not None and again.job.job_id == "job-old"  # still ahead of the newer job
    assert again.job.cancel_requested  # the new owner stops it at once


def test_releases_do_not_count_as_takeovers_and_deaths_still_interrupt(store):
    """Deaths (expired leases) and graceful hand-overs interleaved: only the deaths count toward
    max_takeovers, and a release does not reset the count either."""
    store.insert(new_job("job-a"))
    dies = [True, False, True, False, True]  # r0 dies, r1 releases, r2 dies, r3 releases, r4 dies
    seen = []
    for index, dying in enumerate(dies):
        claim = store.claim_next(f"r{index}", ["cpu"], -1 if dying else 600, 2)
        assert claim is not None
        seen.append((claim.takeover, claim.job.takeovers))
        if not dying:
            assert store.release("job-a", f"r{index}", claim.job.attempt, 0, {"state": QUEUED})
    # A claim after a death is a takeover and counts; a claim after a release is neither.
    assert seen == [(False, 0), (True, 1), (False, 1), (True, 2), (False, 2)]
    assert store.claim_next("r5", ["cpu"], 600, 2) is None  # the third death exceeds max_takeovers 2
    job = store.get("job-a")
    assert job is not None and job.state == INTERRUPTED and "taken over 2 times" in job.error


def keyed_job(job_id: str, request_id: str, digest: str = "d1") -> JobRecord:
    job = new_job(job_id)
    job.request_id, job.request_digest = request_id, digest
    return job


def test_a_request_id_names_one_job(store):
    created = store.insert(keyed_job("job-a", "key-1"))
    assert created[1] and created[0].job_id == "job-a"
    held, new = store.insert(keyed_job("job-b", "key-1", "d2"), max_queued=1)  # full queue: no matter
    assert not new and (held.job_id, held.request_digest) == ("job-a", "d1")
    assert store.insert(new_job("job-c"))[1] and store.insert(new_job("job-d"))[1]  # no key: no collision
    assert sorted(j.job_id for j in store.jobs()) == ["job-a", "job-c", "job-d"]
    found = store.by_request_id("key-1")
    assert found is not None and found.job_id == "job-a"
    assert store.by_request_id("key-2") is None


def test_the_unique_index_refuses_a_second_job_with_a_key(store):
    """The constraint itself, below the store's serialized check: a direct insert of a taken key fails."""
    store.insert(keyed_job("job-a", "key-1"))
    with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            schema.jobs.insert().values(
                **{c: getattr(keyed_job("job-b", "key-1"), c) for c in ("job_id", "name", "corpus_id")},
                state=QUEUED,
                config="{}",
                device="cpu",
                created_at=0.0,
                updated_at=0.0,
                request_id="key-1",
            )
        )


def test_concurrent_inserts_with_one_key_create_one_job(database_url):
    stores = [JobStore(database_url) for _ in range(4)]
    barrier = threading.Barrier(8)

    def start(i: int) -> tuple[str, bool]:
        barrier.wait(60)
        job, created = stores[i % 4].insert(keyed_job(f"job-{i}", "same-key"), max_queued=100)
        return job.job_id, created

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(start, range(8)))
    winners = [job_id for job_id, created in outcomes if created]
    assert len(winners) == 1
    assert {job_id for job_id, _ in outcomes} == set(winners)  # every loser read the winner's job
    assert [j.job_id for j in stores[0].jobs()] == winners
    for s in stores:
        s.close()
