"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"; its targeted version is AutoAttack's third attack).

For a target t (each of the top-``targets`` other classes of the clean image in turn), each step linearises
g = z_t - z_y at the current point x_i and projects both x_i and the original x_0 onto the hyperplane
{g(x_i) + ∇g·(z - x_i) = 0} inside the [0, 1] box (``hyperplane_step``), then moves to the convex
combination (1-α)(x_i + η·δ_i) + α(x_0 + η·δ_0) with α = min(‖δ_i‖ / (‖δ_i‖ + ‖δ_0‖), α_max). Whenever
the point fools the model it is offered (``Candidates`` puts it on the 8-bit grid inside the ε-ball) and the
search steps back towards x_0: x ← (1-β)·x_0 + β·x. Later restarts start at a random point of the ball.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnprobe_services.vision.robustness.candidates import AttackResult, Candidates
from nnprobe_services.vision.robustness.control import Control, Model
from nnprobe_services.vision.robustness.projection import random_start


@dataclass(frozen=True)
class FabSettings:
    """AutoAttack's standard FAB-T parameters (the reference code's defaults)."""

    steps: int = 100
    restarts: int = 1
    #: Target classes: the highest other logits of the clean image, at most classes - 1.
    targets: int = 9
    #: Overshoot of the projection.
    eta: float = 1.05
    #: Step back towards the original after a success.
    beta: float = 0.9
    #: Largest weight of the original's projection.
    alpha_max: float = 0.1


def hyperplane_step(weights: torch.Tensor, offset: torch.Tensor, low, high, norm: str) -> torch.Tensor:
    """The smallest step d (N, D) in ``norm`` with weights·d = offset (N,) and low <= d <= high (N, D):
    d = clip(s·t·sign(w)) (L-infinity) or clip(s·λ·w) (L2), s the sign of the offset, the scalar t or λ
    found by bisection (the reachable w·d grows with it); the largest reachable step when the plane is out
    of the box."""
    sign = torch.where(offset >= 0, 1.0, -1.0).to(weights.dtype)[:, None]
    direction = sign * (weights.sign() if norm == "linf" else weights)
    target = offset.abs()[:, None]
    low_t = torch.zeros_like(target)
    high_t = torch.ones_like(target) if norm == "linf" else torch.full_like(target, 1e12)
    for _ in range(60 if norm == "l2" else 40):
        middle = (low_t + high_t) / 2 if norm == "linf" else (low_t * high_t).clamp_min(1e-24).sqrt()
        reach = (weights * sign * torch.max(torch.min(middle * direction, high), low)).sum(1, keepdim=True)
        enough = reach >= target
        high_t, low_t = torch.where(enough, middle, high_t), torch.where(enough, low_t, middle)
    return torch.max(torch.min(high_t * direction, high), low)


def fab_t(
    model: Model,
    judge: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    norm: str,
    control: Control,
    settings: FabSettings = FabSettings(),
) -> AttackResult:
    """FAB-T on ``images`` (N, C, H, W, on the 8-bit grid) with true ``labels`` (N,); each target class in
    turn attacks the images still robust. Raises ``Cancelled``."""
    found = Candidates(judge, images, labels, epsilon, norm)
    with torch.no_grad():
        order = judge(images).sort(dim=1).indices
    for rank in range(2, min(settings.targets, order.shape[1] - 1) + 2):
        for restart in range(settings.restarts):
            index = (~found.fooled).nonzero().flatten()
            if len(index) == 0:
                return found.result()
            start = (
                images[index]
                if restart == 0
                else random_start(images[index], epsilon / 2, norm, control.generator)
            )
            _run(
                model,
                found,
                index,
                order[index, -rank],
                start,
                f"fab-t (target {rank - 1})",
                control,
                settings,
            )
    return found.result()


def _linearise(model: Model, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor):
    """g = z_t - z_y at ``x`` (N,), its gradient (N, D) and whether the model's top class is not y."""
    point = x.detach().clone().requires_grad_(True)
    rows = torch.arange(len(x), device=x.device)
    with torch.enable_grad():
        logits = model(point)
        gap = logits[rows, targets] - logits[rows, labels]
        grad = torch.autograd.grad(gap.sum(), point)[0]
    return gap.detach(), grad.flatten(1), logits.detach().argmax(1) != labels


def _run(
    model, found: Candidates, index, targets, start, name: str, control: Control, s: FabSettings
) -> None:
    x0, labels = found.images[index], found.labels[index]
    flat0, shape = x0.flatten(1), x0.shape
    x = start.clone()
    for i in range(s.steps):
        gap, grad, fooling = _linearise(model, x, labels, targets)
        found.offer_where(index, x, fooling)
        with torch.no_grad():
            flat = x.flatten(1)
            here = hyperplane_step(grad, -gap, -flat, 1 - flat, found.norm)
            # The plane through x with normal grad, seen from x0: g(x) + grad·(x0 + d - x) = 0.
            offset0 = -gap - (grad * (flat0 - flat)).sum(1)
            there = hyperplane_step(grad, offset0, -flat0, 1 - flat0, found.norm)
            size_here, size_there = _norm(here, found.norm), _norm(there, found.norm)
            alpha = torch.clamp(size_here / (size_here + size_there + 1e-12), max=s.alpha_max)[:, None]
            moved = (1 - alpha) * (flat + s.eta * here) + alpha * (flat0 + s.eta * there)
            x = moved.clamp(0, 1).view(shape)
            fooling = model(x).argmax(1) != labels
            found.offer_where(index, x, fooling)
            back = fooling.view(-1, 1, 1, 1)
            x = torch.where(back, (1 - s.beta) * x0 + s.beta * x, x)
        control.tick(name, i + 1, s.steps, int((~found.fooled[index]).sum()))


def _norm(step: torch.Tensor, norm: str) -> torch.Tensor:
    return step.abs().amax(1) if norm == "linf" else step.norm(dim=1)
