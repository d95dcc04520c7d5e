"""Training jobs against a real sequence server process: many watchers, cancelling, and SIGTERM.

- 200 WatchJob streams open on a running job: health, ListJobs and CancelJob still answer, the job is
  cancelled, and every stream then ends with OK after the CANCELLED event.
- SIGTERM while a job trains: the process exits 0 within its grace period, a watcher's last event says the
  replica handed the job back to the queue at its checkpoint (and the stream ends UNAVAILABLE), and after a
  restart the server claims the job again by itself (no ResumeJob) and finishes it with exactly the losses
  and perplexities of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nnprobe import NnprobeError, SequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc

from tests.support.processes import WAIT_SECONDS, serve, stop

pytestmark = pytest.mark.system
WATCHERS = 200
GRACE_SECONDS = 30.0


def start(tmp_path: Path, port: int) -> subprocess.Popen:
    return serve(
        "sequence",
        port,
        data=tmp_path / "data",
        cache=tmp_path / "cache",
        log=tmp_path / f"server-{port}.log",
        flags=["--grace-seconds", str(GRACE_SECONDS)],
    )


async def watch_many(address: str, job_id: str, opened: asyncio.Event) -> list[list[pb.JobEvent]]:
    """Open ``WATCHERS`` WatchJob streams on one channel; set ``opened`` once each has had an event;
    return each stream's events when all have ended (an error in any stream propagates)."""
    first_events = 0

    async def one(stub: sequence_pb2_grpc.SequenceServiceStub) -> list[pb.JobEvent]:
        nonlocal first_events
        events = []
        async for response in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            events.append(response.event)
            if len(events) == 1:
                first_events += 1
                if first_events == WATCHERS:
                    opened.set()
        return events

    async with grpc.aio.insecure_channel(address) as channel:
        stub = sequence_pb2_grpc.SequenceServiceStub(channel)
        return await asyncio.gather(*(one(stub) for _ in range(WATCHERS)))


async def bookkeeping_while_watched(address: str, job_id: str) -> dict:
    opened = asyncio.Event()
    watchers = asyncio.create_task(watch_many(address, job_id, opened))
    await asyncio.wait_for(opened.wait(), WAIT_SECONDS)
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = sequence_pb2_grpc.SequenceServiceStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_SECONDS)
        listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=WAIT_SECONDS)
        cancelled = await stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=WAIT_SECONDS)
    streams = await asyncio.wait_for(watchers, WAIT_SECONDS)
    return {"health": check.status, "listed": listed.jobs, "cancelled": cancelled.job, "streams": streams}


def test_two_hundred_watchers_do_not_starve_health_listing_or_cancelling(
    tmp_path, free_port, pattern_text, resumable_lm
):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            job = client.start_training(
                corpus.corpus_id, **dict(resumable_lm, epochs=100_000, log_interval=10)
            )
            for event in client.watch_job(job.job_id):
                if event.kind == "step":
                    break
            outcome = asyncio.run(bookkeeping_while_watched(address, job.job_id))
            final = client.get_job(job.job_id)
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert outcome["health"] == health_pb2.HealthCheckResponse.SERVING
    assert [(j.job_id, j.state) for j in outcome["listed"]] == [(job.job_id, pb.JOB_STATE_RUNNING)]
    assert outcome["cancelled"].state == pb.JOB_STATE_CANCELLED and final.state == "cancelled"
    assert 0 < final.checkpoint_step < final.total_steps
    streams = outcome["streams"]
    assert len(streams) == WATCHERS
    last_sequence = final.last_sequence
    for events in streams:  # every stream saw every event, in order, ending with CANCELLED
        assert [e.sequence for e in events] == list(range(1, last_sequence + 1))
        assert events[-1].kind == pb.JOB_EVENT_KIND_STATE and events[-1].state == pb.JOB_STATE_CANCELLED
    log = (tmp_path / f"server-{port}.log").read_text()
    assert log.count("WatchJob OK") == WATCHERS and log.count("WatchJob CANCELLED") == 1  # the first watch
    print(f"{WATCHERS} streams each got {last_sequence} events; cancelled at step {final.step}")


def test_sigterm_during_training_exits_zero_and_the_restarted_server_continues_the_job_exactly(
    tmp_path, free_port, pattern_text, resumable_lm
):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    seen: list = []
    ended: list = []
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            reference = client.wait_job(client.start_training(corpus.corpus_id, **resumable_lm).job_id)
            assert reference.state == "succeeded"
            job = client.start_training(corpus.corpus_id, **resumable_lm)
            checkpointed = threading.Event()

            def follow() -> None:
                try:
                    for event in client.watch_job(job.job_id, reconnect_seconds=0):
                        seen.append(event)
                        if event.kind == "checkpoint" and event.step >= 8:
                            checkpointed.set()
                except NnprobeError as error:
                    ended.append(error)

            watcher = threading.Thread(target=follow, daemon=True)
            watcher.start()
            assert checkpointed.wait(WAIT_SECONDS)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=WAIT_SECONDS)
            stopped_after = time.monotonic() - signalled
            watcher.join(WAIT_SECONDS)
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert stopped_after < GRACE_SECONDS
    assert not watcher.is_alive()
    last = seen[-1]
    assert (last.kind, last.state) == ("state", "queued") and last.message.startswith(
        "handed over by replica"
    )
    assert "shutdown" in last.message and last.step >= 8
    assert [e.code for e in ended] == [grpc.StatusCode.UNAVAILABLE]

    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)
            final = client.wait_job(job.job_id)  # no ResumeJob: the restarted server claims it
            history = client.get_job(job.job_id, history=True).events
            expected = client.get_job(reference.job_id, history=True).events
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert final.state == "succeeded"
    assert (final.valid_perplexity, final.test_perplexity) == (
        reference.valid_perplexity,
        reference.test_perplexity,
    )
    assert [e.loss for e in history if e.kind == "step"] == [e.loss for e in expected if e.kind == "step"]
    assert [e.message for e in history if e.message.startswith("handed over")] == [last.message]
    print(
        f"SIGTERM, handed over at checkpoint step {last.step}: exit 0 after {stopped_after:.1f} s "
        f"(grace {GRACE_SECONDS:.0f} s); the restarted server finished it at step {final.step} with "
        "identical losses"
    )
