"""Faults against real server processes.

- ``kill -9`` of the sequence server during a training job, twice: after each kill the job database passes
  ``PRAGMA integrity_check``, the checkpoint's checksum verifies and agrees with the database; each
  restarted server (a new replica name) takes the job over once the dead one's lease expires, and the job
  finishes with exactly the uninterrupted run's result and no temporary file is left.
  (``test_lm_restart.py`` covers one kill at a checkpoint boundary and the CLI.)
- SIGTERM to the vision server while a long unary call (a receptive-field proof by back-propagation) is in
  flight: a health Watch stream sees NOT_SERVING first, new calls are refused, the in-flight call completes,
  the process exits 0. (``test_processes.py`` covers the attention server.)
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nnprobe import SequenceClient, VisionClient
from nnprobe.api.vision.v1 import vision_pb2, vision_pb2_grpc

from tests.support.processes import WAIT_SECONDS, kill_hard, serve, stop

pytestmark = pytest.mark.system


def start(tmp_path: Path, port: int, *flags: str, service: str = "sequence") -> subprocess.Popen:
    return serve(
        service,
        port,
        data=tmp_path / "data",
        cache=tmp_path / "cache",
        log=tmp_path / f"server-{port}.log",
        flags=flags,
        NNPROBE_JOB_LEASE_SECONDS="2",
        NNPROBE_JOB_POLL_SECONDS="0.5",
    )


def check_integrity(data: Path) -> dict[str, int]:
    """The database and every checkpoint are intact; returns figures for the report."""
    from nnprobe_services.sequence.lm import checkpoints

    with sqlite3.connect(data / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT job_id, checkpoint_step, checkpoint_sha256 FROM jobs").fetchall()
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    checked = 0
    for job_id, step, digest in rows:
        path = data / "jobs" / job_id / "checkpoint.pt"
        if step < 0:
            continue
        payload = checkpoints.load(path)  # raises when the sha256 header does not match the payload
        header = path.read_bytes().split(b"\n", 1)[0].decode()
        # The file is renamed into place before the database records it: it may be one checkpoint ahead.
        assert payload["step"] >= step
        if payload["step"] == step:
            assert header.endswith(digest)
        checked += 1
    partial = [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    return {"jobs": len(rows), "events": events, "checkpoints": checked, "partial_writes": len(partial)}


def test_job_survives_two_kills_with_intact_database_and_checkpoints(
    tmp_path, free_port, resumable_lm, pattern_text
):
    port = free_port()
    address = f"127.0.0.1:{port}"
    data = tmp_path / "data"
    figures = []
    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            reference = client.wait_job(client.start_training(corpus.corpus_id, **resumable_lm).job_id)
            assert reference.state == "succeeded"
            job = client.start_training(corpus.corpus_id, **resumable_lm)
            for event in client.watch_job(job.job_id):
                if event.kind == "step" and event.step >= 6:  # between checkpoints (4 and 8)
                    break
        kill_hard(proc)
        figures.append(check_integrity(data))

        for round_ in (1, 2):
            proc = start(tmp_path, port)
            with SequenceClient(address, timeout=60) as client:
                client.wait_until_ready(timeout=WAIT_SECONDS)
                resumed_at = -1
                if round_ == 1:
                    for event in client.watch_job(job.job_id):
                        if event.message.startswith("taken over"):
                            resumed_at = event.step
                            assert resumed_at >= 4
                        if resumed_at >= 4 and event.kind == "checkpoint" and event.step >= resumed_at + 20:
                            break  # right after a checkpoint write
                    kill_hard(proc)
                    figures.append(check_integrity(data))
                    continue
                final = client.wait_job(job.job_id)
                history = client.get_job(job.job_id, history=True).events
                expected = client.get_job(reference.job_id, history=True).events
            stop(proc)
    finally:
        stop(proc)
    assert final.state == "succeeded"
    assert (final.valid_perplexity, final.test_perplexity) == (
        reference.valid_perplexity,
        reference.test_perplexity,
    )
    assert [e.loss for e in history if e.kind == "step"] == [e.loss for e in expected if e.kind == "step"]
    figures.append(check_integrity(data))
    assert figures[-1]["partial_writes"] == 0
    assert figures[-1]["checkpoints"] == 2
    print(f"kill -9 twice, then resumed: {final.state} at step {final.step}; integrity after each: {figures}")


def test_sigterm_flips_health_first_refuses_new_calls_and_finishes_the_long_call(tmp_path, free_port):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port, "--grace-seconds", "300", "--log-level", "debug", service="vision")
    log = tmp_path / f"server-{port}.log"
    order: list[str] = []
    lock = threading.Lock()
    units = [("layer4", i % 7, i // 7) for i in range(16)]

    def note(what: str) -> None:
        with lock:
            order.append(what)

    try:
        with VisionClient(address, timeout=600) as client:
            client.wait_until_ready(timeout=WAIT_SECONDS)
            watch_channel = grpc.insecure_channel(address)
            watch = health_pb2_grpc.HealthStub(watch_channel).Watch(health_pb2.HealthCheckRequest(service=""))

            def follow_health() -> None:
                try:
                    for answer in watch:
                        note(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}")
                except grpc.RpcError:
                    note("health stream ended")

            outcome: dict = {}

            def long_call() -> None:
                result = client.compute_receptive_field(model="resnet18", units=units, verify=True)
                outcome["verified"] = (result.verified, len(result.units))
                note("ComputeReceptiveField answered")

            watcher = threading.Thread(target=follow_health, daemon=True)
            watcher.start()
            wait_for_order(order, lock, "health SERVING")
            caller = threading.Thread(target=long_call)
            caller.start()
            wait_for_text(log, "ComputeReceptiveField started")
            proc.send_signal(signal.SIGTERM)
            wait_for_order(order, lock, "health NOT_SERVING")
            with grpc.insecure_channel(address) as late:
                stub = vision_pb2_grpc.VisionServiceStub(late)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListModels(vision_pb2.ListModelsRequest(), timeout=10)
            note("new call refused")
            caller.join(timeout=600)
            watch.cancel()
            watcher.join(timeout=30)
            watch_channel.close()
        proc.wait(timeout=WAIT_SECONDS)
    finally:
        stop(proc)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert outcome.get("verified") == (True, len(units))
    assert order.index("health SERVING") < order.index("health NOT_SERVING")
    assert (
        order.index("health NOT_SERVING")
        < order.index("new call refused")
        < order.index("ComputeReceptiveField answered")
    )
    assert proc.returncode == 0
    server_log = log.read_text()
    assert server_log.index("draining") < server_log.index("ComputeReceptiveField OK")
    print(f"SIGTERM with a 16-unit resnet18 proof in flight: {order}; new call: {refused.value.code().name}")


def wait_for_text(path: Path, needle: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def wait_for_order(order: list[str], lock: threading.Lock, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with lock:
            if what in order:
                return
        time.sleep(0.02)
    raise AssertionError(f"{what!r} never happened: {order}")
