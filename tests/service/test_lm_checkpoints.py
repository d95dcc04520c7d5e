"""The SDK (and CLI) against an in-process SequenceService: a job's best-validation checkpoint beside its
last one, the model queries' ``checkpoint`` choice, early stopping, the history of a cancelled and resumed
job, one step everywhere in a job's summary, and the corpus name in the job listing."""

import json

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient
from nnprobe.cli import main


@pytest.fixture(scope="module")
def server(module_server_factory, tmp_path_factory):
    server, _ = module_server_factory("sequence", tmp_path_factory.mktemp("lm"), max_queued_jobs=4)
    yield server
    server.shutdown(0).wait()


@pytest.fixture(scope="module")
def address(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def lm(address):
    with SequenceClient(address, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def corpus(lm, pattern_text):
    return lm.upload_corpus(
        pattern_text(120), pattern_text(20, 120), pattern_text(20, 140), name="twenty-word patterns"
    )


@pytest.fixture(scope="module")
def options(tiny_lm):
    """lr 0.1 over 6 epochs: validation perplexity bottoms out at epoch 5 and rises at epoch 6, so the best
    checkpoint is not the last."""
    return dict(tiny_lm, epochs=6, seed=7, learning_rate=0.1)


@pytest.fixture(scope="module")
def trained(lm, corpus, options):
    job = lm.start_training(corpus.corpus_id, **options)
    lm.wait_job(job.job_id)
    return lm.get_job(job.job_id, history=True)


def error_of(call, *args, **kwargs) -> NnprobeError:
    with pytest.raises(NnprobeError) as info:
        call(*args, **kwargs)
    return info.value


def first_argmin(evaluations):
    return min(range(len(evaluations)), key=lambda i: (evaluations[i].valid_perplexity, i))


def test_the_best_checkpoint_is_the_lowest_validation_perplexity_and_queries_choose_it(lm, trained):
    evaluations = [e for e in trained.events if e.kind == "evaluation"]
    best = evaluations[first_argmin(evaluations)]
    assert trained.state == "succeeded" and len(evaluations) == 6
    assert (trained.best_step, trained.best_valid_perplexity) == (best.step, best.valid_perplexity)
    assert best.step < trained.step == trained.total_steps  # the last evaluation was worse
    at_best = lm.evaluate_perplexity(trained.job_id, checkpoint="best")
    at_last = lm.evaluate_perplexity(trained.job_id, checkpoint="last")
    default = lm.evaluate_perplexity(trained.job_id)
    assert at_best.step == best.step and at_best.perplexity == pytest.approx(best.valid_perplexity, rel=1e-9)
    assert at_last.step == trained.step and at_last.perplexity == pytest.approx(
        evaluations[-1].valid_perplexity, rel=1e-9
    )
    assert (default.step, default.perplexity) == (at_last.step, at_last.perplexity)  # unspecified: last
    assert lm.sample(trained.job_id, num_words=5, checkpoint="best").step == best.step
    assert lm.sample(trained.job_id, num_words=5).step == trained.step
    assert lm.nearest_words(trained.job_id, "w1", k=3, checkpoint="best").step == best.step
    near_last = lm.nearest_words(trained.job_id, "w1", k=3, checkpoint="last")
    assert near_last.step == trained.step
    assert lm.embedding_distance(trained.job_id, "w1", "w2", checkpoint="best").step == best.step


def test_best_before_any_evaluation_is_a_failed_precondition(lm, pattern_text, tiny_lm):
    """A corpus without a valid split is never evaluated for validation: there is no best checkpoint."""
    no_valid = lm.upload_corpus(pattern_text(60), "", pattern_text(20, 140), name="no valid split")
    job = lm.start_training(no_valid.corpus_id, epochs=1, seed=1, **tiny_lm)
    done = lm.wait_job(job.job_id)
    assert done.state == "succeeded" and done.best_step == -1
    error = error_of(lm.sample, job.job_id, num_words=3, checkpoint="best")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no best checkpoint yet" in error.message and "checkpoint=last" in error.message
    assert lm.sample(job.job_id, num_words=3, checkpoint="last").step == done.step
    patience = error_of(lm.start_training, no_valid.corpus_id, patience=2, **tiny_lm)
    assert patience.code == grpc.StatusCode.FAILED_PRECONDITION and "config.patience" in str(patience)


def test_an_unknown_checkpoint_choice_is_refused_before_sending(lm, trained):
    with pytest.raises(ValueError, match="checkpoint"):
        lm.sample(trained.job_id, checkpoint="first")


def test_negative_patience_is_an_invalid_argument_naming_the_field(lm, corpus, tiny_lm):
    error = error_of(lm.start_training, corpus.corpus_id, patience=-1, **tiny_lm)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["config.patience"]


def stop_index(values, patience):
    """Brute force: the first evaluation k whose last ``patience`` values none beat everything before."""
    for k in range(patience, len(values)):
        if min(values[k - patience + 1 : k + 1]) >= min(values[: k - patience + 1]):
            return k
    return None


def test_patience_stops_early_as_completed_with_a_reason(lm, corpus, tiny_lm, trained):
    """lr 0.05: validation perplexity rises at epoch 4 and falls again; patience 1 stops there. The
    uninterrupted run (no patience) is the independent source of where."""
    config = dict(tiny_lm, epochs=6, seed=7, learning_rate=0.05)
    full = lm.get_job(lm.wait_job(lm.start_training(corpus.corpus_id, **config).job_id).job_id, history=True)
    values = [e.valid_perplexity for e in full.events if e.kind == "evaluation"]
    k = stop_index(values, 1)
    assert k is not None and full.stop_reason == f"finished all {full.total_steps} steps"
    job = lm.wait_job(lm.start_training(corpus.corpus_id, patience=1, **config).job_id)
    stop_step = (k + 1) * job.steps_per_epoch
    best = min(range(k + 1), key=lambda i: (values[i], i))
    assert job.state == "succeeded" and job.step == stop_step < job.total_steps
    assert job.config["patience"] == 1 and job.best_step == (best + 1) * job.steps_per_epoch
    assert f"stopped early at step {stop_step} of {job.total_steps}" in job.stop_reason
    assert f"best {values[best]:.4f} at step {job.best_step}" in job.stop_reason
    history = lm.get_job(job.job_id, history=True).events
    assert history[-1].state == "succeeded" and history[-1].message == job.stop_reason
    assert history[-1].step == job.step == job.checkpoint_step


def agree(job) -> None:
    """One step everywhere: the summary, its checkpoint, and the last event of its history."""
    last = job.events[-1]
    assert job.step == job.checkpoint_step == last.step, (job.step, job.checkpoint_step, last)
    assert job.epoch == (job.step - 1) // job.steps_per_epoch + 1
    assert max(e.step for e in job.events) == job.step


def test_a_cancelled_then_resumed_job_keeps_its_history_and_one_step(lm, corpus, options):
    """Cancel between two step events (log_interval 7, checkpoints every 3 steps), then resume: the history
    shows cancelled, then resumed, in order; summary, checkpoint and last event agree on the step."""
    config = dict(options, log_interval=7, checkpoint_interval=3)
    job = lm.start_training(corpus.corpus_id, **config)
    for event in lm.watch_job(job.job_id):
        if event.kind == "checkpoint" and event.step >= 9:
            break
    lm.cancel_job(job.job_id)
    cancelled = lm.get_job(job.job_id, history=True)
    assert cancelled.state == "cancelled" and cancelled.step < cancelled.total_steps
    assert cancelled.events[-1].state == "cancelled"
    agree(cancelled)
    resumed = lm.resume_job(job.job_id)
    assert resumed.step == cancelled.step and resumed.epoch == cancelled.epoch
    lm.wait_job(job.job_id)
    final = lm.get_job(job.job_id, history=True)
    states = [e for e in final.events if e.kind == "state"]
    assert [e.state for e in states] == ["queued", "running", "cancelled", "queued", "running", "succeeded"]
    assert (states[2].step, states[3].step) == (cancelled.step, cancelled.step)
    assert states[3].message == f"resumed from step {cancelled.step}"
    assert [e.sequence for e in final.events] == sorted(e.sequence for e in final.events)
    agree(final)
    assert final.step == final.total_steps


def test_the_corpus_name_is_in_the_job_summary_listing_and_cli_table(lm, address, trained, capsys):
    assert trained.corpus_name == "twenty-word patterns"
    listed = {j.job_id: j for j in lm.list_jobs()}
    assert listed[trained.job_id].corpus_name == "twenty-word patterns"
    assert main(["lm", "jobs", "--address", address]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if trained.job_id in line)
    assert "twenty-word patterns" in row
    assert main(["lm", "job", trained.job_id, "--address", address, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["corpus_name"] == "twenty-word patterns" and shown["best_step"] == trained.best_step


def test_the_cli_reads_the_best_checkpoint(address, trained, capsys):
    assert (
        main(["lm", "perplexity", trained.job_id, "--checkpoint", "best", "--address", address, "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["step"] == trained.best_step
    assert main(["lm", "nearest", "w1", "--job", trained.job_id, "--address", address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == trained.step
