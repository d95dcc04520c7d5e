"""The best-validation record, early stopping, and the best checkpoint beside the last one: against brute
force over any sequence of validation perplexities, and a real tiny training run."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.best import Best, stop_reason
from nnprobe_services.sequence.lm.corpus import from_texts
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Trainer

perplexities = st.lists(
    st.one_of(
        st.sampled_from([1.5, 2.0, 2.0, 3.0]),  # ties are likely
        st.floats(1.0, 50.0),
        st.sampled_from([math.inf, math.nan]),
    ),
    max_size=30,
)


def first_argmin(values: list[float]) -> int:
    """Index of the first smallest finite value (-1: none), by brute force."""
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    return min(finite)[1] if finite else -1


def stop_index(values: list[float], patience: int) -> int | None:
    """The evaluation early stopping ends the run at (None: never), from the definition: evaluation k
    stops the run when none of the last ``patience`` values (k - P, k] beats every finite value before
    them (and some value before them was finite, or none of them is)."""
    if patience == 0:
        return None
    for k in range(patience - 1, len(values)):
        before = [v for v in values[: k - patience + 1] if math.isfinite(v)]
        window = [v for v in values[k - patience + 1 : k + 1] if math.isfinite(v)]
        if before:
            if all(v >= min(before) for v in window):
                return k
        elif not window:
            return k
        else:
            continue
    return None


@settings(max_examples=300, deadline=None)
@given(values=perplexities, patience=st.integers(0, 4))
def test_the_best_is_the_first_argmin_and_patience_stops_where_brute_force_says(values, patience):
    best = Best()
    stopped = None
    for k, value in enumerate(values):
        best.observe(10 * (k + 1), value)
        if stopped is None and best.exhausted(patience):
            stopped = k
    index = first_argmin(values)
    assert best.step == (10 * (index + 1) if index >= 0 else -1)
    assert best.valid_perplexity == (values[index] if index >= 0 else 0.0)
    assert stopped == stop_index(values, patience)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=perplexities, resume_at=st.integers(0, 30))
def test_the_best_file_holds_the_argmin_and_a_resumed_run_never_overwrites_it(
    tmp_path_factory, values, resume_at
):
    """Write a checkpoint after every evaluation as a run does; stop at ``resume_at`` and continue from the
    last checkpoint's record: best.pt is the first argmin's, checksummed, whatever the interruption."""
    folder = tmp_path_factory.mktemp("ckpt")
    last = folder / "checkpoint.pt"
    best = Best()
    for k, value in enumerate(values):
        if k == resume_at:  # a new process: only the files remain
            best = Best.from_dict(checkpoints.load(last)["best"]) if last.exists() else Best()
        step = 10 * (k + 1)
        best.observe(step, value)
        checkpoints.save_last_and_best(last, {"step": step, "best": best.to_dict(), "weights": value})
    index = first_argmin(values)
    if index < 0:
        assert not checkpoints.best_path(last).exists()
        return
    payload = checkpoints.load(checkpoints.best_path(last))
    assert payload["step"] == 10 * (index + 1) and payload["weights"] == values[index]


def test_a_torn_best_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_last_and_best(
        path, {"step": 3, "best": {"step": 3, "valid_perplexity": 2.0, "since": 0}}
    )
    best = checkpoints.best_path(path)
    best.write_bytes(best.read_bytes()[:-5])
    with pytest.raises(FailedPrecondition, match="corrupted"):
        checkpoints.load(best)


@pytest.fixture(scope="module")
def corpus(pattern_text):
    texts = {"train": pattern_text(120), "valid": pattern_text(20, 120), "test": pattern_text(20, 140)}
    corpus = from_texts("c", "c", texts, "")
    return corpus.words, {name: split.ids for name, split in corpus.splits.items()}


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    def config(**changes) -> TrainingConfig:
        return TrainingConfig(**{**tiny_lm, "epochs": 6, "seed": 7, **changes})

    return config


def run(corpus, config: TrainingConfig, payload=None, stop_after: int | None = None):
    words, splits = corpus
    trainer = Trainer(config, words, splits, torch.device("cpu"), payload)
    evaluations: list[tuple[int, float]] = []

    def on_event(event):
        if event.kind == "evaluation":
            evaluations.append((event.step, event.valid_perplexity))

    finished = trainer.run(
        on_event, should_stop=lambda: stop_after is not None and trainer.step >= stop_after
    )
    return trainer, evaluations, finished


def test_patience_stops_a_real_run_where_brute_force_over_its_evaluations_says(corpus, tiny):
    """lr 0.05: validation perplexity rises once (epoch 4) and falls again; patience 1 stops there. The
    uninterrupted run's evaluations are the independent source."""
    _, full, _ = run(corpus, tiny(learning_rate=0.05))
    values = [v for _, v in full]
    assert len(full) == 6
    for patience in (1,):
        trainer, evaluations, finished = run(corpus, tiny(learning_rate=0.05, patience=patience))
        index = stop_index(values, patience)
        assert finished and trainer.finished
        expected = full[index][0] if index is not None else full[-1][0]
        assert trainer.step == expected and evaluations == full[: len(evaluations)]
        best = first_argmin(values[: len(evaluations)])
        assert (trainer.best.step, trainer.best.valid_perplexity) == full[best]
    assert stop_index(values, 1) is not None  # the run does stop early with patience 1


def test_a_resumed_run_keeps_its_best_and_ends_as_the_uninterrupted_one(corpus, tiny):
    config = tiny(learning_rate=0.1)
    uninterrupted, full, _ = run(corpus, config)
    stopped, before, finished = run(corpus, config, stop_after=140)  # after the evaluation at step 130
    assert not finished and stopped.step == 140
    payload = stopped.checkpoint()
    resumed, after, finished = run(corpus, config, payload)
    assert finished and before + after == full
    assert (resumed.best.step, resumed.best.valid_perplexity) == full[first_argmin([v for _, v in full])]
    assert resumed.best == uninterrupted.best
    assert resumed.best.step < resumed.step  # the last evaluation was worse: best and last differ


def test_the_stop_reason_names_the_step_and_the_best():
    assert stop_reason(156, 156, 0, 130, 1.19) == "finished all 156 steps"
    reason = stop_reason(104, 156, 1, 78, 1.1694)
    assert "stopped early at step 104 of 156" in reason and "best 1.1694 at step 78" in reason
