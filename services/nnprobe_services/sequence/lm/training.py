"""Training core: truncated BPTT over a deterministic data order, exact resume from a checkpoint, and
perplexity evaluation. Pure PyTorch; no gRPC, no database.

Data order is the notebook's: the train split is cut into ``batch_size`` contiguous rows; epoch e reads
chunks of ``sequence_length`` columns left to right, starting from a zero state; step k of an epoch
reads columns [k L, (k + 1) L) and predicts the columns one to the right. Validation and test perplexity
count every predicted token of their split (``evaluation``). A checkpoint holds the model,
the optimizer, the dropout generator's state, the position (epoch, chunk) and the carried LSTM state,
so a resumed run repeats the uninterrupted run bit for bit (on the same device and thread count).

Data-parallel (``reducer`` given, W processes): rank r owns the contiguous streams
[r B/W, (r + 1) B/W) of the batch; gradients and the loss are averaged over the ranks before clipping, so
each update is the single-process update on the global batch. Stopping, evaluation and checkpoints are
collective: every rank calls them at the same steps (see ``distributed``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from nnprobe_services.errors import Cancelled
from nnprobe_services.sequence.lm.best import Best
from nnprobe_services.sequence.lm.corpus import batchify
from nnprobe_services.sequence.lm.evaluation import evaluate, loss_sum, perplexity, streams_of
from nnprobe_services.sequence.lm.events import Event
from nnprobe_services.sequence.lm.model import LanguageModel, State, TrainingConfig, detach
from nnprobe_services.sequence.lm.training_samples import evaluation_sample


class Reducer(Protocol):
    """What data-parallel training needs from its process group (see ``distributed``). Every method is
    a collective: all ranks call it, in the same order."""

    rank: int
    world_size: int

    def average_gradients(self, model: nn.Module) -> None:
        """Replace every gradient by its mean over the ranks."""
        ...

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the ranks."""
        ...

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the ranks."""
        ...

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        ...

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        ...


def steps_per_epoch(train_tokens: int, batch_size: int, sequence_length: int) -> int:
    """len(range(0, columns - L, L)) with columns = tokens // batch_size, as the notebook's loop."""
    columns = train_tokens // batch_size
    return len(range(0, columns - sequence_length, sequence_length))


def total_steps(config: TrainingConfig, per_epoch: int) -> int:
    steps = config.epochs * per_epoch
    return min(steps, config.max_steps) if config.max_steps else steps


def make_optimizer(config: TrainingConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


class Trainer:
    """Trains one model; ``run`` advances it until done or stopped; ``checkpoint`` snapshots it."""

    def __init__(
        self,
        config: TrainingConfig,
        vocab: list[str],
        splits: dict[str, torch.Tensor],
        device: torch.device,
        checkpoint: dict[str, Any] | None = None,
        reducer: Reducer | None = None,
        samples: Callable[[], bool] | None = None,
    ) -> None:
        """``samples``: asked at each evaluation; true: the evaluation's event carries a text sample
        (``training_samples``; no training randomness is used). None: never."""
        self.samples = samples
        self.config = config
        self.vocab = vocab
        self.splits = splits
        self.device = device
        self.reducer = reducer
        rank, world = (reducer.rank, reducer.world_size) if reducer else (0, 1)
        rows = config.batch_size // world
        data = batchify(splits["train"], config.batch_size)
        self.train = data[rank * rows : (rank + 1) * rows].to(device)
        self.per_epoch = steps_per_epoch(splits["train"].numel(), config.batch_size, config.sequence_length)
        self.total = total_steps(config, self.per_epoch)
        self.model = LanguageModel(len(vocab), config)
        self.model.initialise(config.seed, config.init_range)
        self.model.to(device)
        self.optimizer = make_optimizer(config, self.model)
        self.generator = torch.Generator(device=device).manual_seed(
            (config.seed * 1_000_003 + 7919 * rank + 1) % 2**64  # any uint64 seed, mixed per rank
        )
        self.step = 0
        self.elapsed = 0.0
        self.state: State = self.model.initial_state(rows, device)
        self.window_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.window_grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self.window_steps = 0
        self.window_seconds = 0.0
        self.last_evaluation: tuple[float, float] | None = None
        self.finished = False
        self.pending_evaluation = False
        self.best = Best()
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.reducer is not None and self.reducer.world_size > 1

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors moved to the CPU). Data-parallel: a collective
        that gathers every rank's dropout generator (``generators[r]``) and carried state (``hidden``
        holds all B streams, rank order), so every rank gets the whole payload."""
        generators = [self.generator.get_state().clone()]
        hidden = [(h.detach().cpu().clone(), c.detach().cpu().clone()) for h, c in self.state]
        if self.reducer is not None and self.distributed:
            parts = self.reducer.gather((generators[0], hidden))
            generators = [generator for generator, _ in parts]
            hidden = [
                (
                    torch.cat([part[layer][0] for _, part in parts], dim=1),
                    torch.cat([part[layer][1] for _, part in parts], dim=1),
                )
                for layer in range(len(hidden))
            ]
        return {
            "format": 1,
            "config": self.config.to_dict(),
            "vocab": self.vocab,
            "step": self.step,
            "elapsed": self.elapsed,
            "finished": self.finished,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "workers": self.reducer.world_size if self.reducer else 1,
            "generators": generators,
            "hidden": hidden,
            "window": (self.window_loss.item(), self.window_steps, self.window_seconds),
            "window_grad_norm": self.window_grad_norm.item(),
            "last_evaluation": self.last_evaluation,
            "pending_evaluation": self.pending_evaluation,
            "best": self.best.to_dict(),
        }

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        rank = self.reducer.rank if self.reducer else 0
        if len(payload["generators"]) != (self.reducer.world_size if self.reducer else 1):
            raise ValueError(
                f"the checkpoint was written by {len(payload['generators'])} workers; resume it with as many"
            )
        self.generator.set_state(payload["generators"][rank])
        self.step = payload["step"]
        self.elapsed = payload["elapsed"]
        self.finished = payload["finished"]
        self.state = [(h.to(self.device), c.to(self.device)) for h, c in payload["hidden"]]
        if self.distributed:
            rows = self.train.shape[0]
            self.state = [
                (
                    h[:, rank * rows : (rank + 1) * rows].contiguous(),
                    c[:, rank * rows : (rank + 1) * rows].contiguous(),
                )
                for h, c in self.state
            ]
        loss, steps, seconds = payload["window"]
        self.window_loss = torch.tensor(loss, dtype=torch.float64, device=self.device)
        self.window_steps, self.window_seconds = steps, seconds
        self.window_grad_norm.fill_(payload.get("window_grad_norm", 0.0))
        self.last_evaluation = payload["last_evaluation"]
        self.pending_evaluation = payload["pending_evaluation"]
        self.best = Best.from_dict(payload.get("best"))

    # -- the loop ------------------------------------------------------------------------------------
    def epoch_of(self, step: int) -> int:
        """1-based epoch of the step numbered ``step`` (1-based)."""
        return (step - 1) // self.per_epoch + 1

    def run(
        self,
        on_event: Callable[[Event], None],
        should_stop: Callable[[], bool] = lambda: False,
        on_checkpoint: Callable[[Trainer], None] | None = None,
    ) -> bool:
        """Train until ``total`` steps are done or early stopping ends the run (True), or ``should_stop``
        (False, after the current step).

        ``on_checkpoint(trainer)`` is called every ``checkpoint_interval`` steps, at every epoch end and at
        the end; it writes ``trainer.checkpoint()`` somewhere durable. Data-parallel: every rank runs
        this with its own ``should_stop``; the ranks stop together when any of them asks to.
        """
        if self.reducer is not None and self.distributed:
            should_stop = functools.partial(_any_rank, self.reducer, should_stop)
        try:
            return self._loop(on_event, should_stop, on_checkpoint)
        except Cancelled:
            return False

    def _loop(
        self,
        on_event: Callable[[Event], None],
        should_stop: Callable[[], bool],
        on_checkpoint: Callable[[Trainer], None] | None,
    ) -> bool:
        config = self.config
        length = config.sequence_length
        self.model.train()
        if self.pending_evaluation:
            self._finish_epoch(on_event, should_stop, on_checkpoint)
        while self.step < self.total and not self.finished:
            if should_stop():
                return False
            position = self.step % self.per_epoch
            epoch = self.step // self.per_epoch + 1
            if position == 0:
                self.state = self.model.initial_state(self.train.shape[0], self.device)
            learning_rate = config.learning_rate_at(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            started = time.perf_counter()
            i = position * length
            inputs = self.train[:, i : i + length]
            targets = self.train[:, i + 1 : i + 1 + length].reshape(-1)
            self.state = detach(self.state)
            logits, self.state = self.model(inputs, self.state, self.generator)
            loss = nn.functional.cross_entropy(logits, targets)
            self.optimizer.zero_grad()
            loss.backward()
            if self.reducer is not None and self.distributed:
                self.reducer.average_gradients(self.model)
                loss = self.reducer.average(loss.detach())
            self.window_grad_norm += self._clip().double()
            self.optimizer.step()
            self.window_loss += loss.detach().double()
            self.step += 1
            self.window_steps += 1
            seconds = time.perf_counter() - started
            self.window_seconds += seconds
            self.elapsed += seconds
            epoch_end = self.step % self.per_epoch == 0
            last = self.step == self.total
            if self.step % config.log_interval == 0 or epoch_end or last:
                self._emit_window(on_event, epoch, learning_rate)
            if epoch_end or last:
                self.pending_evaluation = True
                self._finish_epoch(on_event, should_stop, on_checkpoint)
            elif on_checkpoint is not None and self.step % config.checkpoint_interval == 0:
                on_checkpoint(self)
        return True

    def _finish_epoch(
        self,
        on_event: Callable[[Event], None],
        should_stop: Callable[[], bool],
        on_checkpoint: Callable[[Trainer], None] | None,
    ) -> None:
        """Validation and test perplexity after an epoch (or the last step), the best-validation record
        (``best``), then a checkpoint. With ``patience``, the run finishes early here once that many
        evaluations in a row did not improve on the best."""
        epoch = self.epoch_of(self.step)
        self.last_evaluation = self._evaluate_all(should_stop)
        self.pending_evaluation = False
        if "valid" in self.splits:
            self.best.observe(self.step, self.last_evaluation[0])
        self.finished = self.step >= self.total or self.best.exhausted(self.config.patience)
        on_event(
            Event(
                "evaluation",
                self.step,
                epoch,
                self.total,
                elapsed_seconds=self.elapsed,
                learning_rate=self.config.learning_rate_at(epoch),
                valid_perplexity=self.last_evaluation[0],
                test_perplexity=self.last_evaluation[1],
                best_step=self.best.step,
                best_valid_perplexity=self.best.valid_perplexity,
                sample=self._sample(),
            )
        )
        if on_checkpoint is not None:
            on_checkpoint(self)

    def _sample(self) -> str:
        if self.samples is None or not self.samples():
            return ""
        return evaluation_sample(self.model, self.vocab, self.config.seed, self.step, self.device)

    def _emit_window(self, on_event: Callable[[Event], None], epoch: int, learning_rate: float) -> None:
        loss = self.window_loss.item() / max(self.window_steps, 1)
        tokens = self.window_steps * self.config.batch_size * self.config.sequence_length
        on_event(
            Event(
                "step",
                self.step,
                epoch,
                self.total,
                loss=loss,
                perplexity=perplexity(loss),
                tokens_per_second=tokens / self.window_seconds if self.window_seconds > 0 else 0.0,
                elapsed_seconds=self.elapsed,
                learning_rate=learning_rate,
                grad_norm=self.window_grad_norm.item() / max(self.window_steps, 1),
            )
        )
        self.window_loss.zero_()
        self.window_grad_norm.zero_()
        self.window_steps = 0
        self.window_seconds = 0.0

    def _clip(self) -> torch.Tensor:
        """Clip the gradients to ``clip_norm`` (0: no clipping); their total L2 norm before clipping."""
        if self.config.clip_norm > 0:
            return nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        return nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])

    def _evaluate_all(self, should_stop: Callable[[], bool]) -> tuple[float, float]:
        results = []
        for split in ("valid", "test"):
            if split not in self.splits:
                results.append(0.0)
                continue
            if self.reducer is not None and self.distributed:
                loss = self._evaluate_shared(self.splits[split], should_stop)
            else:
                loss, _ = evaluate(
                    self.model,
                    self.splits[split],
                    self.config.eval_batch_size,
                    self.config.sequence_length,
                    self.device,
                    should_stop,
                )
            results.append(perplexity(loss))
        self.model.train()
        return results[0], results[1]

    def _evaluate_shared(self, ids: torch.Tensor, should_stop: Callable[[], bool]) -> float:
        """Data-parallel evaluation: rank r reads streams [r E / W, (r + 1) E / W) of the ``eval_batch_size``
        E streams (``evaluation.streams_of``); the summed losses and counts are added over the ranks."""
        assert self.reducer is not None
        streams, world, rank = self.config.eval_batch_size, self.reducer.world_size, self.reducer.rank
        inputs, targets = streams_of(ids, streams)
        mine = slice(rank * streams // world, (rank + 1) * streams // world)
        total, count = loss_sum(
            self.model, inputs[mine], targets[mine], self.config.sequence_length, self.device, should_stop
        )
        summed = self.reducer.sum(
            torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
        )
        if summed[1].item() == 0:
            raise ValueError(f"the split has too few tokens ({ids.numel()}) for {streams} streams")
        return summed[0].item() / summed[1].item()


def _any_rank(reducer: Reducer, should_stop: Callable[[], bool]) -> bool:
    return reducer.any(should_stop())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def load_model(payload: dict[str, Any], device: torch.device) -> LanguageModel:
    """The model of a checkpoint, in eval mode on ``device``."""
    config = TrainingConfig.from_dict(payload["config"])
    model = LanguageModel(len(payload["vocab"]), config)
    model.load_state_dict(payload["model"])
    return model.to(device).eval()
