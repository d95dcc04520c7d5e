"""Data-parallel language-model jobs on a real sequence server process (CPU, gloo, 2 worker processes):
the loss trajectory, perplexities and weights match a single-process job with the same global batch;
CancelJob stops every worker; ResumeJob continues a cancelled job exactly; a killed server leaves no
worker behind."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from nnprobe import SequenceClient
from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.distributed import MODULE

from tests.support.processes import serve

pytestmark = pytest.mark.system

#: Float reduction order differs (2 half-batches, then all_reduce), so equality is up to rounding.
TOLERANCE = 1e-5
CONFIG = dict(
    embed_size=16,
    hidden_size=32,
    batch_size=4,
    sequence_length=8,
    epochs=2,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=1,
    checkpoint_interval=10,
    seed=5,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    root = tmp_path_factory.mktemp("lm-distributed")
    port = free_port()
    proc = serve("sequence", port, data=root / "data", cache=root / "cache", OMP_NUM_THREADS="1")
    client = SequenceClient(f"127.0.0.1:{port}", timeout=60)
    try:
        client.wait_until_ready(timeout=120)
        yield proc, client, root / "data"
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def corpus(server, pattern_text):
    _, client, _ = server
    return client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))


@pytest.fixture(scope="module")
def jobs(server, corpus):
    """The same job with 1 worker, and with 2 workers cancelled at its first checkpoint and resumed."""
    _, client, _ = server
    single = client.start_training(corpus.corpus_id, workers=1, **CONFIG)
    client.wait_job(single.job_id)
    started = time.monotonic()
    job = client.start_training(corpus.corpus_id, workers=2, **CONFIG)
    for event in client.watch_job(job.job_id):
        if event.kind == "checkpoint":
            break
    pids = workers_of(job.job_id)
    cancelled = client.cancel_job(job.job_id)
    gone = wait_until(lambda: not workers_of(job.job_id), 10)
    client.resume_job(job.job_id)
    client.wait_job(job.job_id)
    print(f"2-worker job, cancelled and resumed: {time.monotonic() - started:.1f} s wall")
    return {
        "single": client.get_job(single.job_id, history=True),
        "double": client.get_job(job.job_id, history=True),
        "pids": pids,
        "cancelled": cancelled,
        "gone": gone,
    }


def workers_of(job_id: str) -> list[int]:
    """Live worker processes of ``job_id`` (their command line names the module and the job's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if MODULE in command and job_id in command and "zombie" not in state:
            found.append(int(entry.name))
    return found


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def losses(job) -> list[float]:
    return [e.loss for e in job.events if e.kind == "step"]


def test_cancel_stops_every_worker(jobs):
    assert len(jobs["pids"]) == 2, jobs["pids"]
    cancelled = jobs["cancelled"]
    assert cancelled.state == "cancelled", cancelled.error
    assert 10 <= cancelled.checkpoint_step < cancelled.total_steps, "the job ended before the cancel"
    assert jobs["gone"], "worker processes outlived CancelJob"


def test_two_workers_follow_the_single_process_trajectory(server, jobs):
    _, _, data = server
    single, double = jobs["single"], jobs["double"]
    assert single.state == double.state == "succeeded", (single.error, double.error)
    assert double.config["workers"] == 2
    steps = [e.step for e in double.events if e.kind == "step"]
    assert steps == list(range(1, double.total_steps + 1))  # the resumed run picked up where it stopped
    a, b = losses(single), losses(double)
    assert len(a) == len(b) == single.total_steps == 2 * 26
    difference = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"max |loss(1 worker) - loss(2 workers)| over {len(a)} steps: {difference:.3g}")
    assert difference < TOLERANCE
    for x, y in (
        (single.valid_perplexity, double.valid_perplexity),
        (single.test_perplexity, double.test_perplexity),
    ):
        print(f"perplexity 1 worker {x:.9f}, 2 workers {y:.9f}")
        assert abs(x - y) < TOLERANCE * x
    payloads = [checkpoints.load(data / "jobs" / job.job_id / "checkpoint.pt") for job in (single, double)]
    gap = max(
        (payloads[0]["model"][k] - payloads[1]["model"][k]).abs().max().item() for k in payloads[0]["model"]
    )
    print(f"max |weight(1 worker) - weight(2 workers)|: {gap:.3g}")
    assert gap < 10 * TOLERANCE
    assert payloads[1]["workers"] == 2 and len(payloads[1]["generators"]) == 2
    assert payloads[1]["hidden"][0][0].shape == (1, 4, 32)  # every stream's carried state, rank order


def test_a_killed_server_leaves_no_worker(server, corpus, jobs):
    proc, client, _ = server
    job = client.start_training(corpus.corpus_id, workers=2, **dict(CONFIG, epochs=1000))
    for event in client.watch_job(job.job_id):
        if event.kind == "step":
            break
    assert len(workers_of(job.job_id)) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert wait_until(lambda: not workers_of(job.job_id), 15), workers_of(job.job_id)
