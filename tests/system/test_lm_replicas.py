"""Three sequence server processes sharing one PostgreSQL job database (a real server the suite starts)
and one data folder: jobs spread over them and each runs exactly once; ``kill -9`` of the replica running
a job hands it to another that finishes it with bit-identical losses; a replica restart neither
duplicates nor loses a job; watch and cancel work through a replica that does not own the job.

The reference for every loss is a job with the same configuration and seed that ran undisturbed."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nnprobe import SequenceClient

from tests.support.postgres import free_port
from tests.support.processes import kill_hard, serve

pytestmark = pytest.mark.system
#: Hang guard for processes and calls; never a pass/fail threshold.
WAIT_SECONDS = 180.0
CONFIG = dict(
    embed_size=16,
    hidden_size=48,
    batch_size=4,
    sequence_length=8,
    epochs=4,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=2,
    checkpoint_interval=4,
    seed=11,
)
#: Long enough that a loaded machine's heartbeats keep up; a killed replica's job waits this long.
LEASE_SECONDS = 8
RUNNING_ON = re.compile(r"running on cpu \(replica (\S+)\)")


class Replicas:
    """The server processes; ``start(i)`` (re)starts replica ``i`` on its port."""

    def __init__(self, folder: Path, database_url: str, count: int) -> None:
        self.folder = folder
        self.database_url = database_url
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen | None] = [None] * count

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        self.launch(i)
        self.wait_ready(i)

    def launch(self, i: int) -> None:
        self.procs[i] = serve(
            "sequence",
            self.ports[i],
            data=self.folder / "data",
            cache=self.folder / f"cache-{i}",
            log=self.folder / f"replica-{i}.log",
            NNPROBE_DATABASE_URL=self.database_url,
            NNPROBE_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
            NNPROBE_JOB_POLL_SECONDS="0.25",
            # Three processes on a small machine: one compute thread each, no oversubscription.
            OMP_NUM_THREADS="1",
            NNPROBE_MAX_QUEUED_JOBS="64",
        )

    def wait_ready(self, i: int) -> None:
        with SequenceClient(self.address(i), timeout=60) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)

    def replica_of(self, pid: int) -> int:
        return next(i for i, p in enumerate(self.procs) if p is not None and p.pid == pid)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        kill_hard(proc, WAIT_SECONDS)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=60)


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    group = Replicas(tmp_path_factory.mktemp("replicas"), postgres.create_database(), 3)
    try:
        for i in range(3):
            group.launch(i)
        for i in range(3):
            group.wait_ready(i)
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def corpus_id(replicas, pattern_text) -> str:
    with SequenceClient(replicas.address(0), timeout=60) as client:
        return client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140)).corpus_id


def owners(history) -> list[str]:
    """The replicas that claimed the job, in order, from its state events."""
    return [m.group(1) for e in history if e.kind == "state" and (m := RUNNING_ON.search(e.message))]


def step_losses(history) -> list[float]:
    return [e.loss for e in history if e.kind == "step"]


@pytest.fixture(scope="module")
def reference(replicas, corpus_id):
    """Six identical jobs started concurrently through the three replicas."""
    clients = [SequenceClient(replicas.address(i), timeout=60) for i in range(3)]
    try:
        with ThreadPoolExecutor(6) as pool:
            started = list(pool.map(lambda i: clients[i % 3].start_training(corpus_id, **CONFIG), range(6)))
        finished = [clients[(i + 1) % 3].wait_job(job.job_id) for i, job in enumerate(started)]
        histories = [
            clients[(i + 2) % 3].get_job(j.job_id, history=True).events for i, j in enumerate(started)
        ]
        listed = [{j.job_id for j in c.list_jobs()} for c in clients]
    finally:
        for client in clients:
            client.close()
    return started, finished, histories, listed


def test_jobs_spread_over_the_replicas_and_each_runs_once(reference):
    started, finished, histories, listed = reference
    ids = [job.job_id for job in started]
    assert len(set(ids)) == 6
    assert listed == [set(ids)] * 3  # every replica lists every job
    assert [job.state for job in finished] == ["succeeded"] * 6
    claims = [owners(history) for history in histories]
    assert all(len(claim) == 1 for claim in claims), claims  # claimed once, never taken over
    assert len({claim[0] for claim in claims}) == 3  # each replica ran at least one job
    losses = [step_losses(history) for history in histories]
    total = finished[0].total_steps
    for history in histories:
        assert [e.step for e in history if e.kind == "step"] == list(
            range(CONFIG["log_interval"], total + 1, CONFIG["log_interval"])
        )
    assert all(run == losses[0] for run in losses)  # same seed, any replica: the same numbers


def test_kill_9_of_the_owner_hands_the_job_over_and_a_restart_duplicates_nothing(
    replicas, corpus_id, reference
):
    expected = step_losses(reference[2][0])
    with SequenceClient(replicas.address(0), timeout=60) as client:
        jobs = [client.start_training(corpus_id, **CONFIG) for _ in range(4)]
        victim_job = jobs[0]
        seen: list = []
        for event in client.watch_job(victim_job.job_id):
            seen.append(event)
            if event.kind == "checkpoint" and event.step >= 8:
                break
        # The owner is read from the watched events: the kill follows the checkpoint with no call between.
        owner = owners(seen)[0]
        victim = replicas.replica_of(int(owner.rsplit("-", 1)[1]))
        killed_at = time.monotonic()
        replicas.kill(victim)
    survivor = (victim + 1) % 3
    with SequenceClient(replicas.address(survivor), timeout=60) as client:
        for event in client.watch_job(victim_job.job_id, after_sequence=0):
            if event.message.startswith("taken over"):
                print(
                    f"takeover {time.monotonic() - killed_at:.2f} s after kill -9 (lease {LEASE_SECONDS} s)"
                )
                break
        replicas.start(victim)  # the same port, a new process: a new replica name
        finals = [client.wait_job(job.job_id) for job in jobs]
        histories = [client.get_job(job.job_id, history=True).events for job in jobs]
    assert [job.state for job in finals] == ["succeeded"] * 4
    victim_owners = owners(histories[0])
    assert len(victim_owners) == 2 and victim_owners[0] == owner and victim_owners[1] != owner
    takeovers = [e.message for e in histories[0] if e.message.startswith("taken over")]
    assert takeovers == [
        f"taken over by replica {victim_owners[1]} from {owner}, whose lease expired; resuming from step "
        + takeovers[0].rsplit(" ", 1)[1]
    ]
    for history in histories:
        assert step_losses(history) == expected  # each step exactly once, bit-identical
    for history in histories[1:]:
        assert len(owners(history)) == 1 or any(e.message.startswith("taken over") for e in history)


def test_watch_and_cancel_through_replicas_that_do_not_own_the_job(replicas, corpus_id, reference):
    expected = step_losses(reference[2][0])
    # Every replica's channel is open before the job starts, and the owner is read from the watched events,
    # so the cancel follows the sixth step by one call: a loaded machine cannot let the job finish first.
    clients = [SequenceClient(replicas.address(i), timeout=WAIT_SECONDS) for i in range(3)]
    try:
        for client in clients:
            client.list_jobs()  # connected
        job = clients[0].start_training(corpus_id, **CONFIG)
        seen = []
        for event in clients[0].watch_job(job.job_id):
            seen.append(event)
            if event.kind == "step" and event.step >= 6 and owners(seen):
                break
        owner_index = replicas.replica_of(int(owners(seen)[0].rsplit("-", 1)[1]))
        canceller, watcher = (clients[i] for i in range(3) if i != owner_index)
        cancelled = canceller.cancel_job(job.job_id)
        assert cancelled.state == "cancelled"
        assert 4 <= cancelled.checkpoint_step < cancelled.total_steps
        watched = list(watcher.watch_job(job.job_id))
        assert watched[-1].kind == "state" and watched[-1].state == "cancelled"
        watcher.resume_job(job.job_id)
        final = canceller.wait_job(job.job_id, progress=False)
        history = watcher.get_job(job.job_id, history=True).events
    finally:
        for client in clients:
            client.close()
    assert final.state == "succeeded"
    assert step_losses(history) == expected
