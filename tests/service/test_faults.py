"""Faults against in-process servers: a client that cancels (or whose deadline passes) stops the server's
work, and a checkpoint that cannot be written fails the job cleanly with the previous checkpoint intact.

"Stopped early" is measured on the server, by counts: the work loop's ``Cancelled`` exception records
how far it got ("stopped after 512 of 1000032 permutations"), and the request log line says CANCELLED.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nnprobe import SequenceClient
from nnprobe.api.attention.v1 import attention_pb2, attention_pb2_grpc
from nnprobe.api.sequence.v1 import sequence_pb2, sequence_pb2_grpc
from nnprobe.api.vision.v1 import vision_pb2, vision_pb2_grpc

from tests.support.waiting import WAIT_SECONDS, progress, wait_for, wait_for_stops


@pytest.fixture(scope="module")
def servers(module_server_factory, tmp_path_factory) -> Iterator[dict[str, Any]]:
    started = {
        s: module_server_factory(s, tmp_path_factory.mktemp(s)) for s in ("vision", "sequence", "attention")
    }
    channels = {s: grpc.insecure_channel(address) for s, (_, address) in started.items()}
    channels.update({f"{s}_address": address for s, (_, address) in started.items()})
    yield channels
    for channel in channels.values():
        if isinstance(channel, grpc.Channel):
            channel.close()
    for server, _ in started.values():
        server.shutdown(0).wait()


def test_cancelled_permutation_check_stops_the_server_loop(servers, stops, requests_log):
    stub = attention_pb2_grpc.AttentionServiceStub(servers["attention"])
    request = attention_pb2.CheckPermutationEquivarianceRequest(
        attention=attention_pb2.SelfAttention(sequence_length=32, model_dim=64),
        permutations=attention_pb2.PermutationOptions(
            strategy=attention_pb2.PERMUTATION_STRATEGY_SAMPLED, num_samples=1_000_000
        ),
    )
    future = stub.CheckPermutationEquivariance.future(request, timeout=600)
    wait_for(requests_log, "CheckPermutationEquivariance started")
    future.cancel()
    wait_for(requests_log, "CheckPermutationEquivariance CANCELLED")
    stopped = wait_for_stops(stops, r"of 1000032 permutations")
    done, total = progress(stopped)
    assert total == 1_000_000 + 32 and done < total
    print(f"CheckPermutationEquivariance cancelled: server {stopped}")


def test_deadline_stops_a_gradient_sweep_on_the_server(servers, stops, requests_log):
    stub = sequence_pb2_grpc.SequenceServiceStub(servers["sequence"])
    request = sequence_pb2.AnalyzeGradientsRequest(
        cells=[sequence_pb2.CELL_TYPE_LSTM, sequence_pb2.CELL_TYPE_GRU],
        hidden_size=48,
        sequence_length=2000,
        spectral_radii=[0.5 + 0.05 * i for i in range(32)],
    )
    with pytest.raises(grpc.RpcError) as info:
        for _ in stub.AnalyzeGradients(request, timeout=3):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(requests_log, "AnalyzeGradients DEADLINE_EXCEEDED")
    stopped = wait_for_stops(
        stops, r"stopped (at forward step \d+ of 2000|with \d+ Jacobians of|after \d+ of \d+ Jacobian steps)"
    )
    print(f"AnalyzeGradients deadline (64 runs of T=2000): server {stopped}")


def test_cancelled_receptive_field_verification_and_effective_field_stop(servers, stops, requests_log):
    stub = vision_pb2_grpc.VisionServiceStub(servers["vision"])
    verify = vision_pb2.ComputeReceptiveFieldRequest(
        model=vision_pb2.ModelSpec(name="resnet18"),
        units=[vision_pb2.UnitQuery(layer="layer4", x=x % 7, y=x // 7) for x in range(49)] * 4,
        verify=True,
    )
    effective = vision_pb2.ComputeReceptiveFieldRequest(
        model=vision_pb2.ModelSpec(name="resnet18"),
        effective_field=vision_pb2.EffectiveFieldOptions(num_samples=256),
    )
    for request, unit in ((verify, "units"), (effective, "samples")):
        requests_log.clear()
        future = stub.ComputeReceptiveField.future(request, timeout=600)
        wait_for(requests_log, "ComputeReceptiveField started")
        future.cancel()
        wait_for(requests_log, "ComputeReceptiveField CANCELLED")
        expected = 196 if unit == "units" else 256
        stopped = wait_for_stops(stops, rf"of {expected} {unit}")
        stops.clear()
        done, total = progress(stopped)
        assert done < total == expected
        print(f"ComputeReceptiveField cancelled: server {stopped}")


def test_cancelled_watch_ends_on_the_server_while_the_job_runs(servers, requests_log):
    with SequenceClient(servers["sequence_address"], timeout=120) as client:
        corpus = client.upload_corpus(_text(120), _text(20, 120), _text(20, 140))
        job = client.start_training(
            corpus.corpus_id,
            embed_size=8,
            hidden_size=8,
            batch_size=4,
            sequence_length=8,
            epochs=10_000,
            eval_batch_size=2,
            log_interval=1,
            checkpoint_interval=1000,
        )
        stub = sequence_pb2_grpc.SequenceServiceStub(servers["sequence"])
        stream = stub.WatchJob(sequence_pb2.WatchJobRequest(job_id=job.job_id), timeout=600)
        for response in stream:
            if response.event.kind == sequence_pb2.JOB_EVENT_KIND_STEP:
                break
        stream.cancel()
        wait_for(requests_log, "WatchJob CANCELLED")
        running = client.get_job(job.job_id)
        assert running.state == "running" and running.step < running.total_steps
        print(f"WatchJob cancelled; job still running at step {running.step} of {running.total_steps}")
        assert client.cancel_job(job.job_id).state == "cancelled"


def test_cancelled_adversarial_attack_stops_between_iterations(servers, requests_log):
    import io

    from nnprobe.api.common.v1 import common_pb2
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), (90, 140, 200)).save(buffer, format="PNG")
    stub = vision_pb2_grpc.VisionServiceStub(servers["vision"])
    request = vision_pb2.GenerateAdversarialRequest(
        images=[common_pb2.Image(encoded=buffer.getvalue())],
        goal=vision_pb2.ATTACK_GOAL_UNTARGETED,
        method=vision_pb2.ATTACK_METHOD_PGD,
        steps=1000,
        early_stop=False,
    )
    stream = stub.GenerateAdversarial(request, timeout=600)
    for response in stream:
        if response.WhichOneof("event") == "progress":
            break
    stream.cancel()
    wait_for(requests_log, "GenerateAdversarial CANCELLED")
    deadline = time.monotonic() + WAIT_SECONDS
    stop_line = None
    while stop_line is None and time.monotonic() < deadline:
        stop_line = next(
            (
                r.getMessage()
                for r in list(requests_log.records)
                if "stopped after iteration" in r.getMessage()
            ),
            None,
        )
        time.sleep(0.02)
    assert stop_line is not None, requests_log.text
    done, total = progress(stop_line)
    assert done < total == 1000
    print(f"GenerateAdversarial cancelled: server {stop_line}")


def _text(lines: int, offset: int = 0) -> str:
    words = [f"w{i}" for i in range(20)]
    return "".join(
        " ".join(words[(3 * (k + offset) + j) % 20] for j in range(6)) + "\n" for k in range(lines)
    )


# -- a checkpoint that cannot be written ----------------------------------------------------------------


def test_full_disk_during_a_checkpoint_fails_the_job_and_keeps_the_previous_checkpoint(
    server_factory, tmp_path: Path, monkeypatch
):
    from nnprobe_services.sequence.lm import checkpoints

    written: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint.pt." in target:
            if len(written) >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(target)
        real_fsync(fd)

    server, address = server_factory("sequence", tmp_path)
    data = tmp_path / "data"
    try:
        with SequenceClient(address, timeout=120) as client:
            corpus = client.upload_corpus(_text(120), _text(20, 120), _text(20, 140))
            monkeypatch.setattr(os, "fsync", fsync)
            job = client.start_training(
                corpus.corpus_id,
                embed_size=8,
                hidden_size=16,
                batch_size=4,
                sequence_length=8,
                epochs=3,
                eval_batch_size=2,
                log_interval=2,
                checkpoint_interval=4,
            )
            failed = client.wait_job(job.job_id)
            monkeypatch.undo()
            assert failed.state == "failed"
            assert "No space left on device" in failed.error and "checkpoint" in failed.error
            assert f"the checkpoint of step {failed.checkpoint_step} is kept" in failed.error
            assert failed.checkpoint_step == 8  # two checkpoints (steps 4 and 8) were written
            print(f"checkpoint on a full disk: job {failed.state}: {failed.error}")
            payload = checkpoints.load(data / "jobs" / job.job_id / "checkpoint.pt")  # checksum verified
            assert payload["step"] == 8
            perplexity = client.evaluate_perplexity(job.job_id)
            assert perplexity.step == 8
    finally:
        server.shutdown(0).wait()
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (digest,) = db.execute(
            "SELECT checkpoint_sha256 FROM jobs WHERE job_id = ?", (job.job_id,)
        ).fetchone()
    header = (data / "jobs" / job.job_id / "checkpoint.pt").read_bytes().split(b"\n", 1)[0]
    assert header == b"NNPROBE-CKPT1 " + digest.encode()


def test_partial_writes_of_a_killed_server_are_removed_at_start(server_factory, tmp_path: Path):
    """Regression: a server killed between creating a checkpoint's temporary file and renaming it left
    ``.checkpoint.pt.<random>.tmp`` behind for ever. The next start removes such files; a file that a live
    writer may still be writing (newer than the start) is kept."""
    data = tmp_path / "data"
    stale = [
        data / "jobs" / "job-000000000001" / ".checkpoint.pt.k2j3h4.tmp",
        data / "corpora" / "corpus-0000000000000001" / ".train.txt.a8b9c0.tmp",
    ]
    fresh = data / "jobs" / "job-000000000002" / ".checkpoint.pt.zz9x8y.tmp"
    for path in [*stale, fresh]:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"NNPROBE-CKPT1 half a checkpoint")
    for path in stale:
        os.utime(path, (time.time() - 60, time.time() - 60))
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))
    server, _ = server_factory("sequence", tmp_path)
    server.shutdown(0).wait()
    assert not any(path.exists() for path in stale)
    assert fresh.exists()
