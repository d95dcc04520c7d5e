"""The robustness evaluation a workflow calls: robust accuracy over a data set at each ε, resumable.

The work is a sequence of units, one per (ε, batch of ``batch_size`` images), in increasing ε. Each unit
draws from its own generator, seeded from (seed, ε index, batch index), so a unit's results depend only on
its inputs and the units before it: an evaluation resumed from a checkpoint (``EvaluationState``, taken after
any unit) gives the same per-image results as one that never stopped. An image broken at a smaller ε stays
broken at a larger one with the same 8-bit image (the balls are nested on the grid); images whose clean
8-bit image is misclassified are not attacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.vision.robustness.bisection import smallest_epsilons
from nnprobe_services.vision.robustness.checks import check_classes, check_inputs, check_resume
from nnprobe_services.vision.robustness.control import Control, Model, Progress, seeded
from nnprobe_services.vision.robustness.diagnostics import (
    RobustnessWarning,
    gradient_masking_warning,
    probabilities_warning,
    randomised_warning,
)
from nnprobe_services.vision.robustness.ensemble import WHITE_BOX, AttackSettings, resolve, run_ensemble
from nnprobe_services.vision.robustness.grid import quantize
from nnprobe_services.vision.robustness.results import (
    BROKEN,
    MISCLASSIFIED,
    ROBUST,
    EvaluationState,
    ImageRecord,
    RobustnessResult,
    summarise,
)


@dataclass(frozen=True)
class EvaluationProgress:
    """``unit`` of ``units`` (ε × batches) is running at ``epsilon``; ``attack``: its latest iteration."""

    epsilon: float
    unit: int
    units: int
    attack: Progress | None


def _never() -> bool:
    return False


def evaluate(
    model_fn: Model | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps_list: Sequence[float],
    attacks: str | Sequence[str] = "standard",
    norm: str = "linf",
    seed: int = 0,
    stop: Callable[[], bool] = _never,
    on_progress: Callable[[EvaluationProgress], None] | None = None,
    checkpoint_state: EvaluationState | dict | None = None,
    *,
    judge: Model | None = None,
    settings: AttackSettings | None = None,
    batch_size: int = 64,
    bisection_steps: int = 0,
    on_checkpoint: Callable[[EvaluationState], None] | None = None,
) -> RobustnessResult:
    """Robust accuracy of ``model_fn`` on ``images`` (N, C, H, W) float in [0, 1] (put on the 8-bit grid
    first) with ``labels`` (N,) int at each ε of ``eps_list`` (pixel units; sorted increasing), under
    ``attacks`` ("standard": APGD-CE, APGD-T, FAB-T, Square; "pgd"; or a list of names) in ``norm``
    ("linf" or "l2"). ``model_fn``: differentiable logits, None for a black box (Square only); ``judge``:
    the served model's logits that every verdict is taken from (default ``model_fn`` without gradients).
    ``stop`` is polled every iteration (raises ``Cancelled``); ``on_checkpoint`` receives the state after
    every unit, and ``checkpoint_state`` resumes one. ``bisection_steps`` > 0: per broken image, the
    smallest breaking ε between the last ε it resisted (or 0) and the first that broke it.
    Raises ``InvalidArgument`` (field named) for bad inputs or a checkpoint of another evaluation."""
    names = _names(attacks, model_fn)
    settings = settings or AttackSettings()
    epsilons = check_inputs(images, labels, eps_list, norm, batch_size)
    judge = judge or _no_grad(model_fn)
    x = quantize(images.detach().float())
    state = _start(judge, x, labels, epsilons, names, norm, seed, batch_size, checkpoint_state)
    units = [(k, start) for k in range(len(epsilons)) for start in range(0, len(x), batch_size)]
    for number, (k, start) in enumerate(units):
        if all(r.status[k] is not None for r in state.records[start : start + batch_size]):
            continue

        def report(progress: Progress, k=k, number=number) -> None:
            if on_progress is not None:
                on_progress(EvaluationProgress(epsilons[k], number, len(units), progress))

        control = Control(seeded(_unit_seed(seed, k, start // batch_size)), stop, report)
        _run_unit(model_fn, judge, x, labels, state, k, start, control, settings)
        if on_checkpoint is not None:
            on_checkpoint(state)
    if bisection_steps > 0:
        smallest_epsilons(model_fn, judge, x, labels, state, bisection_steps, stop, settings)
    result = summarise(state)
    result.warnings.extend(masking_warnings(state))
    return result


def _names(attacks: str | Sequence[str], model_fn: Model | None) -> tuple[str, ...]:
    try:
        names = resolve(attacks if isinstance(attacks, str) else list(attacks))
    except ValueError as error:
        raise InvalidArgument("attacks", str(error)) from None
    if model_fn is None and any(name in WHITE_BOX for name in names):
        raise InvalidArgument("attacks", "a black-box model (no gradients) can only be attacked by square")
    return names


def _no_grad(model_fn: Model | None) -> Model:
    if model_fn is None:
        raise InvalidArgument("judge", "give judge (the model's logits) when model_fn is None")

    def judge(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model_fn(pixels)

    return judge


def _unit_seed(seed: int, epsilon_index: int, batch_index: int) -> int:
    return ((seed * 1_000_003 + epsilon_index) * 1_000_003 + batch_index) % (2**63)


def _classify(judge: Model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([judge(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _start(judge, x, labels, epsilons, names, norm, seed, batch_size, checkpoint) -> EvaluationState:
    """The state to continue: the checkpoint's (checked to be this evaluation's), or a fresh one with the
    clean predictions and the model checks (probabilities; randomised, from a second call on a batch)."""
    if checkpoint is not None:
        state = (
            checkpoint if isinstance(checkpoint, EvaluationState) else EvaluationState.from_dict(checkpoint)
        )
        check_resume(state, epsilons, norm, names, seed, batch_size, len(x))
        return state
    logits = _classify(judge, x, batch_size)
    check_classes(logits.shape[1], names)
    again = _classify(judge, x[:batch_size], batch_size)
    count = len(epsilons)
    records = [
        ImageRecord(int(y), int(p), [None] * count, [None] * count, [0] * count, [None] * count)
        for y, p in zip(labels.tolist(), logits.argmax(1).tolist(), strict=True)
    ]
    checks = [probabilities_warning(logits), randomised_warning(logits[:batch_size], again)]
    warnings = [w for w in checks if w is not None]
    return EvaluationState(list(epsilons), norm, list(names), seed, batch_size, records, warnings)


def _run_unit(model_fn, judge, x, labels, state: EvaluationState, k, start, control, settings) -> None:
    """Attack the batch at ``start`` at the k-th ε and write its records."""
    records = state.records[start : start + len(x[start : start + state.batch_size])]
    epsilon, attack_now = state.epsilons[k], []
    for offset, record in enumerate(records):
        if record.prediction != record.label:
            record.status[k] = MISCLASSIFIED
        elif k > 0 and record.status[k - 1] == BROKEN:  # nested balls: the same 8-bit image
            record.status[k], record.broken_by[k] = BROKEN, record.broken_by[k - 1]
            record.adversarial[k] = record.adversarial[k - 1]
        else:
            attack_now.append(offset)
    if not attack_now:
        return
    index = torch.tensor(attack_now, device=x.device) + start
    found = run_ensemble(
        model_fn,
        judge,
        x[index],
        labels[index].to(x.device),
        epsilon,
        state.norm,
        tuple(state.attacks),
        control,
        settings,
    )
    pixels = (found.adversarial * 255).round().to(torch.uint8).cpu().numpy()
    for row, offset in enumerate(attack_now):
        record = records[offset]
        record.queries[k] = int(found.queries[row])
        record.broken_by[k] = found.broken_by[row]
        record.status[k] = BROKEN if bool(found.fooled[row]) else ROBUST
        record.adversarial[k] = np.ascontiguousarray(pixels[row]) if bool(found.fooled[row]) else None


def masking_warnings(state: EvaluationState) -> list[RobustnessWarning]:
    """Per ε, a gradient-masking warning when Square broke images (not carried from a smaller ε) after
    white-box attacks earlier in the list failed on them."""
    attacks = state.attacks
    if "square" not in attacks or not any(name in WHITE_BOX for name in attacks[: attacks.index("square")]):
        return []
    warnings = []
    for k, epsilon in enumerate(state.epsilons):
        fresh = [
            i
            for i, r in enumerate(state.records)
            if r.broken_by[k] == "square" and not (k > 0 and r.status[k - 1] == BROKEN)
        ]
        warning = gradient_masking_warning(fresh, epsilon)
        if warning is not None:
            warnings.append(warning)
    return warnings
