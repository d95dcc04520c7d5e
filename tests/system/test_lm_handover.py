"""A replica that stops gracefully hands its running job over: two sequence server processes share one job
store (SQLite in the shared data folder, or a PostgreSQL server the suite starts) with a lease far longer
than the test, so only a hand-over (never an expired lease) can move the job. SIGTERM to the owner
mid-training: it exits 0, the other replica finishes the job without ResumeJob, with exactly the step
losses and perplexities of an undisturbed run of the same configuration and seed (the reference), and the
history shows the hand-over. A watcher on the stopping replica gets the hand-over event and then
UNAVAILABLE naming its cursor; one on both addresses follows the job to its end across the move."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc

from tests.support import processes
from tests.support.processes import serve

pytestmark = pytest.mark.system
#: Hang guard for processes, calls and streams; never a pass/fail threshold.
WAIT_SECONDS = 180.0
#: Longer than the whole test: no lease expires while it runs.
LEASE_SECONDS = 3600
RUNNING_ON = re.compile(r"running on cpu \(replica (\S+)\)")


def launch(folder: Path, port: int, database_url: str, index: int) -> subprocess.Popen:
    return serve(
        "sequence",
        port,
        data=folder / "data",
        cache=folder / f"cache-{index}",
        log=folder / f"replica-{index}.log",
        flags=["--grace-seconds", "60"],
        NNPROBE_DATABASE_URL=database_url,
        NNPROBE_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        NNPROBE_JOB_POLL_SECONDS="0.25",
        OMP_NUM_THREADS="1",
    )


def stop(proc: subprocess.Popen) -> None:
    processes.stop(proc, WAIT_SECONDS)


def owners(history) -> list[str]:
    return [m.group(1) for e in history if e.kind == "state" and (m := RUNNING_ON.search(e.message))]


def step_losses(events) -> list[float]:
    return [e.loss for e in events if e.kind == "step"]


def watch_raw(address: str, job_id: str, seen: list, ended: list) -> None:
    """WatchJob on one replica with a bare stub: every event, then how the stream ended."""
    with grpc.insecure_channel(address) as channel:
        stub = sequence_pb2_grpc.SequenceServiceStub(channel)
        try:
            for response in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=WAIT_SECONDS):
                seen.append(response.event)
            ended.append((grpc.StatusCode.OK, ""))
        except grpc.RpcError as error:
            ended.append((error.code(), error.details()))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_hands_the_running_job_to_the_other_replica(
    request, tmp_path, free_port, pattern_text, resumable_lm, backend
):
    if backend == "postgresql":
        database_url = request.getfixturevalue("postgres").create_database()
    else:
        database_url = f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite3'}"
    config = dict(resumable_lm, epochs=16)  # 416 steps, far more than a signal takes to land
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    procs = [launch(tmp_path, port, database_url, i) for i, port in enumerate(ports)]
    try:
        with SequenceClient(addresses[0], timeout=60) as client:
            for address in addresses:
                with SequenceClient(address) as other:
                    other.wait_until_ready(timeout=WAIT_SECONDS)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            reference = client.wait_job(client.start_training(corpus.corpus_id, **config).job_id)
            expected = client.get_job(reference.job_id, history=True).events
            job = client.start_training(corpus.corpus_id, **config)
            seen: list = []
            for event in client.watch_job(job.job_id):  # the owner, from the job's first events
                seen.append(event)
                if owners(seen):
                    break
            owner = owners(seen)[-1]
        victim = next(i for i, p in enumerate(procs) if owner.endswith(f"-{p.pid}"))
        survivor = 1 - victim
        raw_seen: list = []
        raw_ended: list = []
        raw = threading.Thread(target=watch_raw, args=(addresses[victim], job.job_id, raw_seen, raw_ended))
        followed: list = []
        both = f"{addresses[victim]},{addresses[survivor]}"

        def follow() -> None:
            with SequenceClient(both, timeout=60) as watcher:
                followed.extend(watcher.watch_job(job.job_id, reconnect_seconds=WAIT_SECONDS))

        follower = threading.Thread(target=follow)
        raw.start()
        follower.start()
        # Both streams are open and the job has checkpointed step 8: the signal follows the event that
        # shows it with no call in between, and the job has hundreds of steps left when it lands.
        while len(raw_seen) < 3 or not any(e.kind == "checkpoint" and e.step >= 8 for e in followed):
            assert raw.is_alive() and follower.is_alive()
            threading.Event().wait(0.02)
        procs[victim].send_signal(signal.SIGTERM)
        procs[victim].wait(timeout=WAIT_SECONDS)
        raw.join(WAIT_SECONDS)
        follower.join(WAIT_SECONDS)
        with SequenceClient(addresses[survivor], timeout=60) as client:
            final = client.get_job(job.job_id, history=True)
    finally:
        for proc in procs:
            stop(proc)
    assert procs[victim].returncode == 0
    assert not raw.is_alive() and not follower.is_alive()
    history = final.events
    assert final.state == "succeeded"
    assert step_losses(history) == step_losses(expected)  # each step once, bit-identical
    assert (final.valid_perplexity, final.test_perplexity) == (
        reference.valid_perplexity,
        reference.test_perplexity,
    )
    handed = [e for e in history if e.message.startswith("handed over")]
    assert len(handed) == 1 and handed[0].state == "queued"
    step = handed[0].step
    assert 8 <= step < final.total_steps
    assert handed[0].message.startswith(f"handed over by replica {owner} at step {step}:")
    new_owner = owners(history)[-1]
    assert owners(history) == [owner, new_owner] and new_owner.endswith(f"-{procs[survivor].pid}")
    assert not [e for e in history if "taken over" in e.message or e.state == "interrupted"]
    # The stopping replica's stream: the hand-over, then UNAVAILABLE with the cursor to continue from.
    assert raw_seen[-1].message == handed[0].message
    code, details = raw_ended[0]
    assert code == grpc.StatusCode.UNAVAILABLE and f"after_sequence={raw_seen[-1].sequence}" in details
    # The SDK's stream went on across the move: in order, the hand-over, the new owner, the end.
    sequences = [e.sequence for e in followed]
    assert sequences == sorted(set(sequences))
    messages = [e.message for e in followed]
    assert messages.index(handed[0].message) < next(
        i for i, m in enumerate(messages) if m.endswith(f"(replica {new_owner})")
    )
    assert (followed[-1].kind, followed[-1].state) == ("state", "succeeded")
    print(
        f"{backend}: SIGTERM at step >= 8, handed over at step {step} by {owner} to {new_owner}; "
        f"finished at step {final.step} with identical losses"
    )


def test_a_watch_without_reconnecting_raises_unavailable_at_once():
    """``reconnect_seconds=0`` raises the UNAVAILABLE at once (nothing listens on this port)."""
    with SequenceClient("127.0.0.1:1", timeout=5) as client, pytest.raises(NnprobeError) as info:
        list(client.watch_job("job-x", reconnect_seconds=0))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
