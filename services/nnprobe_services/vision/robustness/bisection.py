"""The smallest breaking ε of each broken image, by bisection between the largest ε of the list it resisted
(or 0) and the first that broke it: on whole 8-bit levels for L-infinity (the grid has no budget in
between), on ε itself for L2. Attacks are not monotone in ε, so this is the smallest ε the ensemble found
that breaks the image, an upper bound on the true minimal distortion."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nnprobe_services.vision.robustness.control import Control, Model, seeded
from nnprobe_services.vision.robustness.ensemble import AttackSettings, run_ensemble
from nnprobe_services.vision.robustness.results import BROKEN, EvaluationState


def smallest_epsilons(
    model: Model | None,
    judge: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    state: EvaluationState,
    steps: int,
    stop: Callable[[], bool],
    settings: AttackSettings,
) -> None:
    """Set ``smallest_epsilon`` of every record of ``state`` broken at some ε (``images``: on the grid),
    running the ensemble up to ``steps`` times per image. Raises ``Cancelled``."""
    for i, record in enumerate(state.records):
        first = next((k for k, s in enumerate(record.status) if s == BROKEN), None)
        if first is None or record.smallest_epsilon is not None:  # never broken, or done before a resume
            continue
        low = state.epsilons[first - 1] if first > 0 else 0.0
        high = state.epsilons[first]
        control = Control(seeded((state.seed * 1_000_003 + i) % 2**63), stop)

        def broken(epsilon: float, i: int = i, control: Control = control) -> bool:
            found = run_ensemble(
                model, judge, images[i : i + 1], labels[i : i + 1].to(images.device), epsilon, state.norm,
                tuple(state.attacks), control, settings,
            )  # fmt: skip
            return bool(found.fooled[0])

        record.smallest_epsilon = _bisect(broken, low, high, steps, state.norm)


def _bisect(broken: Callable[[float], bool], low: float, high: float, steps: int, norm: str) -> float:
    """The smallest ε in (low, high] found breaking, given that ``high`` breaks."""
    if norm == "linf":
        lo, hi = math.floor(low * 255 + 1e-6), math.floor(high * 255 + 1e-6)
        for _ in range(steps):
            if hi - lo <= 1:
                break
            middle = (lo + hi) // 2
            lo, hi = (lo, middle) if broken(middle / 255) else (middle, hi)
        return hi / 255
    below, above = low, high
    for _ in range(steps):
        half = (below + above) / 2
        below, above = (below, half) if broken(half) else (half, above)
    return above
