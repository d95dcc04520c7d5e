"""Each evaluation's text sample (``training_samples``): equal to a re-sampling written out in this test
(the whole history re-read at every word, multinomial draws from the documented seed) from the checkpoint of
the evaluation's step; drawing it leaves every loss, perplexity and weight of training bit-identical; a
resumed run gives the same text; no sampling without a log."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.sequence.lm.events import Event
from nnprobe_services.sequence.lm.model import LanguageModel, TrainingConfig
from nnprobe_services.sequence.lm.training import Trainer, load_model
from nnprobe_services.sequence.lm.training_samples import NOT_FINITE, evaluation_sample

VOCAB = ["<unk>", "<eos>", *(f"w{i}" for i in range(13))]
CONFIG = TrainingConfig(
    embed_size=6,
    hidden_size=8,
    num_layers=2,
    dropout=0.3,  # training draws dropout masks: the samples must not move that generator
    epochs=3,
    batch_size=3,
    sequence_length=5,
    log_interval=2,
    eval_batch_size=2,
    seed=11,
)
CPU = torch.device("cpu")


def splits() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        name: torch.randint(0, len(VOCAB), (n,), generator=g) for name, n in (("train", 70), ("valid", 30))
    }


def resample(model: LanguageModel, seed: int, step: int, num_words: int = 30) -> str:
    """The documented draw, written out: seed (seed * 1_000_003 + step) mod 2**63, start after <eos>,
    softmax at temperature 1 of the last position after re-reading the whole history, no dropout."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
    history = [VOCAB.index("<eos>")]
    with torch.no_grad():
        for _ in range(num_words):
            logits, _ = model(torch.tensor([history]), model.initial_state(1, CPU))
            probabilities = torch.softmax(logits[-1].double(), dim=-1)
            history.append(int(torch.multinomial(probabilities, 1, generator=generator)))
    return "".join("\n" if VOCAB[i] == "<eos>" else VOCAB[i] + " " for i in history[1:])


def train(samples, checkpoint=None, stop_after=None):
    """Events, the checkpoint payloads by step and the trainer of a run."""
    events: list[Event] = []
    payloads: dict[int, dict] = {}
    trainer = Trainer(CONFIG, VOCAB, splits(), CPU, checkpoint, samples=samples)
    trainer.run(
        events.append,
        should_stop=(lambda: trainer.step >= stop_after) if stop_after else (lambda: False),
        on_checkpoint=lambda t: payloads.__setitem__(t.step, t.checkpoint()),
    )
    return events, payloads, trainer


def test_samples_equal_a_resampling_of_each_evaluations_checkpoint_and_leave_training_unchanged():
    asked: list[int] = []
    with_samples, payloads, trainer = train(lambda: asked.append(1) or True)
    without, _, twin = train(None)
    evaluations = [e for e in with_samples if e.kind == "evaluation"]
    assert [e.step for e in evaluations] == [trainer.per_epoch * k for k in (1, 2, 3)] and len(asked) == 3
    for event in evaluations:
        model = load_model(payloads[event.step], CPU)  # the checkpoint written right after it
        assert event.sample == resample(model, CONFIG.seed, event.step), event.step
        assert len(event.sample.split()) + event.sample.count("\n") == 30
    assert len({e.sample for e in evaluations}) == 3  # a new draw at each step
    # Bit-identical training: every recorded number, and the final weights and dropout generator.
    strip = [{**vars(e), "sample": "", "tokens_per_second": 0, "elapsed_seconds": 0} for e in with_samples]
    plain = [{**vars(e), "tokens_per_second": 0, "elapsed_seconds": 0} for e in without]
    assert strip == plain and all(e.sample == "" for e in without)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, twin.model.state_dict()[name]), name
    assert torch.equal(trainer.generator.get_state(), twin.generator.get_state())


def test_a_resumed_run_gives_the_same_samples():
    whole, _, trainer = train(lambda: True)
    middle = trainer.per_epoch + 2  # stopped inside the second epoch
    first, _, stopped = train(lambda: True, stop_after=middle)
    second, _, _ = train(lambda: True, checkpoint=stopped.checkpoint())
    samples = [(e.step, e.sample) for e in whole if e.kind == "evaluation"]
    assert [(e.step, e.sample) for e in first + second if e.kind == "evaluation"] == samples


def test_no_log_no_sample():
    events, _, _ = train(lambda: False)
    assert [e.sample for e in events if e.kind == "evaluation"] == ["", "", ""]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**40), step=st.integers(0, 2**40), training=st.booleans())
def test_a_sample_moves_no_generator_and_keeps_the_mode(seed, step, training):
    model = LanguageModel(len(VOCAB), CONFIG)
    model.initialise(seed % 1000, 0.5)
    model.train(training)
    before = torch.get_rng_state()
    text = evaluation_sample(model, VOCAB, seed, step, CPU)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training == training
    model.eval()
    assert text == resample(model, seed, step)


def test_a_diverged_model_gives_a_note_instead_of_failing():
    model = LanguageModel(len(VOCAB), CONFIG)
    with torch.no_grad():
        model.linear.bias.fill_(float("nan"))
    assert evaluation_sample(model, VOCAB, 0, 1, CPU) == NOT_FINITE
