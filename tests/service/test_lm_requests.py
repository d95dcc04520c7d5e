"""StartTraining's idempotency key and Sample's cancellation, through the SDK against in-process servers.

- The same ``request_id`` twice (one after the other, from eight threads at once, through two servers
  sharing one job store) names one job; the same key with another request is INVALID_ARGUMENT on
  ``request_id``; malformed keys are INVALID_ARGUMENT before anything runs.
- A Sample call cancelled by its client stops generating on the server: the sampling loop's ``Cancelled``
  says how many words it had generated, fewer than asked.

Expected job counts come from the test's own bookkeeping (threads started, ids returned), not the server.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2, sequence_pb2_grpc

from tests.support.waiting import progress, wait_for, wait_for_stops

#: Hang guard for calls; never a pass/fail threshold.
WAIT_SECONDS = 120.0
SAMPLE_WORDS = 20_000_000


@pytest.fixture(scope="module")
def pair(module_server_factory, tmp_path_factory):
    """Two servers (replicas r-a and r-b) sharing one SQLite job store and one data folder."""
    root = tmp_path_factory.mktemp("pair")
    url = f"sqlite:///{root / 'jobs.sqlite3'}"
    addresses = []
    for name in ("r-a", "r-b"):
        _, address = module_server_factory(
            "sequence",
            root,
            database_url=url,
            replica_id=name,
            max_queued_jobs=64,
            max_sample_words=SAMPLE_WORDS,
        )
        addresses.append(address)
    return addresses


@pytest.fixture(scope="module")
def corpus_id(pair, pattern_text) -> str:
    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as client:
        return client.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140)).corpus_id


def error_of(call, *args, **kwargs) -> NnprobeError:
    with pytest.raises(NnprobeError) as info:
        call(*args, **kwargs)
    return info.value


def test_the_same_key_twice_returns_one_job(pair, corpus_id, tiny_lm):
    key = str(uuid.uuid4())
    with (
        SequenceClient(pair[0], timeout=WAIT_SECONDS) as a,
        SequenceClient(pair[1], timeout=WAIT_SECONDS) as b,
    ):
        before = {j.job_id for j in a.list_jobs()}
        first = a.start_training(corpus_id, name="once", request_id=key, **dict(tiny_lm, epochs=1))
        again = b.start_training(corpus_id, name="once", request_id=key, **dict(tiny_lm, epochs=1))
        done = a.wait_job(first.job_id)
        after_done = a.start_training(corpus_id, name="once", request_id=key, **dict(tiny_lm, epochs=1))
        added = {j.job_id for j in b.list_jobs()} - before
    assert again.job_id == first.job_id == after_done.job_id
    assert added == {first.job_id}
    assert done.state == "succeeded" and after_done.state == "succeeded"  # the job as it is now


def test_concurrent_starts_with_one_key_create_one_job(pair, corpus_id, tiny_lm):
    key = str(uuid.uuid4())
    barrier = threading.Barrier(8)

    def start(i: int) -> str:
        with SequenceClient(pair[i % 2], timeout=WAIT_SECONDS) as client:
            barrier.wait(WAIT_SECONDS)
            return client.start_training(
                corpus_id, name="race", request_id=key, **dict(tiny_lm, epochs=1)
            ).job_id

    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as client:
        before = {j.job_id for j in client.list_jobs()}
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(start, range(8)))
        added = {j.job_id for j in client.list_jobs()} - before
        client.wait_job(ids[0])
    assert len(set(ids)) == 1
    assert added == set(ids)


def test_the_sdk_gives_each_call_its_own_key(pair, corpus_id, tiny_lm):
    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as client:
        first = client.start_training(corpus_id, **dict(tiny_lm, epochs=1, max_steps=2))
        second = client.start_training(corpus_id, **dict(tiny_lm, epochs=1, max_steps=2))
        assert first.job_id != second.job_id
        for job in (first, second):
            client.wait_job(job.job_id)


@pytest.mark.parametrize(
    "change",
    [{"seed": 99}, {"name": "other"}, {"corpus_id": "ptb"}, {"learning_rate": 0.002}],
    ids=["config", "name", "corpus", "learning rate"],
)
def test_the_same_key_with_another_request_is_invalid_argument(pair, corpus_id, tiny_lm, change):
    key = str(uuid.uuid4())
    base = {"corpus_id": corpus_id, "name": "base", **dict(tiny_lm, epochs=1, max_steps=2)}
    with (
        SequenceClient(pair[0], timeout=WAIT_SECONDS) as a,
        SequenceClient(pair[1], timeout=WAIT_SECONDS) as b,
    ):
        job = a.start_training(request_id=key, **base)
        error = error_of(b.start_training, request_id=key, **{**base, **change})
        a.wait_job(job.job_id)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["request_id"]
    assert job.job_id in error.message and "different request" in error.message


def test_the_same_key_with_the_same_training_spelled_otherwise_returns_the_job(pair, corpus_id, tiny_lm):
    """Defaults given explicitly (the clip norm, Adam's learning rate, zero sizes) or left out (the
    optimizer, as a raw request may) ask for the same training: the same job, through the other replica."""
    key = str(uuid.uuid4())
    base = {k: v for k, v in tiny_lm.items() if k != "learning_rate"} | {"epochs": 1, "max_steps": 2}
    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as a, grpc.insecure_channel(pair[1]) as channel:
        job = a.start_training(corpus_id, name="same", request_id=key, **base)
        spelled = {**base, "learning_rate": 0.002, "clip_norm": 0.5, "num_layers": 0}
        config = sequence_pb2.TrainingConfig(**spelled)  # optimizer left unspecified
        request = sequence_pb2.StartTrainingRequest(corpus_id=corpus_id, name="same", config=config)
        request.request_id = key
        again = sequence_pb2_grpc.SequenceServiceStub(channel).StartTraining(request, timeout=WAIT_SECONDS)
        a.wait_job(job.job_id)
    assert again.job.job_id == job.job_id


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("k" * 129, "at most 128"),
        ("has space", "character 3"),
        ("tab\t", "character 3"),
        ("é", "character 0"),
    ],
)
def test_malformed_keys_are_invalid_argument(pair, key, why):
    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as client:
        before = len(client.list_jobs())
        error = error_of(client.start_training, "no-such-corpus", request_id=key)
        assert len(client.list_jobs()) == before
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["request_id"] and why in error.message


def test_a_cancelled_sample_stops_generating_on_the_server(pair, corpus_id, tiny_lm, stops, requests_log):
    with SequenceClient(pair[0], timeout=WAIT_SECONDS) as client:
        job = client.start_training(corpus_id, **dict(tiny_lm, epochs=1))
        assert client.wait_job(job.job_id).state == "succeeded"
    with grpc.insecure_channel(pair[0]) as channel:
        stub = sequence_pb2_grpc.SequenceServiceStub(channel)
        request = sequence_pb2.SampleRequest(job_id=job.job_id, num_words=SAMPLE_WORDS)
        future = stub.Sample.future(request, timeout=600)
        wait_for(requests_log, "Sample started")
        future.cancel()
        wait_for(requests_log, "Sample CANCELLED")
        stopped = wait_for_stops(stops, rf"of {SAMPLE_WORDS} words")
    done, total = progress(stopped)
    assert total == SAMPLE_WORDS and done < total
    print(f"Sample cancelled: server {stopped}")
