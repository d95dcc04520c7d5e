"""Adversarial attacks in [0, 1] pixel space on a model that normalises inside (``PixelClassifier``).

Methods: ADAM (Adam on the input, cross-entropy on the logits), FGSM, BIM, PGD (L-infinity and L2, random
start), MI-FGSM and Carlini-Wagner L2. Every image's result is the 8-bit image that is returned, inside its
budget on the lattice (``to_lattice``: L-infinity at most floor(ε·255)/255 per channel, L2 at most ε), and
it meets its goal only when that image does. The goal is checked on the original before the first step.
Every success is judged by ``judge``: the logits of the model as it is served (for a model that ONNX Runtime
serves, its session, not the PyTorch module that gives the gradients), so the answer of a classification of
the returned image is the one the attack reports.
The formulas of FGSM, BIM, PGD and MI-FGSM follow Goodfellow et al. 2015, Kurakin et al. 2017, Madry et
al. 2018 and Dong et al. 2018 (and torchattacks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnprobe_services.errors import Cancelled

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


def _l2_step(grad: torch.Tensor, size: float) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return size * grad / norms


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


def attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    spec: AttackSpec,
    should_stop: Callable[[], bool] = lambda: False,
    original_logits: torch.Tensor | None = None,
    judge: Judge | None = None,
) -> Iterator[Progress | tuple[int, Outcome]]:
    """Attack ``images`` (N, 3, H, W) in [0, 1]; ``labels``: the targets, or the original classes.
    ``original_logits``: ``judge``'s logits on ``quantize(images)`` when the caller has them already.
    ``judge``: the logits success is judged on (default: ``model`` without gradients).

    Yields ``Progress`` for every active image after every iteration, and ``(index, Outcome)`` once per
    image, when it meets its goal (with early stop) or when the iterations run out. Progress describes the
    running (float) image, except after the last iteration: there it describes the 8-bit image returned.
    Raises ``Cancelled``.
    """
    judge = judge or module_judge(model)
    generator = torch.Generator(device=images.device).manual_seed(spec.seed)
    images = images.detach()
    base = quantize(images)  # budgets are measured from the 8-bit original
    active = torch.ones(len(images), dtype=torch.bool, device=images.device)
    if spec.early_stop:  # a goal already met needs no step: the unchanged image
        if original_logits is None:
            original_logits = judge(base)
        already = goal_met(original_logits, labels, targeted)
        for i in already.nonzero().flatten().tolist():
            active[i] = False
            yield i, Outcome(base[i], images[i], True, 0, original_logits[i])
        if not active.any():
            return
    state = _State(model, images, labels, targeted, spec, generator)
    iterations = 1 if spec.method == "fgsm" else spec.steps
    # Step t's forward pass also gives the state after step t - 1 (its progress and early stop), so each
    # iteration costs one forward and one backward pass. After the last step one more forward pass judges
    # the 8-bit images of the images still running (``settle``) and reports the last iteration with them.
    for iteration in range(1, iterations + 1):
        index = active.nonzero().flatten()
        before = state.current(index) if spec.early_stop else None  # the state early stop checks
        if should_stop():
            raise Cancelled(f"stopped after iteration {iteration - 1}", done=iteration - 1)
        logits, loss_rows = state.step(index)
        if iteration == 1:
            continue
        done = iteration - 1
        yield from _report(done, index, logits, loss_rows, labels)
        if before is not None:
            met = goal_met(logits, labels[index], targeted)
            if met.any():
                quantized = to_lattice(before[met], base[index][met], spec)
                kept_logits = judge(quantized)
                kept = goal_met(kept_logits, labels[index][met], targeted)
                for row, i in enumerate(index[met].tolist()):
                    if kept[row]:
                        active[i] = False
                        yield i, Outcome(quantized[row], before[met][row], True, done, kept_logits[row])
        if not active.any():
            return
    # The images still running, brought onto the lattice and judged in one batch; with early stop, those
    # that meet their goal without refinement come first (as they would have stopped early).
    index = active.nonzero().flatten()
    final = state.adversarial[index]
    quantized, success, used, final_logits = settle(
        model, base[index], final, labels[index], targeted, spec, judge
    )
    if iterations:
        with torch.no_grad():
            loss_rows = state.objective(index, quantized, final_logits)
        yield from _report(iterations, index, final_logits, loss_rows, labels)
    order = torch.arange(len(index), device=index.device)
    if spec.early_stop:
        first = success & (used == 0)
        order = torch.cat([order[first], order[~first]])
    for row in order.tolist():
        outcome = Outcome(
            quantized[row], final[row], bool(success[row]), iterations + int(used[row]), final_logits[row]
        )
        yield int(index[row]), outcome


def _report(
    iteration: int, index: torch.Tensor, logits: torch.Tensor, losses: torch.Tensor, labels: torch.Tensor
) -> Iterator[Progress]:
    probabilities = logits.detach().softmax(1)
    for row, i in enumerate(index.tolist()):
        top1 = int(probabilities[row].argmax())
        yield Progress(
            i,
            iteration,
            float(losses[row]),
            float(probabilities[row, labels[i]]),
            top1,
            float(probabilities[row, top1]),
        )


class _State:
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
                move = grad.sign() if spec.norm == "linf" else _l2_step(grad, spec.step_size)
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
                moved = start + project(here + _l2_step(grad, spec.step_size) - start, spec)
            else:
                moved = here + grad.sign() / 255
            current[pending] = to_lattice(moved, start, spec)
    assert judged is not None
    return current.detach(), success, used, judged
