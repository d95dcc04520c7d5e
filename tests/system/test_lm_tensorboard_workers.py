"""A data-parallel job (2 worker processes, CPU, gloo) on a real sequence server: its TensorBoard run is one
event file, written by the server from rank 0's events (no worker writes one), equal to the job's history;
its gradient norms (of the averaged gradients) match the single-process job's with the same global batch;
its evaluation's text sample, drawn by rank 0, is the Sample RPC's draw from the job's final checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from nnprobe import SequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.processes import serve, stop
from tests.support.tensorboard_runs import texts

pytestmark = pytest.mark.system

CONFIG = dict(
    embed_size=16,
    hidden_size=32,
    batch_size=4,
    sequence_length=8,
    epochs=1,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=1,
    checkpoint_interval=10,
    seed=5,
    dropout=0.0,
)


def step_norms(address: str, job_id: str) -> list[tuple[int, float]]:
    with grpc.insecure_channel(address) as channel:
        request = pb.GetJobRequest(job_id=job_id, history=True)
        events = sequence_pb2_grpc.SequenceServiceStub(channel).GetJob(request, timeout=60).events
    return [(e.step, e.grad_norm) for e in events if e.kind == pb.JOB_EVENT_KIND_STEP]


def test_a_data_parallel_job_has_one_run_written_from_rank_0(tmp_path, free_port, pattern_text):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = serve("sequence", port, data=tmp_path / "data", cache=tmp_path / "cache", OMP_NUM_THREADS="1")
    try:
        with SequenceClient(address, timeout=60) as client:
            client.wait_until_ready(timeout=120)
            corpus = client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            single = client.start_training(corpus.corpus_id, workers=1, **CONFIG)
            double = client.start_training(corpus.corpus_id, workers=2, **CONFIG)
            for job in (single, double):
                assert client.wait_job(job.job_id, timeout=300).state == "succeeded"
            history = client.get_job(double.job_id, history=True)
            logs = client.download_tensorboard(double.job_id, tmp_path / "download")
            norms = {job.job_id: step_norms(address, job.job_id) for job in (single, double)}
            seed = (CONFIG["seed"] * 1_000_003 + history.total_steps) % 2**63  # the documented sample seed
            redrawn = client.sample(double.job_id, num_words=30, seed=seed)
    finally:
        stop(proc)
    job_folder = tmp_path / "data" / "jobs" / double.job_id
    written = sorted(p.relative_to(job_folder) for p in job_folder.rglob("events.out.tfevents.*"))
    assert written == [Path("tensorboard") / logs.files[0].name] and len(logs.files) == 1
    accumulator = EventAccumulator(str(tmp_path / "download"), size_guidance={"scalars": 0})
    accumulator.Reload()
    losses = [(s.step, s.value) for s in accumulator.Scalars("train/loss")]
    assert losses == [(e.step, float(np.float32(e.loss))) for e in history.events if e.kind == "step"]
    logged = [(s.step, s.value) for s in accumulator.Scalars("train/grad_norm")]
    assert logged == [(step, float(np.float32(value))) for step, value in norms[double.job_id]]
    a, b = norms[single.job_id], norms[double.job_id]
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 10
    for (_, one), (_, two) in zip(a, b, strict=True):
        assert math.isclose(one, two, rel_tol=1e-4), (one, two)
    evaluations = [e.step for e in history.events if e.kind == "evaluation"]
    assert evaluations == [history.total_steps] and redrawn.step == history.total_steps
    assert texts(tmp_path / "download") == [(history.total_steps, redrawn.text)]
