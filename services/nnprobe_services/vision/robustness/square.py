"""Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"): score-based random search, no gradients.

Each iteration proposes, for every image not yet fooled, a random square window of side s (shrinking with the
schedule of p: p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 iterations,
rescaled to the budget) filled with ±2ε per channel (L-infinity) or a centred pair of ±1/r² "rectangle"
bumps whose mass moves from a second window (L2), and keeps it when the margin loss z_y - max_{k≠y} z_k
falls. Every proposal is first brought onto the 8-bit grid inside the budget (``grid.to_grid``; with the
L-infinity radius floor(ε·255)/255 the proposals already lie there), so every query is an 8-bit image and a
margin ≤ 0 is the 8-bit verdict. ``predict`` is a black box: each row it is given is one query, counted
exactly per image (the initial point included) and never more than ``queries`` per image and restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nnprobe_services.vision.robustness.candidates import AttackResult
from nnprobe_services.vision.robustness.control import Control, Model
from nnprobe_services.vision.robustness.grid import to_grid

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareSettings:
    """AutoAttack's standard parameters: 5000 queries per image, p_init 0.8, one restart."""

    #: Query budget per image and restart (the initial point included).
    queries: int = 5000
    #: The first window's share of the image's pixels.
    p_init: float = 0.8
    restarts: int = 1
    #: Rescale the p schedule (given for 10,000 iterations) to ``queries``.
    rescale_schedule: bool = True


def window_share(iteration: int, settings: SquareSettings) -> float:
    """p at ``iteration``: p_init / 2^k where k counts the schedule's thresholds passed."""
    it = int(iteration / settings.queries * 10000) if settings.rescale_schedule else iteration
    return settings.p_init / 2 ** sum(it > mark for mark in _HALVINGS)


def square(
    predict: Model, images, labels, epsilon: float, norm: str, control: Control, settings=SquareSettings()
) -> AttackResult:
    """Square attack on ``images`` (N, C, H, W, on the 8-bit grid) with true ``labels`` (N,) through the
    black box ``predict`` (logits (n, classes) of (n, C, H, W) pixels; called without gradients). Returns the
    8-bit images, which fool ``predict``, and the exact queries per image. Raises ``Cancelled``."""
    run = _Square(predict, images, labels, epsilon, norm, control, settings)
    for _ in range(settings.restarts):
        index = (~run.fooled).nonzero().flatten()
        if len(index) == 0:
            break
        run.restart(index)
    return AttackResult(run.best, run.fooled.clone(), run.queries.clone())


class _Square:
    def __init__(self, predict, images, labels, epsilon, norm, control: Control, settings: SquareSettings):
        self.predict, self.images, self.labels, self.norm = predict, images, labels, norm
        self.epsilon = math.floor(epsilon * 255 + 1e-6) / 255 if norm == "linf" else epsilon
        self.control, self.settings, self.generator = control, settings, control.generator
        self.best = images.clone()
        self.fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.queries = torch.zeros(len(images), dtype=torch.long, device=images.device)

    def margin(self, index: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """One query per row: z_y - max_{k≠y} z_k of the 8-bit ``points``."""
        with torch.no_grad():
            logits = self.predict(points).clone()
        self.queries[index] += 1
        rows = torch.arange(len(index), device=logits.device)
        labels = self.labels[index]
        true = logits[rows, labels].clone()
        logits[rows, labels] = -math.inf
        return true - logits.amax(1)

    def restart(self, index: torch.Tensor) -> None:
        x = self.images[index]
        x_best = self._grid(self._initial(x), x)
        margins = self.margin(index, x_best)
        for i in range(self.settings.queries - 1):
            active = (margins > 0).nonzero().flatten()
            if len(active) == 0:
                break
            p = window_share(i, self.settings)
            proposal = self._grid(self._propose(x[active], x_best[active], p), x[active])
            new = self.margin(index[active], proposal)
            better = new < margins[active]
            x_best[active[better]], margins[active[better]] = proposal[better], new[better]
            self.control.tick("square", i + 1, self.settings.queries - 1, int((margins > 0).sum()))
        won = margins <= 0
        self.best[index[won]], self.fooled[index[won]] = x_best[won], True

    def _grid(self, points: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return to_grid(points, x, self.epsilon, self.norm)

    def _signs(self, *shape: int) -> torch.Tensor:
        draw = torch.randint(0, 2, shape, generator=self.generator, device=self.generator.device)
        return (draw * 2 - 1).to(self.images.device, self.images.dtype)

    def _corner(self, side: int, window: int) -> int:
        upper = max(side - window, 0)
        return int(torch.randint(0, upper + 1, (1,), generator=self.generator, device=self.generator.device))

    def _initial(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _h, w = x.shape
        if self.norm == "linf":  # vertical stripes of ±ε
            return (x + self.epsilon * self._signs(n, c, 1, w)).clamp(0, 1)
        return (x + self.epsilon * _normalised(self._l2_initial(x))).clamp(0, 1)

    def _l2_initial(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        delta, s = torch.zeros_like(x), max(h // 5, 1)
        start = (h - s * 5) // 2
        for row in range(start, start + s * (h // s), s):
            for col in range(start, start + s * (w // s), s):
                bump = self._eta(s).view(1, 1, s, s) * self._signs(n, c, 1, 1)
                delta[:, :, row : row + s, col : col + s] += bump[:, :, : h - row, : w - col]
        return delta

    def _propose(self, x: torch.Tensor, x_best: torch.Tensor, p: float) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            row, col = self._corner(h, s), self._corner(w, s)
            proposal = x_best.clone()
            window = proposal[:, :, row : row + s, col : col + s]
            window += 2 * self.epsilon * self._signs(n, c, 1, 1)
            return torch.min(torch.max(proposal, x - self.epsilon), x + self.epsilon).clamp(0, 1)
        return self._propose_l2(x, x_best, p)

    def _propose_l2(self, x: torch.Tensor, x_best: torch.Tensor, p: float) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 3), h, w)
        s = s + 1 if s % 2 == 0 and s < min(h, w) else s
        delta = x_best - x
        r1, c1, r2, c2 = self._corner(h, s), self._corner(w, s), self._corner(h, s), self._corner(w, s)
        first = (slice(None), slice(None), slice(r1, r1 + s), slice(c1, c1 + s))
        second = (slice(None), slice(None), slice(r2, r2 + s), slice(c2, c2 + s))
        mask = torch.zeros_like(x)
        mask[first], mask[second] = 1.0, 1.0
        total = _norms(delta).view(-1, 1, 1, 1)
        in_windows = _norms(delta * mask).view(-1, 1, 1, 1)
        old = delta[first] / (1e-12 + delta[first].pow(2).sum((-2, -1), keepdim=True).sqrt())
        new = self._eta(s).view(1, 1, s, s) * self._signs(n, c, 1, 1) + old
        room = ((self.epsilon**2 - total**2).clamp_min(0) / c + in_windows**2).sqrt()
        new = new / (1e-12 + new.pow(2).sum((-2, -1), keepdim=True).sqrt()) * room
        delta = delta.clone()
        delta[second] = 0.0
        delta[first] = new
        return (x + self.epsilon * _normalised(delta)).clamp(0, 1)

    def _eta(self, s: int) -> torch.Tensor:
        """The L2 window: +rectangles in the top half, -rectangles in the bottom half (unit norm),
        transposed with probability 1/2."""
        delta = torch.zeros(s, s, device=self.images.device, dtype=self.images.dtype)
        delta[: s // 2] = _rectangles(s // 2, s, delta)
        delta[s // 2 :] = -_rectangles(s - s // 2, s, delta)
        delta = delta / delta.pow(2).sum().sqrt().clamp_min(1e-12)
        flip = torch.rand(1, generator=self.generator, device=self.generator.device)
        return delta.t().contiguous() if bool(flip > 0.5) else delta


def _rectangles(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """Nested rectangles around the centre, the k-th weighted 1/(k+1)², unit L2 norm."""
    delta = torch.zeros(rows, cols, device=like.device, dtype=like.dtype)
    if rows == 0:
        return delta
    r, c = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[max(r - k, 0) : min(r - k + 2 * k + 1, rows), max(c - k, 0) : min(c - k + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return delta / delta.pow(2).sum().sqrt().clamp_min(1e-12)


def _norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


def _normalised(delta: torch.Tensor) -> torch.Tensor:
    return delta / (_norms(delta).view(-1, 1, 1, 1) + 1e-12)
