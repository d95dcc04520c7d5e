"""Projections onto the ε-ball intersected with the [0, 1] box, and random starting points in the ball."""

from __future__ import annotations

import torch


def project(points: torch.Tensor, center: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """``points`` (N, C, H, W) into the ``norm`` ball of radius ``epsilon`` around ``center``, then into
    [0, 1] (L2: the radial projection followed by clipping, as APGD's reference code)."""
    delta = points - center
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        lengths = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
        delta = delta * torch.clamp(epsilon / (lengths + 1e-12), max=1.0)
    return (center + delta).clamp(0, 1)


def random_start(images: torch.Tensor, epsilon: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """APGD's start: ε·t/‖t‖ for t uniform in [-1, 1] (L-infinity) or standard normal (L2), drawn from
    ``generator`` (on the CPU or the images' device), added to ``images`` and clipped to [0, 1]."""
    shape, device = images.shape, generator.device
    if norm == "linf":
        t = torch.rand(shape, generator=generator, device=device, dtype=images.dtype) * 2 - 1
        scale = t.flatten(1).abs().amax(1)
    else:
        t = torch.randn(shape, generator=generator, device=device, dtype=images.dtype)
        scale = t.flatten(1).norm(dim=1)
    t = t.to(images.device)
    return (images + epsilon * t / (scale.to(images.device).view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)
