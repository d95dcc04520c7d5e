"""Each attack's running answer: per image the first 8-bit adversarial image that fools the judge.

Attacks search in floating point; whenever a floating-point image fools the model, it is offered here,
brought onto the 8-bit grid inside the budget (``grid.to_grid``) and re-classified by the judge (the model as
it is served, without gradients). Only that 8-bit verdict counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnprobe_services.vision.robustness.control import Model
from nnprobe_services.vision.robustness.grid import to_grid


@dataclass
class AttackResult:
    """``adversarial`` (N, C, H, W) float on the 8-bit grid (the clean image where the attack failed),
    ``fooled`` (N,) bool judged on that 8-bit image, ``queries`` (N,) int64 judge calls per image (Square:
    exactly the model queries it made)."""

    adversarial: torch.Tensor
    fooled: torch.Tensor
    queries: torch.Tensor


class Candidates:
    """The best 8-bit answer so far for ``images`` (N, C, H, W, on the grid) with ``labels`` (N,)."""

    def __init__(self, judge: Model, images: torch.Tensor, labels: torch.Tensor, epsilon: float, norm: str):
        self.judge, self.images, self.labels = judge, images, labels
        self.epsilon, self.norm = epsilon, norm
        self.best = images.clone()
        self.fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.queries = torch.zeros(len(images), dtype=torch.long, device=images.device)

    def offer(self, index: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Judge the 8-bit versions of ``candidates`` (len(index), C, H, W) for rows ``index`` (int64);
        keep the first that fools the judge per row. Returns which offered rows fool it (bool)."""
        if len(index) == 0:
            return torch.zeros(0, dtype=torch.bool, device=self.images.device)
        grid = to_grid(candidates.detach(), self.images[index], self.epsilon, self.norm)
        with torch.no_grad():
            fooling = self.judge(grid).argmax(1) != self.labels[index]
        self.queries[index] += 1
        new = fooling & ~self.fooled[index]
        self.best[index[new]] = grid[new]
        self.fooled[index[new]] = True
        return fooling

    def offer_where(self, index: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor) -> None:
        """``offer`` only the rows of ``candidates`` where ``mask`` (bool) is set and not yet fooled."""
        keep = mask & ~self.fooled[index]
        if bool(keep.any()):
            self.offer(index[keep], candidates[keep])

    def result(self) -> AttackResult:
        return AttackResult(self.best, self.fooled.clone(), self.queries.clone())
