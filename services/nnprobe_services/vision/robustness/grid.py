"""The 8-bit rule: every adversarial image that is judged is an 8-bit image inside its budget.

Pixels are in [0, 1]; the 8-bit grid is k / 255. Clean images are put on the grid first (``quantize``); an
attack's floating-point result is then brought onto the grid inside the ε-ball measured on its own 8-bit
values (``to_grid``): rounding alone can leave the ball (L2) or round past ε (L-infinity), so the steps are
rounded and then projected onto the grid points inside the ball. ``within_budget`` is the check every
result must pass.
"""

from __future__ import annotations

import math

import torch

NORMS = ("linf", "l2")
#: Tolerance (in 8-bit levels) of the budget checks: float32 arithmetic on exact multiples of 1/255.
_LEVEL_TOLERANCE = 1e-3


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] pixels (any shape, float) to the 8-bit grid k / 255 (values clamped to [0, 1] first)."""
    return torch.round(pixels.clamp(0, 1) * 255) / 255


def budget_levels(epsilon: float, norm: str) -> float:
    """The budget in 8-bit levels: floor(ε·255) per channel (L-infinity), or the largest sum of squared
    level steps whose root is at most ε·255 (L2), i.e. floor((ε·255)²)."""
    if norm == "linf":
        return math.floor(epsilon * 255 + 1e-6)
    return math.floor((epsilon * 255) ** 2 + 1e-6)


def to_grid(adversarial: torch.Tensor, original: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """The 8-bit image for ``adversarial`` (N, C, H, W) around ``original`` (N, C, H, W, on the grid).

    L-infinity: round each step to whole levels and clip it to floor(ε·255) levels (the nearest grid point
    in the ball). L2: scale the step into the ball of radius ε·255 levels, truncate every level step towards
    zero (inside the ball), then round away from zero the steps with the largest fractional parts (≥ 1/2)
    while the squared level steps still sum to at most floor((ε·255)²): plain rounding where it fits, the
    budget spent on the steps rounding moves least where it does not. Both stay in [0, 1] because
    ``original`` and the clamped ``adversarial`` do. Returns a float tensor like ``original``."""
    steps = (adversarial.clamp(0, 1) - original) * 255
    levels = budget_levels(epsilon, norm)
    if norm == "linf":
        return (original * 255 + torch.round(steps).clamp(-levels, levels)).round() / 255
    flat = steps.flatten(1).double()
    lengths = flat.norm(dim=1, keepdim=True)
    flat = flat * torch.clamp(epsilon * 255 / (lengths + 1e-12), max=1.0)
    whole = flat.trunc()
    fraction = (flat - whole).abs()
    cost = (whole.abs() + 1) ** 2 - whole**2  # the squared-norm increase of rounding away from zero
    order = torch.where(fraction >= 0.5, fraction, torch.full_like(fraction, -1.0)).argsort(
        1, descending=True
    )
    room = levels - whole.pow(2).sum(1, keepdim=True)
    wanted = torch.gather(fraction, 1, order) >= 0.5
    fits = wanted & (torch.cumsum(torch.gather(cost, 1, order) * wanted, 1) <= room)
    up = torch.zeros_like(fits).scatter(1, order, fits)
    rounded = (whole + up * flat.sign()).view_as(steps).to(original.dtype)
    return ((original * 255 + rounded).round() / 255).clamp(0, 1)


def distance(adversarial: torch.Tensor, original: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image distance (N,) in pixel units: the largest channel change (L-infinity) or the L2 norm."""
    delta = (adversarial - original).flatten(1).double()
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def on_grid(pixels: torch.Tensor) -> torch.Tensor:
    """Per image (N,): every value is k / 255 for an integer k in [0, 255]."""
    scaled = pixels.flatten(1).double() * 255
    return (
        ((scaled - scaled.round()).abs() < _LEVEL_TOLERANCE).all(1)
        & (scaled >= -_LEVEL_TOLERANCE).all(1)
        & (scaled <= 255 + _LEVEL_TOLERANCE).all(1)
    )


def within_budget(
    adversarial: torch.Tensor, original: torch.Tensor, epsilon: float, norm: str
) -> torch.Tensor:
    """Per image (N,): on the 8-bit grid, in [0, 1] and at most ε from ``original`` (tolerance 10^-3
    levels)."""
    close = distance(adversarial, original, norm) * 255 <= epsilon * 255 + _LEVEL_TOLERANCE
    return on_grid(adversarial) & close


def assert_within_budget(
    adversarial: torch.Tensor, original: torch.Tensor, epsilon: float, norm: str
) -> None:
    """Raise ``AssertionError`` naming the images that break the 8-bit rule (a bug, never user input)."""
    ok = within_budget(adversarial, original, epsilon, norm)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        raise AssertionError(
            f"adversarial images {bad} leave the {norm} ball of radius {epsilon} on the 8-bit grid"
        )
