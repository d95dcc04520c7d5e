"""TensorBoard logs of training runs (``training_logs``) read back with TensorBoard's own reader (scalars,
hyper-parameters, evaluation text samples), and the gradient norm the training loop reports, against
torch.autograd."""

import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.sequence.lm.corpus import batchify
from nnprobe_services.sequence.lm.events import Event
from nnprobe_services.sequence.lm.model import LanguageModel, TrainingConfig
from nnprobe_services.sequence.lm.training import Trainer
from nnprobe_services.sequence.lm.training_logs import TrainingLog, TrainingLogs, event_files
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.support.tensorboard_runs import SAMPLE_TAG, server_view, texts
from tests.support.tensorboard_runs import scalars as server_scalars

VOCAB = [str(i) for i in range(17)]
CONFIG = TrainingConfig(
    embed_size=6,
    hidden_size=8,
    epochs=1,
    batch_size=3,
    sequence_length=5,
    log_interval=1,
    eval_batch_size=2,
    max_steps=4,
)


def splits() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        name: torch.randint(0, len(VOCAB), (n,), generator=g) for name, n in (("train", 120), ("valid", 40))
    }


def reference_first_norm(config: TrainingConfig, data: dict[str, torch.Tensor]) -> float:
    """The total L2 norm of the first step's gradients, by torch.autograd.grad on a fresh model."""
    model = LanguageModel(len(VOCAB), config)
    model.initialise(config.seed, config.init_range)
    rows = batchify(data["train"], config.batch_size)
    L = config.sequence_length
    logits, _ = model(rows[:, :L], model.initial_state(config.batch_size, torch.device("cpu")))
    loss = torch.nn.functional.cross_entropy(logits, rows[:, 1 : L + 1].reshape(-1))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


def test_grad_norm_is_the_norm_before_clipping():
    data = splits()
    for clip in (0.0, 0.01):  # no clipping, and clipping far below the norm
        config = TrainingConfig(**{**CONFIG.to_dict(), "clip_norm": clip})
        events: list[Event] = []
        Trainer(config, VOCAB, data, torch.device("cpu")).run(events.append)
        first = next(e for e in events if e.kind == "step")
        assert first.step == 1
        assert math.isclose(first.grad_norm, reference_first_norm(config, data), rel_tol=1e-5)
        assert first.grad_norm > 0.01  # so the second run did clip


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {
        tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def expected(events: list[Event]) -> dict[str, list[tuple[int, float]]]:
    """The scalars a run must show, from the events (float32, as TensorBoard stores them)."""
    steps = [e for e in events if e.kind == "step"]
    table = {
        "train/loss": [(e.step, np.float32(e.loss)) for e in steps],
        "train/grad_norm": [(e.step, np.float32(e.grad_norm)) for e in steps],
        "train/learning_rate": [(e.step, np.float32(e.learning_rate)) for e in steps],
        "valid/perplexity": [
            (e.step, np.float32(e.valid_perplexity)) for e in events if e.kind == "evaluation"
        ],
    }
    return {k: [(s, float(v)) for s, v in rows] for k, rows in table.items()}


def test_a_run_reads_back_with_its_hyperparameters_in_the_same_run(tmp_path):
    events: list[Event] = []
    log = TrainingLog(tmp_path / "tb", CONFIG.to_dict(), 0)
    Trainer(CONFIG, VOCAB, splits(), torch.device("cpu")).run(lambda e: (events.append(e), log.write(e)))
    log.close()
    assert not log.failed
    read = scalars(tmp_path / "tb")
    for tag, rows in expected(events).items():
        assert read[tag] == rows, tag
    assert [p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []  # no sub-run
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    hparams = accumulator.PluginTagToContent("hparams")  # the run itself holds them
    assert set(hparams) == {
        f"_hparams_/{n}" for n in ("experiment", "session_start_info", "session_end_info")
    }
    content = hparams["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert (
        start.hparams["hidden_size"].number_value == 8 and start.hparams["optimizer"].string_value == "adam"
    )


def step(n: int, loss: float) -> Event:
    return Event("step", n, 1, 9, loss=loss, perplexity=math.exp(loss), learning_rate=0.5, grad_norm=n / 10)


def test_a_resumed_run_has_no_duplicated_steps(tmp_path):
    first = TrainingLog(tmp_path, {}, 0)
    for n in range(1, 7):
        first.write(step(n, 1.0 + n))
    first.close()
    second = TrainingLog(tmp_path, {}, 3)  # continues from the checkpoint of step 3
    for n in range(4, 9):
        second.write(step(n, 100.0 + n))
    second.close()
    assert len(event_files(tmp_path)) == 2
    expected = [(n, float(np.float32(1.0 + n))) for n in (1, 2, 3)] + [
        (n, float(np.float32(100.0 + n))) for n in range(4, 9)
    ]
    assert scalars(tmp_path)["train/loss"] == expected
    assert server_scalars(tmp_path, "train/loss") == expected  # what TensorBoard's server shows too


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@settings(max_examples=8, deadline=None)
@given(broken_after=st.integers(0, 5))
def test_a_failing_disk_never_raises_and_keeps_what_was_written(tmp_path_factory, broken_after):
    folder = tmp_path_factory.mktemp("tb") / "log"
    log = TrainingLog(folder, {"a": 1}, 0)
    for n in range(1, broken_after + 1):
        log.write(step(n, float(n)))
    kept = tmp_path_factory.mktemp("kept")
    for path in event_files(folder):
        shutil.copy(path, kept)
    shutil.rmtree(folder)
    folder.write_text("a file where the log's folder was")  # every later append fails (NotADirectoryError)
    for n in range(broken_after + 1, 7):
        log.write(step(n, float(n)))  # must not raise
    log.close()
    assert log.failed
    read = scalars(kept).get("train/loss", [])
    assert read == [(n, float(n)) for n in range(1, broken_after + 1)]
    reopened = TrainingLog(folder, {}, 0)  # the folder cannot be created: the log is off, no exception
    reopened.write(step(1, 1.0))
    assert reopened.failed


def test_each_evaluation_writes_its_text_sample_at_its_step(tmp_path):
    config = TrainingConfig(**{**CONFIG.to_dict(), "max_steps": 0, "epochs": 3})
    events: list[Event] = []
    logs = TrainingLogs(tmp_path)
    logs.open("job", config.to_dict(), 0)
    trainer = Trainer(config, VOCAB, splits(), torch.device("cpu"), samples=lambda: logs.writing("job"))
    trainer.run(lambda e: (events.append(e), logs.write("job", e)))
    logs.close("job")
    assert not logs.writing("job")  # closed: no more samples
    evaluations = [(e.step, e.sample) for e in events if e.kind == "evaluation"]
    assert [s for s, _ in evaluations] == [trainer.per_epoch * k for k in (1, 2, 3)]
    assert all(len(text.split()) == 30 for _, text in evaluations)  # no <eos> in this vocabulary
    folder = tmp_path / "job" / "tensorboard"
    assert texts(folder) == evaluations
    assert list(server_view(folder).PluginTagToContent("text")) == [SAMPLE_TAG]  # the only text tag


def test_a_resumed_log_keeps_one_sample_per_evaluation(tmp_path):
    def evaluation(n: int, text: str) -> Event:
        return Event("evaluation", n, n // 3, 9, valid_perplexity=2.0, sample=text)

    first = TrainingLog(tmp_path, {}, 0)
    for n in (3, 6):
        first.write(evaluation(n, f"first {n}"))
    first.close()
    second = TrainingLog(tmp_path, {}, 3)  # the checkpoint of step 3: step 6 is logged again
    for n in (6, 9):
        second.write(evaluation(n, f"second {n}"))
    second.write(evaluation(10, ""))  # no sample drawn: nothing written
    second.close()
    assert texts(tmp_path) == [(3, "first 3"), (6, "second 6"), (9, "second 9")]
