"""``kill -9`` of the vision replica running a robustness job: two vision server processes share one data
folder and one job store (PostgreSQL, a server the suite starts, or SQLite in the shared data folder). The
owner, read from the job's watched events, is killed right after a progress event; the other replica takes
the job over once the lease expires and finishes it with exactly the per-image results (verdicts, queries,
predictions, adversarial PNG bytes) and accuracies of an uninterrupted job of the same request and seed.

The job is far longer than the gap between the watched event and the kill (hundreds of PGD steps for each
of 32 units), and the history must show the takeover, so a kill that came too late fails the test."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from nnprobe import Unavailable, VisionClient
from PIL import Image

from tests.support import tiny_cnn
from tests.support.processes import kill_hard, serve, stop

pytestmark = pytest.mark.system
#: Hang guard for processes, calls and streams; never a pass/fail threshold.
WAIT_SECONDS = 300.0
#: Long enough that a loaded machine's heartbeats keep up; the killed replica's job waits this long.
LEASE_SECONDS = 8
CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
#: 8 images one at a time at 4 budgets: 32 units of 600 PGD steps each.
REQUEST = dict(eps=["1/255", "2/255", "4/255", "8/255"], attacks="pgd", steps=600, seed=7, batch_size=1)
COUNT = 8
CLAIMED = re.compile(r"^(?:running \(replica (\S+)\)|taken over by replica (\S+) from )")


def launch(folder: Path, port: int, database_url: str | None, index: int) -> subprocess.Popen:
    database = {"NNPROBE_ROBUSTNESS_DATABASE_URL": database_url} if database_url else {}
    return serve(
        "vision",
        port,
        data=folder / "data",
        cache=folder / f"cache-{index}",
        log=folder / f"replica-{index}.log",
        NNPROBE_REPLICA_ID=f"vision-{index}",
        NNPROBE_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        NNPROBE_JOB_POLL_SECONDS="0.25",
        NNPROBE_WEIGHTS_DOWNLOAD_TIMEOUT="0",
        # Two processes on a small machine: one compute thread each, no oversubscription.
        OMP_NUM_THREADS="1",
        **database,
    )


def wait_ready(client: VisionClient, proc: subprocess.Popen, log: Path) -> None:
    """Wait until the server answers; fail at once, with its log, if it exits first."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            client.wait_until_ready(timeout=2)
            return
        except Unavailable:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in {WAIT_SECONDS} s:\n{log.read_text()[-3000:]}"


def owners(events) -> list[str]:
    """The replicas that claimed the job, in order, from its state messages."""
    return [m.group(1) or m.group(2) for e in events if (m := CLAIMED.match(e.message))]


def progress(events) -> list[int]:
    """The units done reported by the progress events, in order."""
    return [e.units_done for e in events if e.units_total]


def per_image(result) -> list[tuple]:
    """Each image's verdicts, attacks, queries, prediction and the SHA-256 of its adversarial PNGs."""
    return [
        (
            image.index,
            image.label,
            image.prediction,
            image.status,
            image.broken_by,
            image.queries,
            [hashlib.sha256(png).hexdigest() if png else None for png in image.adversarial],
        )
        for image in result.images
    ]


def upload(client: VisionClient, folder: Path) -> None:
    """The tiny CNN (seed 0) and 8 random images labelled with its predictions, except images 0 and 1."""
    net = tiny_cnn.network(0)
    model = tiny_cnn.write(folder / "tiny.pt2", tiny_cnn.pt2_bytes(net))
    client.upload_model(model, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
    pixels = np.random.default_rng(5).integers(0, 256, (COUNT, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        labels = net(tiny_cnn.normalised(x)).argmax(1)
    labels[:2] = (labels[:2] + 1) % tiny_cnn.CLASSES
    client.upload_dataset("eight", list(pixels), [tiny_cnn.LABELS[i] for i in labels.tolist()])


@pytest.mark.timeout(900)  # a hang guard over the calls' own: a loaded machine may take minutes
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_kill_9_of_the_owner_mid_evaluation_and_the_survivor_finishes_it_exactly(
    request, tmp_path, free_port, backend
):
    database_url = request.getfixturevalue("postgres").create_database() if backend == "postgresql" else None
    ports = [free_port(), free_port()]
    procs = [launch(tmp_path, port, database_url, i) for i, port in enumerate(ports)]
    clients = [VisionClient(f"127.0.0.1:{port}", timeout=WAIT_SECONDS) for port in ports]
    try:
        for i, client in enumerate(clients):
            wait_ready(client, procs[i], tmp_path / f"replica-{i}.log")
            client.list_robustness_jobs()  # connected before the job starts
        upload(clients[0], tmp_path)
        reference = clients[1].evaluate_robustness("tiny", "eight", name="reference", **REQUEST)
        expected = reference.result(timeout=WAIT_SECONDS)
        job = clients[0].evaluate_robustness("tiny", "eight", name="killed", **REQUEST)
        seen = []
        events = clients[0].watch_robustness_job(job.job_id, timeout=WAIT_SECONDS)
        for event in events:
            seen.append(event)
            if event.units_done >= 1 and owners(seen):
                break
        # The owner is read from the watched events: the kill follows the progress event with no call between.
        owner = owners(seen)[-1]
        victim = int(owner.rsplit("-", 1)[1])
        kill_hard(procs[victim], WAIT_SECONDS)
        events.close()
        survivor = 1 - victim
        result = clients[survivor].robustness_job(job.job_id).result(timeout=WAIT_SECONDS)
        history = list(clients[survivor].watch_robustness_job(job.job_id, timeout=WAIT_SECONDS))
        final = clients[survivor].get_robustness_job(job.job_id)
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            stop(proc)
    assert procs[victim].returncode == -9
    total = final.units_total
    assert final.state == "succeeded" and total == 4 * COUNT
    # The kill landed mid-evaluation: the survivor took the unfinished job over from the victim.
    claimed = owners(history)
    assert claimed[-1] == f"vision-{survivor}" and owner in claimed[:-1]
    takeovers = [e for e in history if e.message.startswith("taken over")]
    assert takeovers[-1].message == (
        f"taken over by replica vision-{survivor} from {owner}, whose lease expired"
    )
    cut = history.index(takeovers[-1])
    before, after = progress(history[:cut]), progress(history[cut:])
    assert before == list(range(1, before[-1] + 1)) and before[-1] < total
    # The survivor goes on from the victim's last checkpoint: the last unit reported, or the next one when
    # the victim died between writing that unit's checkpoint and recording its progress event.
    resumed_at = after[0] - 1
    assert 1 <= resumed_at <= before[-1] + 1, (before, after)
    assert after == [*range(resumed_at + 1, total + 1), total], after  # then the final state, saved again
    assert [e.message for e in history].count("finished") == 1
    # Exactly the uninterrupted job's results.
    assert per_image(result) == per_image(expected)
    assert [(e.epsilon, e.robust, e.accuracy, e.low, e.high) for e in result.per_epsilon] == [
        (e.epsilon, e.robust, e.accuracy, e.low, e.high) for e in expected.per_epsilon
    ]
    assert result.clean_correct == expected.clean_correct == COUNT - 2
    broken = sum(png is not None for image in result.images for png in image.adversarial)
    assert broken > 0  # adversarial images were compared, not only verdicts
    for image in result.images:
        for png in image.adversarial:
            if png is not None:
                assert Image.open(io.BytesIO(png)).size == (tiny_cnn.SIDE, tiny_cnn.SIDE)
    print(
        f"{backend}: kill -9 of {owner} after unit {seen[-1].units_done}; taken over by vision-{survivor} "
        f"at unit {resumed_at} of {total}; {broken} adversarial PNGs identical to the reference"
    )
