"""The 8-bit lattice every attack result lies on, and how results are judged there.

Every image's result is the 8-bit image that is returned, inside its budget on the lattice (``to_lattice``:
L-infinity at most floor(ε·255)/255 per channel, L2 at most ε), and it meets its goal only when that image
does. ``settle`` brings running images onto the lattice, refining those that miss their goal; each is
judged by a ``Judge``: the logits of the model as it is served.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nnprobe_services.vision.attacks.spec import AttackSpec


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] pixels to the 8-bit lattice k / 255."""
    return torch.round(pixels.clamp(0, 1) * 255) / 255


def lattice_levels(spec: AttackSpec) -> float:
    """The budget in 8-bit levels: floor(ε·255) per channel (L-infinity), or the largest sum of squared
    level steps whose root is at most ε·255 (L2); infinite for CW, which has no ε."""
    if spec.method == "cw_l2":
        return math.inf
    if spec.norm == "linf":
        return math.floor(spec.epsilon * 255 + 1e-6)
    return math.floor((spec.epsilon * 255) ** 2 + 1e-6)


def to_lattice(adversarial: torch.Tensor, original: torch.Tensor, spec: AttackSpec) -> torch.Tensor:
    """The 8-bit image returned for ``adversarial`` (N, 3, H, W) around ``original`` (on the lattice).

    L-infinity: round, then clip every step to floor(ε·255) levels. L2: the rounding of c·δ for the
    largest c in [0, 1] (bisection; |round(c·x)| grows with c) whose squared steps sum to at most
    (ε·255)², so the returned image lies in the L2 ball measured on its own 8-bit values."""
    steps = (adversarial.clamp(0, 1) - original) * 255
    levels = lattice_levels(spec)
    if math.isinf(levels):
        return quantize(adversarial)
    if spec.norm == "linf":
        return (original * 255 + torch.round(steps).clamp(-levels, levels)).round() / 255
    flat = steps.flatten(1).double()

    def fits(scale: torch.Tensor) -> torch.Tensor:
        return torch.round(flat * scale[:, None]).pow(2).sum(1) <= levels

    low = torch.zeros(len(flat), dtype=torch.float64, device=flat.device)
    high = torch.ones_like(low)
    whole = fits(high)
    low[whole] = 1.0
    for _ in range(40):  # the scale to 2^-40: far below one level on any image
        middle = (low + high) / 2
        ok = fits(middle) & ~whole
        low = torch.where(ok, middle, low)
        high = torch.where(ok | whole, high, middle)
    rounded = torch.round(flat * low[:, None]).view_as(steps).to(original.dtype)
    return (original * 255 + rounded).round() / 255


#: No-grad logits of (N, 3, H, W) pixels in [0, 1]: (N, classes) on the pixels' device.
Judge = Callable[[torch.Tensor], torch.Tensor]


def module_judge(model: nn.Module) -> Judge:
    """The judge that runs ``model`` itself without gradients."""

    def judge(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pixels)

    return judge


def goal_met(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    top1 = logits.argmax(1)
    return top1 == labels if targeted else top1 != labels


def project(delta: torch.Tensor, spec: AttackSpec) -> torch.Tensor:
    """Into the ε-ball of the norm."""
    if spec.norm == "linf":
        return delta.clamp(-spec.epsilon, spec.epsilon)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * torch.clamp(spec.epsilon / norms, max=1.0)


def l2_step(grad: torch.Tensor, size: float) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return size * grad / norms


def refine(
    model: nn.Module,
    original: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    spec: AttackSpec,
    judge: Judge | None = None,
) -> tuple[torch.Tensor, bool, int]:
    """``settle`` for one image (1, 3, H, W): (8-bit image, success on that image, refinement steps used)."""
    quantized, success, used, _ = settle(model, original, adversarial, labels, targeted, spec, judge)
    return quantized, bool(success.all()), int(used.max())


def settle(
    model: nn.Module,
    original: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    spec: AttackSpec,
    judge: Judge | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring each of ``adversarial`` (N, 3, H, W) onto the 8-bit lattice inside its budget around
    ``original`` (``to_lattice``); while an image misses its goal, take up to ``refine_steps`` more steps on
    it, each brought back inside the budget the same way: a sign step of one 8-bit level (L-infinity, CW) or
    a step of ``step_size`` along the normalised gradient (L2). The images are independent (the model runs
    in eval mode; each image's step follows its own loss). Each 8-bit image is judged by ``judge`` (default:
    ``model`` without gradients); the gradients of a refinement step come from ``model``.

    Returns the 8-bit images, success on each (N,), the refinement steps each used (N,; ``refine_steps``
    when it failed) and the logits of each 8-bit image (N, classes), those its success was judged on."""
    judge = judge or module_judge(model)
    current = to_lattice(adversarial, original, spec)
    count = len(current)
    success = torch.zeros(count, dtype=torch.bool, device=current.device)
    used = torch.zeros(count, dtype=torch.long, device=current.device)
    judged: torch.Tensor | None = None
    pending = torch.arange(count, device=current.device)
    for step in range(spec.refine_steps + 1):
        logits = judge(current[pending])
        if judged is None:
            judged = torch.empty(count, *logits.shape[1:], dtype=logits.dtype, device=logits.device)
        judged[pending] = logits
        met = goal_met(logits, labels[pending], targeted)
        success[pending] = met
        used[pending] = step
        missed = ~met
        if step == spec.refine_steps or not bool(missed.any()):
            break
        pending = pending[missed]
        x = current[pending].requires_grad_(True)
        # Summed per-image losses: each image's gradient is its own loss's (as one image at a time).
        loss = F.cross_entropy(model(x), labels[pending], reduction="sum")
        grad = torch.autograd.grad(-loss if targeted else loss, x)[0]
        with torch.no_grad():
            here, start = current[pending], original[pending]
            if spec.norm == "l2" and spec.method != "cw_l2":
                moved = start + project(here + l2_step(grad, spec.step_size) - start, spec)
            else:
                moved = here + grad.sign() / 255
            current[pending] = to_lattice(moved, start, spec)
    assert judged is not None
    return current.detach(), success, used, judged
