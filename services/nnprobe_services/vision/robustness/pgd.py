"""The fast mode: PGD with a random start and a fixed step (Madry et al. 2018, "Towards deep learning models
resistant to adversarial attacks"), cross-entropy of the true class, every fooling point offered."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnprobe_services.vision.robustness.candidates import AttackResult, Candidates
from nnprobe_services.vision.robustness.control import Control, Model
from nnprobe_services.vision.robustness.projection import project, random_start


@dataclass(frozen=True)
class PgdSettings:
    """Ten steps of 2.5·ε/steps (Madry et al.'s rule of thumb) from one random start."""

    steps: int = 10
    #: The step size in units of ε (default 2.5 / steps).
    step: float | None = None
    restarts: int = 1


def pgd(
    model: Model,
    judge: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    norm: str,
    control: Control,
    settings: PgdSettings = PgdSettings(),
) -> AttackResult:
    """PGD on ``images`` (N, C, H, W, on the 8-bit grid) with true ``labels`` (N,); as ``apgd.apgd_ce``.
    Raises ``Cancelled``."""
    found = Candidates(judge, images, labels, epsilon, norm)
    size = epsilon * (settings.step if settings.step is not None else 2.5 / settings.steps)
    for _ in range(settings.restarts):
        index = (~found.fooled).nonzero().flatten()
        if len(index) == 0:
            break
        x, y = images[index], labels[index]
        x_adv = random_start(x, epsilon, norm, control.generator)
        for i in range(settings.steps):
            point = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(point)
                grad = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), point)[0]
            found.offer_where(index, x_adv, logits.detach().argmax(1) != y)
            with torch.no_grad():
                if norm == "linf":
                    move = grad.sign()
                else:
                    move = grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
                x_adv = project(x_adv + size * move, x, epsilon, norm)
            control.tick("pgd", i + 1, settings.steps, int((~found.fooled[index]).sum()))
        found.offer_where(index, x_adv, torch.ones(len(index), dtype=torch.bool, device=x.device))
    return found.result()
