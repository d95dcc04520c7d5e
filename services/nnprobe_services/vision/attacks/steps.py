"""One iteration of each attack method on the running adversarial images: the sign and L2 steps of FGSM,
BIM, PGD (with its random start) and MI-FGSM, and the optimiser steps of ADAM and Carlini-Wagner L2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnprobe_services.vision.attacks.lattice import l2_step, project
from nnprobe_services.vision.attacks.spec import AttackSpec


def _random_start(images: torch.Tensor, spec: AttackSpec, generator: torch.Generator) -> torch.Tensor:
    if spec.norm == "linf":
        noise = torch.empty_like(images).uniform_(-spec.epsilon, spec.epsilon, generator=generator)
    else:  # uniform in the L2 ball
        direction = torch.empty_like(images).normal_(generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        radius = torch.empty(len(images), 1, 1, 1, device=images.device).uniform_(generator=generator)
        noise = direction * spec.epsilon * radius ** (1 / images[0].numel())
    return torch.clamp(images + noise, 0, 1).detach()


def _loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The quantity each step ascends: -CE(target) when targeted, CE(original) otherwise (batch mean)."""
    loss = F.cross_entropy(logits, labels)
    return -loss if targeted else loss


class Steps:
    """The running adversarial images and each method's extra state (momentum, Adam, CW variables)."""

    def __init__(self, model, images, labels, targeted, spec: AttackSpec, generator) -> None:
        self.model, self.images, self.labels, self.targeted, self.spec = model, images, labels, targeted, spec
        start = spec.random_start and spec.method == "pgd"
        self.adversarial = _random_start(images, spec, generator) if start else images.clone()
        self.momentum = torch.zeros_like(images)
        if spec.method == "adam":
            self.delta = (self.adversarial - images).clone().requires_grad_(True)
            self.optimizer = torch.optim.Adam([self.delta], lr=spec.learning_rate)
        if spec.method == "cw_l2":
            w = torch.atanh(torch.clamp(images * 2 - 1, -1 + 1e-6, 1 - 1e-6))
            self.w = w.clone().requires_grad_(True)
            self.optimizer = torch.optim.Adam([self.w], lr=spec.learning_rate)
            self.adversarial = ((torch.tanh(self.w) + 1) / 2).detach()

    def current(self, index: torch.Tensor) -> torch.Tensor:
        """The running images of the rows ``index``, left as they are by the next ``step``: a copy, or
        (every row, a method that ``step`` replaces the images of rather than changes) the tensor itself."""
        if len(index) == len(self.adversarial) and self.spec.method not in ("adam", "cw_l2"):
            return self.adversarial
        return self.adversarial[index]  # indexing with a tensor copies

    def objective(self, index: torch.Tensor, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-row loss at ``x``: cross-entropy to the goal class (CW: its own objective)."""
        if self.spec.method == "cw_l2":
            return self._cw_rows(index, x, logits)
        return F.cross_entropy(logits, self.labels[index], reduction="none")

    def _cw_rows(self, index: torch.Tensor, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(self.labels[index], logits.shape[1]).bool()
        real = logits[one_hot]
        other = logits.masked_fill(one_hot, -math.inf).amax(1)
        margin = other - real if self.targeted else real - other
        f = torch.clamp(margin, min=-self.spec.cw_confidence)
        distance = (x - self.images[index]).flatten(1).pow(2).sum(1)
        return distance + self.spec.cw_c * f

    def step(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration on the rows ``index``; returns their logits and per-row losses before the step."""
        method = self.spec.method
        if method in ("adam", "cw_l2"):
            return self._optimizer_step(index)
        every = len(index) == len(self.adversarial)  # no copies then: views, and the images replaced
        x = (self.adversarial if every else self.adversarial[index]).detach().requires_grad_(True)
        logits = self.model(x)
        cost = _loss(logits, self.labels[index], self.targeted)
        grad = torch.autograd.grad(cost, x)[0]
        rows = F.cross_entropy(logits.detach(), self.labels[index], reduction="none")
        original = self.images if every else self.images[index]
        spec = self.spec
        with torch.no_grad():
            if method == "fgsm":
                new = torch.clamp(x + spec.epsilon * grad.sign(), 0, 1)
            else:
                if method == "mi_fgsm":
                    grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
                    grad = self.momentum[index] * spec.momentum_decay + grad
                    self.momentum[index] = grad
                move = grad.sign() if spec.norm == "linf" else l2_step(grad, spec.step_size)
                stepped = x + (spec.step_size * move if spec.norm == "linf" else move)
                new = torch.clamp(original + project(stepped - original, spec), 0, 1)
            if every:
                self.adversarial = new.detach()
            else:
                self.adversarial[index] = new.detach()
        return logits.detach(), rows

    def _optimizer_step(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec, labels = self.spec, self.labels[index]
        self.optimizer.zero_grad()
        if spec.method == "adam":
            x = torch.clamp(self.images + self.delta, 0, 1)
            logits = self.model(x[index])
            ce = F.cross_entropy(logits, labels, reduction="none")
            rows = ce if self.targeted else -ce
            rows.sum().backward()
            self.optimizer.step()
            with torch.no_grad():
                self.delta.copy_(torch.clamp(self.images + project(self.delta, spec), 0, 1) - self.images)
                self.adversarial[index] = (self.images + self.delta)[index]
            return logits.detach(), ce.detach()
        x = (torch.tanh(self.w) + 1) / 2
        logits = self.model(x[index])
        rows = self._cw_rows(index, x[index], logits)
        rows.sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            self.adversarial[index] = ((torch.tanh(self.w) + 1) / 2)[index]
        return logits.detach(), rows.detach()
