"""The SDK and CLI against an in-process SequenceService: a training job's TensorBoard run, downloaded with
``download_tensorboard``, ``job(...).tensorboard`` and ``nnprobe lm tensorboard``, reads back (TensorBoard's
own reader) as exactly the job's history; hyper-parameters in the same run; each evaluation's text sample
equals the Sample RPC's draw from that step's checkpoint; a cancelled and resumed job has each step and
sample once; an unknown job is NOT_FOUND; a log that cannot be written leaves the job unharmed."""

import grpc
import numpy as np
import pytest
from nnprobe import NnprobeError, SequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc
from nnprobe.cli import main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.support.tensorboard_runs import texts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lm-tensorboard")


@pytest.fixture(scope="module")
def address(module_server_factory, data_dir):
    server, address = module_server_factory("sequence", data_dir, max_queued_jobs=4)
    yield address
    server.shutdown(0).wait()


@pytest.fixture(scope="module")
def lm(address):
    with SequenceClient(address, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def corpus(lm, pattern_text):
    return lm.upload_corpus(pattern_text(60), pattern_text(20, 60), pattern_text(20, 80), name="patterns")


@pytest.fixture(scope="module")
def options(tiny_lm):
    return dict(tiny_lm, epochs=2, log_interval=3, checkpoint_interval=4, seed=3)


@pytest.fixture(scope="module")
def trained(lm, corpus, options):
    job = lm.start_training(corpus.corpus_id, **options)
    lm.wait_job(job.job_id)
    return lm.get_job(job.job_id, history=True)


def read_back(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {
        tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }
    return scalars, accumulator.PluginTagToContent("hparams")


def from_history(job):
    """What TensorBoard must show: the history's values, as float32 (TensorBoard's scalar type)."""
    steps = [e for e in job.events if e.kind == "step"]
    evaluations = [e for e in job.events if e.kind == "evaluation"]

    def rows(events, name):
        return [(e.step, float(np.float32(getattr(e, name)))) for e in events]

    return {
        "train/loss": rows(steps, "loss"),
        "train/perplexity": rows(steps, "perplexity"),
        "train/learning_rate": rows(steps, "learning_rate"),
        "valid/perplexity": rows(evaluations, "valid_perplexity"),
        "test/perplexity": rows(evaluations, "test_perplexity"),
    }


def test_the_downloaded_run_is_the_jobs_history_with_its_hyperparameters(
    lm, address, trained, options, tmp_path
):
    logs = lm.download_tensorboard(trained.job_id, tmp_path / "tb")
    assert [p.parent for p in logs.files] == [tmp_path / "tb"] and len(logs.files) == 1
    assert logs.total_bytes == sum(p.stat().st_size for p in logs.files) > 0
    scalars, hparams = read_back(tmp_path / "tb")
    expected = from_history(trained)
    assert len(expected["train/loss"]) >= 4 and len(expected["valid/perplexity"]) == 2
    for tag, rows in expected.items():
        assert scalars[tag] == rows, tag
    with grpc.insecure_channel(address) as channel:  # grad_norm, as the wire's history carries it
        request = pb.GetJobRequest(job_id=trained.job_id, history=True)
        raw = sequence_pb2_grpc.SequenceServiceStub(channel).GetJob(request, timeout=60).events
    norms = [(e.step, float(np.float32(e.grad_norm))) for e in raw if e.kind == pb.JOB_EVENT_KIND_STEP]
    assert scalars["train/grad_norm"] == norms and all(value > 0 for _, value in norms)
    sdk_norms = [(e.step, float(np.float32(e.grad_norm))) for e in trained.events if e.kind == "step"]
    assert sdk_norms == norms  # the SDK's events carry it too
    assert not [p for p in (tmp_path / "tb").iterdir() if p.is_dir()]  # hparams are not a sub-run
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["hidden_size"].number_value == options["hidden_size"]
    assert values["epochs"].number_value == 2 and values["optimizer"].string_value == "adam"


def rpc_sample(lm, job, step, checkpoint="last"):
    """The Sample RPC's default draw (after <eos>, temperature 1) of 30 words from a checkpoint of ``job``
    with the documented evaluation seed, (job seed * 1_000_003 + step) mod 2**63."""
    seed = (job.config["seed"] * 1_000_003 + step) % 2**63
    drawn = lm.sample(job.job_id, num_words=30, seed=seed, checkpoint=checkpoint)
    assert drawn.step == step
    return drawn.text


def test_each_evaluation_has_the_sample_the_rpc_draws_from_its_checkpoint(lm, trained, tmp_path):
    lm.download_tensorboard(trained.job_id, tmp_path)
    read = texts(tmp_path)
    steps = [e.step for e in trained.events if e.kind == "evaluation"]
    assert [step for step, _ in read] == steps and len(steps) == 2
    assert read[-1][1] == rpc_sample(lm, trained, steps[-1])  # the last checkpoint is the last step's
    best = trained.best_step  # the best checkpoint: an evaluation's step too
    assert dict(read)[best] == rpc_sample(lm, trained, best, "best")


def test_the_job_handle_and_the_cli_write_the_same_files(lm, address, trained, tmp_path, capsys):
    by_sdk = lm.download_tensorboard(trained.job_id, tmp_path / "sdk")
    by_handle = lm.job(trained.job_id).tensorboard(tmp_path / "handle")
    assert (
        main(["lm", "tensorboard", trained.job_id, "--out", str(tmp_path / "cli"), "--address", address]) == 0
    )
    assert f"tensorboard --logdir {tmp_path / 'cli'}" in capsys.readouterr().out
    for folder in ("handle", "cli"):
        names = sorted(p.name for p in (tmp_path / folder).iterdir())
        assert names == [p.name for p in by_sdk.files], folder
        for path in by_sdk.files:
            assert (tmp_path / folder / path.name).read_bytes() == path.read_bytes()
        assert read_back(tmp_path / folder)[0] == read_back(tmp_path / "sdk")[0]
    assert by_handle.job_id == trained.job_id


def test_an_unknown_job_is_not_found(lm, address, tmp_path, capsys):
    with pytest.raises(NnprobeError) as info:
        lm.download_tensorboard("job-nope", tmp_path / "x")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "job-nope" in info.value.message
    assert main(["lm", "tensorboard", "job-nope", "--out", str(tmp_path / "y"), "--address", address]) != 0
    assert "NOT_FOUND" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_cancelled_and_resumed_job_has_each_step_once(lm, corpus, options, tmp_path):
    job = lm.start_training(corpus.corpus_id, **dict(options, epochs=4, log_interval=1))
    for event in lm.watch_job(job.job_id):
        if event.kind == "checkpoint" and event.step >= 8:
            break
    lm.cancel_job(job.job_id)
    lm.resume_job(job.job_id)
    lm.wait_job(job.job_id)
    final = lm.get_job(job.job_id, history=True)
    assert final.state == "succeeded"
    logs = lm.download_tensorboard(job.job_id, tmp_path)
    assert len(logs.files) == 2  # one file per run
    scalars, _ = read_back(tmp_path)
    steps = [s for s, _ in scalars["train/loss"]]
    assert steps == list(range(1, final.total_steps + 1))  # log_interval 1: every step, once
    for tag, rows in from_history(final).items():
        assert scalars[tag] == rows, tag
    read = texts(tmp_path)  # one sample per evaluation, the last from the resumed run's final model
    assert [step for step, _ in read] == [e.step for e in final.events if e.kind == "evaluation"]
    assert read[-1][1] == rpc_sample(lm, final, final.total_steps)


def test_a_log_that_cannot_be_written_leaves_the_job_unharmed(lm, corpus, options, data_dir, tmp_path):
    """The log folder of a queued job is a file: the job runs, succeeds and records what its twin (same
    config, a working log) records; its download is empty."""
    blocker = lm.start_training(corpus.corpus_id, **dict(options, epochs=500))
    broken = lm.start_training(corpus.corpus_id, **options)
    twin = lm.start_training(corpus.corpus_id, **options)
    folder = data_dir / "data" / "jobs" / broken.job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tensorboard").write_text("not a folder")
    assert lm.get_job(broken.job_id).state == "queued"
    lm.cancel_job(blocker.job_id)
    for job in (broken, twin):
        lm.wait_job(job.job_id)
    a, b = (lm.get_job(j.job_id, history=True) for j in (broken, twin))
    assert a.state == b.state == "succeeded"
    records = [
        [(e.kind, e.step, e.loss, e.valid_perplexity) for e in j.events if e.kind in ("step", "evaluation")]
        for j in (a, b)
    ]
    assert records[0] == records[1] and records[0]
    assert lm.download_tensorboard(broken.job_id, tmp_path / "broken").files == []
    assert len(lm.download_tensorboard(twin.job_id, tmp_path / "twin").files) == 1


def test_files_over_the_message_limit_are_resource_exhausted(
    module_server_factory, tmp_path, pattern_text, options
):
    """max_message_bytes 70,000: files over 70,000 - 65,536 = 4,464 bytes are refused, naming the sizes."""
    server, address = module_server_factory("sequence", tmp_path / "small", max_message_bytes=70_000)
    with SequenceClient(address, timeout=120) as client:
        corpus = client.upload_corpus(pattern_text(60), pattern_text(20, 60), name="p")
        job = client.start_training(corpus.corpus_id, **dict(options, log_interval=1))
        client.wait_job(job.job_id)
        folder = tmp_path / "small" / "data" / "jobs" / job.job_id / "tensorboard"
        size = sum(p.stat().st_size for p in folder.iterdir())
        assert size > 4_464
        with pytest.raises(NnprobeError) as info:
            client.download_tensorboard(job.job_id, tmp_path / "out")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{size} bytes, over the 4464 bytes" in info.value.message
    assert not (tmp_path / "out").exists()
    server.shutdown(0).wait()
