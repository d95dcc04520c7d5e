"""The SDK against an in-process SequenceService: the LSTM language model (corpora, training jobs,
perplexity, sampling, embeddings) and every error path."""

import math

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lm")


@pytest.fixture(scope="module")
def server(module_server_factory, data_root, ptb_dir):
    server, _ = module_server_factory(
        "sequence",
        data_root,
        max_corpus_bytes=200_000,
        max_queued_jobs=2,
        ptb_dir=ptb_dir,
    )
    yield server
    server.shutdown(0).wait()


@pytest.fixture(scope="module")
def lm(server):
    address = f"127.0.0.1:{server.port}"
    with SequenceClient(address, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def corpus(lm, pattern_text):
    return lm.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140) + "w1 zebra\n")


@pytest.fixture(scope="module")
def trained(lm, corpus, tiny_lm):
    job = lm.start_training(corpus.corpus_id, epochs=3, seed=7, **tiny_lm)
    events = list(lm.watch_job(job.job_id))
    return lm.get_job(job.job_id), events


def error_of(call, *args, **kwargs) -> NnprobeError:
    with pytest.raises(NnprobeError) as info:
        call(*args, **kwargs)
    return info.value


def test_upload_builds_the_vocabulary_from_train(lm, corpus, pattern_text):
    assert corpus.vocab_size == 22  # 20 words, <eos>, and <unk> for "zebra" in the test split
    assert corpus.tokens == {"train": 120 * 7, "valid": 20 * 7, "test": 20 * 7 + 3}
    assert corpus.unknown_tokens == {"train": 0, "valid": 0, "test": 1}
    again = lm.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140) + "w1 zebra\n")
    assert again.corpus_id == corpus.corpus_id


def test_training_reaches_a_low_perplexity_and_reports_every_epoch(trained, corpus):
    job, events = trained
    assert job.state == "succeeded"
    per_epoch = len(range(0, 840 // 4 - 8, 8))  # 26 steps, as the notebook's loop counts them
    assert job.steps_per_epoch == per_epoch and job.total_steps == 3 * per_epoch == job.step
    steps = [e for e in events if e.kind == "step"]
    evaluations = [e for e in events if e.kind == "evaluation"]
    assert [e.step for e in evaluations] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert steps[0].perplexity > 15  # about the vocabulary size (22) at the start
    assert evaluations[-1].valid_perplexity < 2.0  # from about 22: the pattern is learnt
    assert job.valid_perplexity == evaluations[-1].valid_perplexity
    assert [e.state for e in events if e.kind == "state"] == ["queued", "running", "succeeded"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert job.checkpoint_step == job.step and job.parameters > 0


def test_watch_resumes_from_a_cursor(lm, trained):
    job, events = trained
    tail = list(lm.watch_job(job.job_id, after_sequence=events[9].sequence))
    assert tail == events[10:]


def test_same_seed_same_model(lm, corpus, trained, tiny_lm):
    job, events = trained
    again = lm.start_training(corpus.corpus_id, epochs=3, seed=7, **tiny_lm)
    replay = list(lm.watch_job(again.job_id))
    assert [e.loss for e in replay if e.kind == "step"] == [e.loss for e in events if e.kind == "step"]
    a = lm.evaluate_perplexity(job.job_id, split="test")
    b = lm.evaluate_perplexity(again.job_id, split="test")
    assert a.perplexity == b.perplexity and a.tokens == b.tokens


def reference_perplexity(payload: dict, text: str, streams: int, hidden_size: int) -> float:
    """exp of the mean -log p over tokens 1..N-1 of ``text``, written out here from the checkpoint's
    weights: the text tokenised by hand, cut into ``streams`` pieces with numpy.array_split, each piece
    read in one go by torch.nn.LSTM from a zero state."""
    import numpy as np
    import torch

    index = {w: i for i, w in enumerate(payload["vocab"])}
    words = [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]
    ids = torch.tensor([index.get(w, index.get("<unk>", -1)) for w in words])
    weights = payload["model"]
    embed = torch.nn.Embedding.from_pretrained(weights["embed.weight"])
    layers = []
    for k in range(payload["config"]["num_layers"]):
        prefix = f"layers.{k}."
        lstm = torch.nn.LSTM(weights[prefix + "weight_ih_l0"].shape[1], hidden_size)
        lstm.load_state_dict({n[len(prefix) :]: v for n, v in weights.items() if n.startswith(prefix)})
        layers.append(lstm)
    total = 0.0
    with torch.no_grad():
        for targets in np.array_split(np.arange(1, len(ids)), streams):
            a, b = int(targets[0]), int(targets[-1]) + 1
            x = embed(ids[a - 1 : b - 1])  # (T, D): nn.LSTM without a batch dimension
            for lstm in layers:
                x, _ = lstm(x)
            logits = (x @ weights["linear.weight"].T + weights["linear.bias"]).double()
            total -= float(torch.log_softmax(logits, -1)[torch.arange(b - a), ids[a:b]].sum())
    return math.exp(total / (len(ids) - 1))


@pytest.mark.parametrize(("split", "streams"), [("valid", 0), ("test", 1), ("test", 3)])
def test_evaluate_perplexity_counts_every_token_against_a_reference(
    lm, trained, data_root, pattern_text, tiny_lm, split, streams
):
    from nnprobe_services.sequence.lm import checkpoints

    job, _ = trained
    payload = checkpoints.load(data_root / "data" / "jobs" / job.job_id / "checkpoint.pt")
    text = pattern_text(20, 120) if split == "valid" else pattern_text(20, 140) + "w1 zebra\n"
    result = lm.evaluate_perplexity(job.job_id, split=split, batch_size=streams)
    tokens = len(text.split()) + text.count("\n")
    assert result.tokens == tokens - 1 and result.step == job.step  # 139 or 142: every token but the first
    expected = reference_perplexity(
        payload, text, streams or tiny_lm["eval_batch_size"], tiny_lm["hidden_size"]
    )
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert result.loss == pytest.approx(math.log(expected), rel=1e-5)


def test_sampling_is_deterministic_and_greedy_follows_the_pattern(lm, trained):
    job, _ = trained
    first = lm.sample(job.job_id, start_word_id=0, num_words=30, seed=3)
    assert lm.sample(job.job_id, start_word_id=0, num_words=30, seed=3).raw == first.raw
    assert first.prompt_ids == [0] and len(first.words) == 30
    greedy = lm.sample(job.job_id, prompt="w3 w4", num_words=3, strategy="greedy")
    assert greedy.words[0] == "w5"
    assert greedy.text.startswith("w5 ")
    top1 = lm.sample(job.job_id, prompt="w3 w4", num_words=5, top_k=1, seed=9)
    assert top1.words == lm.sample(job.job_id, prompt="w3 w4", num_words=5, strategy="greedy").words


def test_temperature_zero_is_greedy_decoding(lm, trained):
    """Regression: temperature 0 ran at temperature 1 (five seeds, five texts). It is greedy decoding."""
    job, _ = trained
    greedy = lm.sample(job.job_id, start_word_id=0, num_words=40, strategy="greedy")
    texts = {
        lm.sample(job.job_id, start_word_id=0, num_words=40, temperature=0.0, seed=s).text for s in range(5)
    }
    assert texts == {greedy.text}
    assert greedy.words[:5] == ["w1", "w2", "w3", "w4", "w5"]  # the pattern: after w0 come w1, w2, ...
    unset = {lm.sample(job.job_id, start_word_id=0, num_words=40, seed=s).text for s in range(5)}
    assert len(unset) > 1  # unset is temperature 1, not 0


def test_embedding_distance_and_nearest_words_agree(lm, trained):
    job, _ = trained
    d = lm.embedding_distance(job.job_id, "w1", "w2")
    assert d.euclidean**2 == pytest.approx(
        d.norm_a**2 + d.norm_b**2 - 2 * d.norm_a * d.norm_b * d.cosine_similarity
    )
    assert d.cosine_distance == pytest.approx(1 - d.cosine_similarity)
    assert lm.embedding_distance(job.job_id, "w1", "w1").euclidean == 0.0
    near = lm.nearest_words(job.job_id, "w1", k=21)
    assert len(near.neighbors) == 21 and "w1" not in [w for w, _, _ in near.neighbors]
    distances = [dist for _, _, dist in near.neighbors]
    assert distances == sorted(distances)
    assert dict((w, dist) for w, _, dist in near.neighbors)["w2"] == pytest.approx(d.euclidean)
    cosine = lm.nearest_words(job.job_id, "w1", k=3, metric="cosine")
    assert cosine.metric == "cosine" and cosine.neighbors[0][2] <= cosine.neighbors[1][2]


def test_job_listing_history_and_plot(lm, trained):
    job, events = trained
    assert job.job_id in [j.job_id for j in lm.list_jobs(states=["succeeded"])]
    assert lm.list_jobs(states=["failed"]) == []
    full = lm.get_job(job.job_id, history=True, plot=True)
    assert full.events == events
    assert full.plot_png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cancel_then_resume_equals_an_uninterrupted_run(lm, corpus, trained, tiny_lm):
    job, events = trained
    config = dict(tiny_lm, checkpoint_interval=5)
    running = lm.start_training(corpus.corpus_id, epochs=3, seed=7, **config)
    for event in lm.watch_job(running.job_id):
        if event.kind == "checkpoint" and event.step >= 10:
            break
    cancelled = lm.cancel_job(running.job_id)
    assert cancelled.state == "cancelled" and 10 <= cancelled.checkpoint_step < cancelled.total_steps
    assert error_of(lm.cancel_job, running.job_id).code == grpc.StatusCode.FAILED_PRECONDITION
    resumed = lm.resume_job(running.job_id)
    assert resumed.state in ("queued", "running")
    final = lm.wait_job(running.job_id)
    assert final.state == "succeeded"
    history = lm.get_job(running.job_id, history=True).events
    assert [e.loss for e in history if e.kind == "step"] == [e.loss for e in events if e.kind == "step"]
    assert final.valid_perplexity == job.valid_perplexity and final.test_perplexity == job.test_perplexity
    a = lm.embedding_distance(job.job_id, "w1", "w7")
    b = lm.embedding_distance(running.job_id, "w1", "w7")
    assert (a.euclidean, a.cosine_similarity) == (b.euclidean, b.cosine_similarity)


def test_ptb_short_run_starts_near_the_vocabulary_size(lm, shared_dir):
    job = lm.start_training(
        "ptb", embed_size=16, hidden_size=32, max_steps=3, log_interval=1, eval_batch_size=40, seed=1
    )
    events = list(lm.watch_job(job.job_id))
    final = lm.get_job(job.job_id)
    assert final.state == "succeeded", final.error
    assert final.vocab_size == 10_000 and final.steps_per_epoch == 1549
    first = next(e for e in events if e.kind == "step")
    assert 9.0 < first.loss < 9.6  # ln 10000 = 9.21: a fresh model is close to uniform
    evaluation = next(e for e in events if e.kind == "evaluation")
    assert 2_000 < evaluation.valid_perplexity < 20_000
    assert lm.evaluate_perplexity(job.job_id, split="valid", batch_size=40).tokens == 73_760 - 1


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"hidden_size": -1}, "config.hidden_size"),
        ({"embed_size": -5}, "config.embed_size"),
        ({"batch_size": -1}, "config.batch_size"),
        ({"learning_rate": 0.0}, "config.learning_rate"),
        ({"learning_rate": -0.1}, "config.learning_rate"),
        ({"clip_norm": -1.0}, "config.clip_norm"),
        ({"dropout": 1.0}, "config.dropout"),
        ({"tie_weights": True}, "config.tie_weights"),
        ({"max_steps": -1}, "config.max_steps"),
        ({"batch_size": 100, "sequence_length": 30}, "config.batch_size"),
        ({"batch_size": 840}, "config.batch_size"),
        ({"eval_batch_size": 140}, "config.eval_batch_size"),  # valid: 140 tokens, 139 predicted
        ({"device": "tpu"}, "config.device"),
        ({"workers": 3}, "config.workers"),
        ({"lr_decay": 2.0}, "config.lr_decay"),
    ],
)
def test_bad_hyperparameters_name_the_field(lm, corpus, options, field, tiny_lm):
    settings = dict(tiny_lm, **options)
    error = error_of(lm.start_training, corpus.corpus_id, **settings)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert field in str(error)


def test_unknown_corpus_and_job(lm, tiny_lm):
    error = error_of(lm.start_training, "corpus-0000000000000000", **tiny_lm)
    assert error.code == grpc.StatusCode.NOT_FOUND and "corpus_id" in str(error)
    assert error_of(lm.start_training, "", **tiny_lm).code == grpc.StatusCode.INVALID_ARGUMENT
    for call in (lm.get_job, lm.cancel_job, lm.resume_job, lm.evaluate_perplexity, lm.sample):
        error = error_of(call, "job-missing")
        assert error.code == grpc.StatusCode.NOT_FOUND and "job-missing" in str(error)
    assert error_of(lambda: list(lm.watch_job("job-missing"))).code == grpc.StatusCode.NOT_FOUND


def test_unknown_words_suggest_close_spellings(lm, trained):
    job, _ = trained
    error = error_of(lm.embedding_distance, job.job_id, "w1", "w21")
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert "word_b" in str(error) and "'w21'" in str(error) and "w2" in str(error)
    assert error_of(lm.nearest_words, job.job_id, "W3").code == grpc.StatusCode.NOT_FOUND
    assert "try 'w3'" in str(error_of(lm.nearest_words, job.job_id, "W3"))
    assert error_of(lm.sample, job.job_id, prompt="w1 qq").code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"start_word_id": 22}, "start_word_id"),
        ({"start_word_id": -1}, "start_word_id"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"num_words": -3}, "num_words"),
        ({"prompt": "w1", "start_word_id": 1}, "start_word_id"),
    ],
)
def test_bad_sampling_options(lm, trained, options, field):
    job, _ = trained
    error = error_of(lm.sample, job.job_id, **options)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and field in str(error)


def test_corpus_errors(lm, tiny_lm):
    assert error_of(lm.upload_corpus, "").code == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(lm.upload_corpus, "word " * 50_000)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_corpus_bytes" in str(error)
    few = lm.upload_corpus("a b\n", "a\n", "b\n")
    error = error_of(lm.start_training, few.corpus_id, **tiny_lm)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "config.batch_size" in str(error)


def test_queue_limit_and_cancelling_a_queued_job(lm, corpus, tiny_lm):
    long_run = dict(tiny_lm, hidden_size=64)
    first = lm.start_training(corpus.corpus_id, epochs=10_000, **long_run)
    queued = [lm.start_training(corpus.corpus_id, epochs=1, **tiny_lm) for _ in range(2)]
    assert [j.state for j in queued] == ["queued", "queued"]
    assert [lm.get_job(j.job_id).queue_position for j in queued] == [0, 1]
    error = error_of(lm.start_training, corpus.corpus_id, **tiny_lm)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_jobs" in str(error)
    error = error_of(lm.evaluate_perplexity, queued[0].job_id)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "no checkpoint" in str(error)
    for job in queued:
        assert lm.cancel_job(job.job_id).state == "cancelled"
    assert lm.cancel_job(first.job_id).state == "cancelled"
    assert error_of(lm.resume_job, first.job_id.replace("job-", "job-x")).code == grpc.StatusCode.NOT_FOUND
