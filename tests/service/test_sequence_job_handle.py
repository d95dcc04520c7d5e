"""``SequenceClient.job(job_id)`` against an in-process SequenceService: a client that did not start the job
(a notebook after a kernel restart) finds it by id; ``watch()`` draws a bar of steps from where the job is to
its end, ``result()`` waits silently; both return the job with its history and curves."""

from __future__ import annotations

import io

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient
from PIL import Image


@pytest.fixture(scope="module")
def address(module_server_factory, tmp_path_factory):
    server, _ = module_server_factory("sequence", tmp_path_factory.mktemp("lm"), max_corpus_bytes=200_000)
    yield f"127.0.0.1:{server.port}"
    server.shutdown(0).wait()


@pytest.fixture(scope="module")
def corpus_id(address, pattern_text):
    with SequenceClient(address, timeout=60) as client:
        return client.upload_corpus(pattern_text(60), pattern_text(10, 60), pattern_text(10, 70)).corpus_id


def test_a_new_client_watches_a_job_to_its_end_with_a_bar_and_curves(address, corpus_id, tiny_lm, capsys):
    with SequenceClient(address, timeout=60) as first:
        started = first.start_training(corpus_id, epochs=2, seed=3, **tiny_lm)
    # The kernel that started it is gone: a new client knows only the id.
    with SequenceClient(address, timeout=60) as client:
        job = client.job(started.job_id).watch()
    assert job.state == "succeeded" and job.step == job.total_steps > 0
    steps = [e.step for e in job.events if e.kind == "step"]
    assert steps and max(steps) == job.total_steps
    with Image.open(io.BytesIO(job.plot_png)) as curves:
        assert curves.width > 100 and curves.height > 100
    bar = capsys.readouterr().err
    assert f"{job.total_steps}/{job.total_steps}" in bar and "steps" in bar
    assert '<img src="data:image/png;base64,' in job._repr_html_()


def test_result_waits_silently_and_a_finished_job_is_returned_at_once(address, corpus_id, tiny_lm, capsys):
    with SequenceClient(address, timeout=60) as client:
        started = client.start_training(corpus_id, epochs=1, seed=4, **tiny_lm)
        handle = client.job(started.job_id)
        job = handle.result()
        assert job.state == "succeeded" and job.events and job.plot_png
        again = handle.watch()  # already finished: no bar, the same job
        assert again.step == job.step and again.state == "succeeded"
        assert repr(handle) == f"JobHandle(job_id={started.job_id!r})"
    assert capsys.readouterr().err == ""


def test_an_unknown_job_is_not_found(address):
    with SequenceClient(address, timeout=30) as client, pytest.raises(NnprobeError) as info:
        client.job("job-0000000000000000").result()
    assert info.value.code == grpc.StatusCode.NOT_FOUND
