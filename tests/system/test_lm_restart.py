"""A sequence server process killed (SIGKILL) mid-training: restarted under the same replica name it
knows the job's runner died, takes the job over at once (no lease to wait for) and finishes it with
exactly the result of an uninterrupted run. The CLI follows the end of it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nnprobe import SequenceClient

from tests.support.processes import serve

pytestmark = pytest.mark.system
BIN = Path(sys.executable).parent


def start(tmp_path: Path, port: int) -> subprocess.Popen:
    return serve(
        "sequence",
        port,
        data=tmp_path / "data",
        cache=tmp_path / "cache",
        NNPROBE_REPLICA_ID="sequence-0",
        # Long enough that only the restart under the same name can explain a takeover.
        NNPROBE_JOB_LEASE_SECONDS="3600",
    )


def test_killed_server_job_is_taken_over_at_restart_and_finishes_exactly(
    tmp_path, resumable_lm, free_port, pattern_text
):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=120)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            reference = client.start_training(corpus.corpus_id, **resumable_lm)
            reference = client.wait_job(reference.job_id)
            assert reference.state == "succeeded"
            job = client.start_training(corpus.corpus_id, **resumable_lm)
            for event in client.watch_job(job.job_id):
                if event.kind == "checkpoint" and event.step >= 8:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)

    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=120)
            assert client.get_job(reference.job_id).state == "succeeded"
            cli = subprocess.run(
                [str(BIN / "nnprobe"), "lm", "watch", job.job_id, "--json", "--address", address],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert cli.returncode == 0, cli.stderr
            watched = json.loads(cli.stdout)
            assert watched["job"]["state"] == "succeeded"
            takeovers = [e for e in watched["events"] if e["message"].startswith("taken over")]
            assert len(takeovers) == 1
            resumed_at = takeovers[0]["step"]
            assert resumed_at >= 8 and resumed_at % resumable_lm["checkpoint_interval"] == 0
            assert takeovers[0]["message"] == (
                "taken over by replica sequence-0 from sequence-0, whose lease expired; "
                f"resuming from step {resumed_at}"
            )
            final = client.get_job(job.job_id, history=True)
            assert final.state == "succeeded"

            assert (final.valid_perplexity, final.test_perplexity) == (
                reference.valid_perplexity,
                reference.test_perplexity,
            )
            expected = client.get_job(reference.job_id, history=True).events
            assert [e.loss for e in final.events if e.kind == "step"] == [
                e.loss for e in expected if e.kind == "step"
            ]
            jobs = subprocess.run(
                [str(BIN / "nnprobe"), "lm", "jobs", "--json", "--address", address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert {j["job_id"]: j["state"] for j in json.loads(jobs.stdout)} == {
                job.job_id: "succeeded",
                reference.job_id: "succeeded",
            }
            a = client.embedding_distance(job.job_id, "w1", "w9")
            b = client.embedding_distance(reference.job_id, "w1", "w9")
            assert a.euclidean == b.euclidean
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
