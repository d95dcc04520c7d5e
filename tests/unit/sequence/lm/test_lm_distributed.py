"""Data-parallel training core without processes: two ranks as two threads sharing an in-memory reducer
follow the single-process trajectory, checkpoint every stream's state and resume exactly; the server
checks that workers fit the device."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Event, Trainer
from nnprobe_services.sequence.lm.training_checks import check_workers_fit as _check_workers_fit
from torch import nn

CONFIG = TrainingConfig(
    embed_size=8,
    hidden_size=16,
    batch_size=4,
    sequence_length=5,
    epochs=2,
    learning_rate=0.01,
    eval_batch_size=3,  # not a multiple of the 2 ranks: evaluation shards unevenly
    log_interval=1,
    checkpoint_interval=7,
    seed=3,
)


class ThreadGroup:
    """Collectives for ``world`` threads, reduced in rank order (so every rank gets the same bits)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=120)  # a dead rank fails, not hangs
        self.slots: list[Any] = [None] * world

    def exchange(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values


class ThreadReducer:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world

    def average_gradients(self, model: nn.Module) -> None:
        for param in model.parameters():
            assert param.grad is not None
            param.grad.copy_(self.average(param.grad))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        parts = self.group.exchange(self.rank, value.detach().clone())
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total

    def average(self, value: torch.Tensor) -> torch.Tensor:
        return self.sum(value) / self.world_size

    def any(self, flag: bool) -> bool:
        return any(self.group.exchange(self.rank, flag))

    def gather(self, value: Any) -> list[Any]:
        return self.group.exchange(self.rank, value)


def splits() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randint(0, 12, (n,), generator=generator)
        for name, n in (("train", 300), ("valid", 100), ("test", 90))
    }


VOCAB = [f"w{i}" for i in range(12)]


def run_ranks(
    world: int, checkpoint: dict | None = None, stop_after: int = 0
) -> tuple[list[Event], list[dict], list[Trainer]]:
    """Train ``world`` ranks as threads; rank 0's events and checkpoints are returned."""
    group = ThreadGroup(world)
    events: list[Event] = []
    saved: list[dict] = []
    trainers: list[Trainer] = [None] * world  # type: ignore[list-item]
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            own = copy.deepcopy(checkpoint)  # as each process loads its own copy of the file
            trainer = Trainer(CONFIG, VOCAB, splits(), torch.device("cpu"), own, ThreadReducer(group, rank))
            trainers[rank] = trainer

            def on_checkpoint(t: Trainer) -> None:
                payload = t.checkpoint()
                if rank == 0:
                    saved.append(payload)

            finished = trainer.run(
                events.append if rank == 0 else lambda e: None,
                should_stop=lambda: rank == world - 1 and 0 < stop_after <= trainer.step,
                on_checkpoint=on_checkpoint,
            )
            if not finished:
                on_checkpoint(trainer)
        except BaseException as error:  # surfaced in the test thread
            errors.append(error)
            group.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return events, saved, trainers


def single_run() -> tuple[list[Event], Trainer]:
    trainer = Trainer(CONFIG, VOCAB, splits(), torch.device("cpu"))
    events: list[Event] = []
    assert trainer.run(events.append)
    return events, trainer


def step_losses(events: list[Event]) -> list[float]:
    return [e.loss for e in events if e.kind == "step"]


def test_two_ranks_follow_the_single_process_trajectory():
    single_events, single = single_run()
    events, saved, trainers = run_ranks(2)
    a, b = step_losses(single_events), step_losses(events)
    assert len(a) == len(b) == single.total
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
    evaluations = [
        p for e in events if e.kind == "evaluation" for p in (e.valid_perplexity, e.test_perplexity)
    ]
    expected = [
        p for e in single_events if e.kind == "evaluation" for p in (e.valid_perplexity, e.test_perplexity)
    ]
    assert len(evaluations) == 4 and evaluations == pytest.approx(expected, rel=1e-5)
    for name, value in single.model.state_dict().items():
        assert torch.allclose(trainers[0].model.state_dict()[name], value, atol=1e-5), name
        assert torch.equal(trainers[0].model.state_dict()[name], trainers[1].model.state_dict()[name])
    final = saved[-1]
    assert final["workers"] == 2 and len(final["generators"]) == 2
    assert final["hidden"][0][0].shape == (1, CONFIG.batch_size, CONFIG.hidden_size)
    assert torch.allclose(final["hidden"][0][0], single.state[0][0].detach(), atol=1e-5)
    # Every rank keeps the same best-validation record, the single process's, and checkpoints carry it.
    valid = [(e.valid_perplexity, e.step) for e in single_events if e.kind == "evaluation"]
    assert trainers[0].best == trainers[1].best and trainers[0].best.step == min(valid)[1] == single.best.step
    assert final["best"] == trainers[0].best.to_dict()


def test_a_stopped_data_parallel_run_resumes_exactly():
    uninterrupted, _, _ = run_ranks(2)
    first, saved, _ = run_ranks(2, stop_after=10)
    stopped = saved[-1]
    assert stopped["step"] == 10 and not stopped["finished"]
    rest, _, _ = run_ranks(2, checkpoint=stopped)
    resumed = [e for e in first if e.kind == "step"] + [e for e in rest if e.kind == "step"]
    assert [e.step for e in resumed] == list(range(1, len(step_losses(uninterrupted)) + 1))
    assert [e.loss for e in resumed] == step_losses(uninterrupted)
    with pytest.raises(ValueError, match="written by 2 workers"):
        Trainer(CONFIG, VOCAB, splits(), torch.device("cpu"), stopped)


def test_workers_must_fit_the_device(monkeypatch):
    _check_workers_fit(4, torch.device("cpu"), "config.workers")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _check_workers_fit(2, torch.device("cuda", 0), "config.workers")
    with pytest.raises(FailedPrecondition, match="need one GPU each") as info:
        _check_workers_fit(2, torch.device("cuda", 1), "config.workers")
    assert info.value.field == "config.workers"
    with pytest.raises(FailedPrecondition, match="cpu or cuda"):
        _check_workers_fit(2, torch.device("mps"), "config.workers")
