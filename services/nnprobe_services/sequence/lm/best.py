"""The best-validation record of a training run and early stopping on it.

At every evaluation the run ``observe``s its validation perplexity: a strictly lower finite value than the
best so far (or the first finite one) becomes the best, and the evaluations since the best count from 0
again; otherwise they count one more. With ``patience`` P > 0 the run stops once P evaluations in a row
brought no improvement. Ties keep the earlier step (the first argmin). Pure Python; no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Best:
    """The best evaluation so far: its ``step`` (-1: none yet), its ``valid_perplexity`` (0.0 when none),
    and ``since``, the evaluations after it that did not improve on it."""

    step: int = -1
    valid_perplexity: float = 0.0
    since: int = 0

    def observe(self, step: int, valid_perplexity: float) -> bool:
        """Record an evaluation at ``step``; True when it is the new best."""
        finite = math.isfinite(valid_perplexity)
        if finite and (self.step < 0 or valid_perplexity < self.valid_perplexity):
            self.step, self.valid_perplexity, self.since = step, valid_perplexity, 0
            return True
        self.since += 1
        return False

    def exhausted(self, patience: int) -> bool:
        """Whether early stopping with ``patience`` evaluations (0: off) ends the run now."""
        return patience > 0 and self.since >= patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Best:
        """A checkpoint's record; ``None`` (a checkpoint from before best tracking): no best yet."""
        return cls(**values) if values else cls()


def stop_reason(step: int, total_steps: int, patience: int, best_step: int, best_perplexity: float) -> str:
    """Why a run that finished at ``step`` stopped: all its steps, or early stopping."""
    if step >= total_steps:
        return f"finished all {total_steps} steps"
    return (
        f"stopped early at step {step} of {total_steps}: validation perplexity did not improve for "
        f"{patience} evaluation(s); best {best_perplexity:.4f} at step {best_step}"
    )
