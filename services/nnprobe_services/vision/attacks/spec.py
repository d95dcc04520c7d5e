"""What an attack is asked for (``AttackSpec``) and what it reports: a ``Progress`` event per active image
and iteration, and one ``Outcome`` per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("adam", "fgsm", "bim", "pgd", "mi_fgsm", "cw_l2")
NORMS = ("linf", "l2")


@dataclass(frozen=True)
class AttackSpec:
    method: str = "pgd"
    norm: str = "linf"
    #: Budget in pixel units (L-infinity: per pixel; L2: of the whole perturbation). CW ignores it.
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    seed: int = 0
    random_start: bool = True
    early_stop: bool = True
    #: Extra sign steps of one 8-bit level when the quantized image misses the goal.
    refine_steps: int = 0
    learning_rate: float = 0.01
    momentum_decay: float = 1.0
    cw_c: float = 1.0
    cw_confidence: float = 0.0


@dataclass
class Progress:
    image: int
    iteration: int
    loss: float
    goal_probability: float
    top1: int
    top1_probability: float


@dataclass
class Outcome:
    """One image's final state. ``adversarial`` is quantized to 8 bits; ``float_adversarial`` is the attack's
    own output before rounding; ``logits`` are the model's on ``adversarial``, those success was judged on."""

    adversarial: torch.Tensor
    float_adversarial: torch.Tensor
    success: bool
    iterations: int
    logits: torch.Tensor
