"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1): PGD with momentum 0.75 and a step size that starts at 2ε and halves
at checkpoints where the loss oscillates or stalls, restarting there from the best point.

APGD-CE ascends the cross-entropy of the true class; APGD-T ascends the targeted DLR loss
-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2) for each of the top-``targets`` other classes t of the clean image
in turn (AutoAttack's standard: 9). The checkpoint schedule follows the reference code (fra31/auto-attack):
a period of 0.22·steps that shrinks by 0.03·steps per checkpoint to at least 0.06·steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnprobe_services.vision.robustness.candidates import AttackResult, Candidates
from nnprobe_services.vision.robustness.control import Control, Model
from nnprobe_services.vision.robustness.projection import project, random_start


@dataclass(frozen=True)
class ApgdSettings:
    """AutoAttack's standard parameters (the paper's Section 3 and the reference code)."""

    steps: int = 100
    restarts: int = 1
    #: Oscillation threshold: halve the step when at most rho·k of the last k steps raised the loss.
    rho: float = 0.75
    momentum: float = 0.75
    #: The first step size, in units of ε.
    initial_step: float = 2.0
    #: APGD-T: how many target classes (the highest other logits of the clean image), at most classes - 1.
    targets: int = 9
    #: Gradients averaged per step (expectation over transformation, for randomised models).
    eot_iter: int = 1


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per row (N,): -(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2 + 1e-12); needs ≥ 4 classes."""
    ordered = logits.sort(dim=1).values
    rows = torch.arange(len(logits), device=logits.device)
    scale = ordered[:, -1] - 0.5 * ordered[:, -3] - 0.5 * ordered[:, -4] + 1e-12
    return -(logits[rows, labels] - logits[rows, targets]) / scale


def apgd_ce(
    model: Model,
    judge: Model,
    images,
    labels,
    epsilon: float,
    norm: str,
    control: Control,
    settings=ApgdSettings(),
) -> AttackResult:
    """APGD-CE on ``images`` (N, C, H, W, on the 8-bit grid) with true ``labels`` (N,) in the ``norm``
    ("linf" or "l2") ball of radius ``epsilon`` (pixel units). ``model`` gives differentiable logits,
    ``judge`` the served model's. Raises ``Cancelled`` when ``control.stop`` is set."""
    found = Candidates(judge, images, labels, epsilon, norm)
    for _ in range(settings.restarts):
        index = (~found.fooled).nonzero().flatten()
        if len(index) == 0:
            break
        loss = _cross_entropy(labels[index])
        _run(model, found, index, loss, "apgd-ce", control, settings)
    return found.result()


def apgd_t(
    model: Model,
    judge: Model,
    images,
    labels,
    epsilon: float,
    norm: str,
    control: Control,
    settings=ApgdSettings(),
) -> AttackResult:
    """APGD-T (targeted DLR) on ``images`` as ``apgd_ce``; each target class in turn attacks only the images
    that are still robust. Raises ``ValueError`` for fewer than 4 classes (DLR needs them)."""
    found = Candidates(judge, images, labels, epsilon, norm)
    with torch.no_grad():
        order = judge(images).sort(dim=1).indices
    if order.shape[1] < 4:
        raise ValueError("APGD-T's DLR loss needs at least 4 classes")
    for rank in range(2, min(settings.targets, order.shape[1] - 1) + 2):
        for _ in range(settings.restarts):
            index = (~found.fooled).nonzero().flatten()
            if len(index) == 0:
                return found.result()
            loss = _dlr(labels[index], order[index, -rank])
            _run(model, found, index, loss, f"apgd-t (target {rank - 1})", control, settings)
    return found.result()


def _cross_entropy(labels: torch.Tensor):
    return lambda logits: F.cross_entropy(logits, labels, reduction="none")


def _dlr(labels: torch.Tensor, targets: torch.Tensor):
    return lambda logits: dlr_targeted(logits, labels, targets)


def _gradient(model: Model, x: torch.Tensor, loss, eot_iter: int):
    """Logits, per-row loss and the (EOT-averaged) gradient of the summed loss at ``x``."""
    grad = torch.zeros_like(x)
    for _ in range(eot_iter):
        point = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(point)
            rows = loss(logits)
            grad += torch.autograd.grad(rows.sum(), point)[0]
    return logits.detach(), rows.detach(), grad / eot_iter


class _Schedule:
    """The step-size checkpoints: every ``period`` steps, halve the step of rows whose loss rose in at most
    rho·period of them, or whose best loss did not improve since the last checkpoint while not halved then."""

    def __init__(self, settings: ApgdSettings, best: torch.Tensor) -> None:
        steps = settings.steps
        self.period = max(int(0.22 * steps), 1)
        self.shortest, self.shrink = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
        self.rho, self.count = settings.rho, 0
        self.rises = torch.zeros_like(best)
        self.best_then = best.clone()
        self.halved_then = torch.ones_like(best, dtype=torch.bool)

    def after_step(
        self, loss: torch.Tensor, previous: torch.Tensor, best: torch.Tensor
    ) -> torch.Tensor | None:
        """Rows (bool) whose step halves now, or None between checkpoints."""
        self.rises += (loss > previous).to(loss.dtype)
        self.count += 1
        if self.count < self.period:
            return None
        halve = (self.rises <= self.period * self.rho) | (~self.halved_then & (self.best_then >= best))
        self.halved_then, self.best_then = halve, best.clone()
        self.rises.zero_()
        self.count = 0
        self.period = max(self.period - self.shrink, self.shortest)
        return halve


def _run(model, found: Candidates, index, loss, name: str, control: Control, settings: ApgdSettings) -> None:
    """One APGD run on rows ``index`` of ``found``, offering every point that fools the model."""
    x, labels, eps, norm = found.images[index], found.labels[index], found.epsilon, found.norm
    x_adv = random_start(x, eps, norm, control.generator)
    logits, rows, grad = _gradient(model, x_adv, loss, settings.eot_iter)
    found.offer_where(index, x_adv, logits.argmax(1) != labels)
    best, x_best, grad_best = rows.clone(), x_adv.clone(), grad.clone()
    step = torch.full((len(x), 1, 1, 1), settings.initial_step * eps, device=x.device, dtype=x.dtype)
    schedule, x_previous, previous = _Schedule(settings, best), x_adv.clone(), rows
    for i in range(settings.steps):
        with torch.no_grad():
            weight = settings.momentum if i > 0 else 1.0
            moved = project(x_adv + step * _direction(grad, norm), x, eps, norm)
            x_next = project(
                x_adv + weight * (moved - x_adv) + (1 - weight) * (x_adv - x_previous), x, eps, norm
            )
            x_previous, x_adv = x_adv, x_next
        logits, rows, grad = _gradient(model, x_adv, loss, settings.eot_iter)
        found.offer_where(index, x_adv, logits.argmax(1) != labels)
        better = rows > best
        x_best[better], grad_best[better], best[better] = x_adv[better], grad[better], rows[better]
        halve = schedule.after_step(rows, previous, best)
        previous = rows
        if halve is not None and bool(halve.any()):
            step[halve] /= 2
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
        control.tick(name, i + 1, settings.steps, int((~found.fooled[index]).sum()))
    found.offer_where(index, x_best, torch.ones(len(index), dtype=torch.bool, device=x.device))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
