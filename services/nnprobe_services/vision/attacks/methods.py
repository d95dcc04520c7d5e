"""Adversarial attacks in [0, 1] pixel space on a model that normalises inside (``PixelClassifier``).

Methods: ADAM (Adam on the input, cross-entropy on the logits), FGSM, BIM, PGD (L-infinity and L2, random
start), MI-FGSM and Carlini-Wagner L2. Every image's result is the 8-bit image that is returned, inside its
budget on the lattice (``to_lattice``: L-infinity at most floor(ε·255)/255 per channel, L2 at most ε), and
it meets its goal only when that image does. The goal is checked on the original before the first step.
Every success is judged by ``judge``: the logits of the model as it is served (for a model that ONNX Runtime
serves, its session, not the PyTorch module that gives the gradients), so the answer of a classification of
the returned image is the one the attack reports. ``spec`` holds the settings and events, ``lattice`` the
8-bit results and their judging, ``steps`` each method's iteration; this module runs the loop.
The formulas of FGSM, BIM, PGD and MI-FGSM follow Goodfellow et al. 2015, Kurakin et al. 2017, Madry et
al. 2018 and Dong et al. 2018 (and torchattacks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from nnprobe_services.errors import Cancelled
from nnprobe_services.vision.attacks.lattice import (
    Judge,
    goal_met,
    lattice_levels,
    module_judge,
    project,
    quantize,
    refine,
    settle,
    to_lattice,
)
from nnprobe_services.vision.attacks.spec import METHODS, NORMS, AttackSpec, Outcome, Progress
from nnprobe_services.vision.attacks.steps import Steps


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
    run = _Run(model, images.detach(), labels, targeted, spec, judge or module_judge(model))
    if spec.early_stop:  # a goal already met needs no step: the unchanged image
        yield from run.met_already(original_logits)
        if not run.active.any():
            return
    generator = torch.Generator(device=images.device).manual_seed(spec.seed)
    run.state = Steps(model, run.images, labels, targeted, spec, generator)
    iterations = 1 if spec.method == "fgsm" else spec.steps
    # Step t's forward pass also gives the state after step t - 1 (its progress and early stop), so each
    # iteration costs one forward and one backward pass. After the last step one more forward pass judges
    # the 8-bit images of the images still running (``settle``) and reports the last iteration with them.
    for iteration in range(1, iterations + 1):
        yield from run.iterate(iteration, should_stop)
        if not run.active.any():
            return
    yield from run.finish(iterations)


class _Run:
    """One call of ``attack``: the images, their 8-bit originals (budgets are measured from them), which
    images are still running, and the method's ``Steps``."""

    state: Steps

    def __init__(self, model, images, labels, targeted: bool, spec: AttackSpec, judge: Judge) -> None:
        self.model, self.images, self.labels, self.targeted = model, images, labels, targeted
        self.spec, self.judge = spec, judge
        self.base = quantize(images)
        self.active = torch.ones(len(images), dtype=torch.bool, device=images.device)

    def met_already(self, original_logits: torch.Tensor | None) -> Iterator[tuple[int, Outcome]]:
        logits = self.judge(self.base) if original_logits is None else original_logits
        already = goal_met(logits, self.labels, self.targeted)
        for i in already.nonzero().flatten().tolist():
            self.active[i] = False
            yield i, Outcome(self.base[i], self.images[i], True, 0, logits[i])

    def iterate(
        self, iteration: int, should_stop: Callable[[], bool]
    ) -> Iterator[Progress | tuple[int, Outcome]]:
        """Step ``iteration``; its forward pass reports iteration - 1 and stops the images that met their
        goal then (with early stop)."""
        index = self.active.nonzero().flatten()
        before = self.state.current(index) if self.spec.early_stop else None  # the state early stop checks
        if should_stop():
            raise Cancelled(f"stopped after iteration {iteration - 1}", done=iteration - 1)
        logits, loss_rows = self.state.step(index)
        if iteration == 1:
            return
        done = iteration - 1
        yield from _report(done, index, logits, loss_rows, self.labels)
        if before is not None:
            yield from self._early_stops(done, index, logits, before)

    def _early_stops(
        self, done: int, index: torch.Tensor, logits: torch.Tensor, before: torch.Tensor
    ) -> Iterator[tuple[int, Outcome]]:
        met = goal_met(logits, self.labels[index], self.targeted)
        if not met.any():
            return
        quantized = to_lattice(before[met], self.base[index][met], self.spec)
        kept_logits = self.judge(quantized)
        kept = goal_met(kept_logits, self.labels[index][met], self.targeted)
        for row, i in enumerate(index[met].tolist()):
            if kept[row]:
                self.active[i] = False
                yield i, Outcome(quantized[row], before[met][row], True, done, kept_logits[row])

    def finish(self, iterations: int) -> Iterator[Progress | tuple[int, Outcome]]:
        """The images still running, brought onto the lattice and judged in one batch; with early stop,
        those that meet their goal without refinement come first (as they would have stopped early)."""
        index = self.active.nonzero().flatten()
        final = self.state.adversarial[index]
        quantized, success, used, final_logits = settle(
            self.model, self.base[index], final, self.labels[index], self.targeted, self.spec, self.judge
        )
        if iterations:
            with torch.no_grad():
                loss_rows = self.state.objective(index, quantized, final_logits)
            yield from _report(iterations, index, final_logits, loss_rows, self.labels)
        order = torch.arange(len(index), device=index.device)
        if self.spec.early_stop:
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


__all__ = [
    "METHODS",
    "NORMS",
    "AttackSpec",
    "Judge",
    "Outcome",
    "Progress",
    "attack",
    "goal_met",
    "lattice_levels",
    "module_judge",
    "project",
    "quantize",
    "refine",
    "settle",
    "to_lattice",
]
