"""What every attack of the robustness evaluation shares: the model it attacks, its random generator, the
stop signal it checks each iteration and the progress callback it reports to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nnprobe_services.errors import Cancelled

#: Logits (N, classes) of (N, C, H, W) pixels in [0, 1]; white-box attacks need them differentiable.
Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Progress:
    """One attack iteration done: ``attack`` (its name), ``step`` of ``steps`` (iterations, or queries for
    Square), ``remaining`` images it still attacks."""

    attack: str
    step: int
    steps: int
    remaining: int


def _never() -> bool:
    return False


def _ignore(progress: Progress) -> None:
    return None


@dataclass
class Control:
    """``generator``: every random draw (never the global RNG); ``stop``: polled once per iteration
    (a ``StopSignal`` fits); ``on_progress``: called once per iteration."""

    generator: torch.Generator
    stop: Callable[[], bool] = _never
    on_progress: Callable[[Progress], None] = _ignore
    #: Iterations finished by the attacks under this control so far (for ``Cancelled.done``).
    done: int = field(default=0)

    def tick(self, attack: str, step: int, steps: int, remaining: int) -> None:
        """Check the stop signal (raise ``Cancelled``), then report one finished iteration."""
        if self.stop():
            raise Cancelled(f"{attack} stopped at iteration {step}", done=self.done)
        self.done += 1
        self.on_progress(Progress(attack, step, steps, remaining))


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``. The evaluation keeps its generators on the CPU
    whatever device the model runs on, so the same seed draws the same numbers everywhere."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
