"""A sequence server killed (SIGKILL) mid-training after its job logged steps past its last checkpoint:
restarted, it takes the job over from that checkpoint, and the job's TensorBoard run, downloaded through the
SDK and read with TensorBoard's own reader, shows every step once with the final history's values (the
restarted run's file purges what the killed run logged past the checkpoint), and each evaluation's text sample
once, the last the Sample RPC's draw from the final checkpoint."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from nnprobe import SequenceClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.processes import serve, stop
from tests.support.tensorboard_runs import scalars, texts

pytestmark = pytest.mark.system


def start(tmp_path: Path, port: int) -> subprocess.Popen:
    return serve(
        "sequence",
        port,
        data=tmp_path / "data",
        cache=tmp_path / "cache",
        NNPROBE_REPLICA_ID="sequence-0",
        NNPROBE_JOB_LEASE_SECONDS="3600",  # only the restart under the same name explains a takeover
    )


def losses(folder: Path) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(s.step, s.value) for s in accumulator.Scalars("train/loss")]


def test_a_taken_over_job_logs_each_step_once(tmp_path, resumable_lm, free_port, pattern_text):
    options = dict(resumable_lm, log_interval=1, checkpoint_interval=10, epochs=3)
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=120)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            job = client.start_training(corpus.corpus_id, **options)
            for event in client.watch_job(job.job_id):
                if event.kind == "step" and event.step == 13:
                    break  # three steps logged past the checkpoint of step 10; the next is at 20
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    folder = tmp_path / "data" / "jobs" / job.job_id / "tensorboard"
    logged_before = max(step for step, _ in losses(folder))

    proc = start(tmp_path, port)
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=120)
            client.wait_job(job.job_id, timeout=300)
            final = client.get_job(job.job_id, history=True)
            logs = client.download_tensorboard(job.job_id, tmp_path / "download")
            seed = (final.config["seed"] * 1_000_003 + final.total_steps) % 2**63  # the documented seed
            redrawn = client.sample(job.job_id, num_words=30, seed=seed)
    finally:
        stop(proc)
    assert final.state == "succeeded"
    taken_over = [e for e in final.events if e.kind == "state" and e.message.startswith("taken over")]
    assert len(taken_over) == 1
    resumed_at = taken_over[0].step
    assert logged_before > resumed_at  # the killed run logged steps that the restarted run repeats
    assert len(logs.files) == 2, [p.name for p in logs.files]  # the killed run's file and the new run's
    read = losses(tmp_path / "download")
    steps = [e for e in final.events if e.kind == "step"]
    assert [s for s, _ in read] == list(range(1, final.total_steps + 1)), (logged_before, resumed_at)
    assert read == [(e.step, float(np.float32(e.loss))) for e in steps]
    assert scalars(tmp_path / "download", "train/loss") == read  # TensorBoard's server purges as well
    samples = texts(tmp_path / "download")
    assert [step for step, _ in samples] == [e.step for e in final.events if e.kind == "evaluation"]
    assert len(samples) == 3 and samples[-1] == (final.total_steps, redrawn.text)
