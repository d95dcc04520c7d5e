"""The ensembles: AutoAttack's "standard" (APGD-CE, APGD-T, FAB-T, Square, in this order, each later attack
only on the images still robust; Croce & Hein 2020) and the fast "pgd" mode. Every image an attack reports
broken is re-classified on its 8-bit image and checked to lie inside its budget before it counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nnprobe_services.vision.robustness.apgd import ApgdSettings, apgd_ce, apgd_t
from nnprobe_services.vision.robustness.candidates import AttackResult
from nnprobe_services.vision.robustness.control import Control, Model
from nnprobe_services.vision.robustness.fab import FabSettings, fab_t
from nnprobe_services.vision.robustness.grid import assert_within_budget
from nnprobe_services.vision.robustness.pgd import PgdSettings, pgd
from nnprobe_services.vision.robustness.square import SquareSettings, square

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
FAST = ("pgd",)
#: Every attack by name; the white-box ones need a differentiable model.
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "pgd")
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t", "pgd")
#: Named ensembles a request may ask for.
ENSEMBLES = {"standard": STANDARD, "pgd": FAST}


@dataclass(frozen=True)
class AttackSettings:
    """Each attack's settings (AutoAttack's standard parameters by default)."""

    apgd: ApgdSettings = field(default_factory=ApgdSettings)
    fab: FabSettings = field(default_factory=FabSettings)
    square: SquareSettings = field(default_factory=SquareSettings)
    pgd: PgdSettings = field(default_factory=PgdSettings)


@dataclass
class EnsembleResult:
    """Per image (N): ``adversarial`` (N, C, H, W) 8-bit, ``fooled`` (bool), ``broken_by`` (the attack's
    name or None), ``queries`` (int64, Square's model queries)."""

    adversarial: torch.Tensor
    fooled: torch.Tensor
    broken_by: list[str | None]
    queries: torch.Tensor


def resolve(attacks: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """An ensemble's name ("standard", "pgd") or a sequence of attack names, as attack names.
    Raises ``ValueError`` naming the unknown one."""
    names = ENSEMBLES[attacks] if isinstance(attacks, str) and attacks in ENSEMBLES else attacks
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in ATTACKS:
            raise ValueError(
                f"unknown attack {name!r}; choose from {', '.join(ATTACKS)} or {', '.join(ENSEMBLES)}"
            )
    if not names:
        raise ValueError("no attack given")
    return names


def _one(name: str, model, judge, x, y, epsilon, norm, control, settings: AttackSettings) -> AttackResult:
    if name == "square":
        return square(judge, x, y, epsilon, norm, control, settings.square)
    if model is None:
        raise ValueError(f"{name} is a white-box attack and needs a differentiable model")
    runs: dict[str, Callable[[], AttackResult]] = {
        "apgd-ce": lambda: apgd_ce(model, judge, x, y, epsilon, norm, control, settings.apgd),
        "apgd-t": lambda: apgd_t(model, judge, x, y, epsilon, norm, control, settings.apgd),
        "fab-t": lambda: fab_t(model, judge, x, y, epsilon, norm, control, settings.fab),
        "pgd": lambda: pgd(model, judge, x, y, epsilon, norm, control, settings.pgd),
    }
    return runs[name]()


def run_ensemble(
    model: Model | None,
    judge: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    norm: str,
    attacks: tuple[str, ...],
    control: Control,
    settings: AttackSettings = AttackSettings(),
) -> EnsembleResult:
    """Run ``attacks`` in order on ``images`` (N, C, H, W, on the 8-bit grid, all classified correctly)
    with ``labels`` (N,), each on the images no earlier attack broke. ``model``: differentiable logits (None
    for a black box: Square only); ``judge``: the served model's logits. Raises ``Cancelled``, ``ValueError``
    (a white-box attack without ``model``) and ``AssertionError`` if an 8-bit image left its budget."""
    count = len(images)
    result = EnsembleResult(
        images.clone(),
        torch.zeros(count, dtype=torch.bool, device=images.device),
        [None] * count,
        torch.zeros(count, dtype=torch.long, device=images.device),
    )
    for name in attacks:
        index = (~result.fooled).nonzero().flatten()
        if len(index) == 0:
            break
        found = _one(name, model, judge, images[index], labels[index], epsilon, norm, control, settings)
        if name == "square":
            result.queries[index] += found.queries
        broken = index[found.fooled]
        if len(broken):
            adversarial = found.adversarial[found.fooled]
            assert_within_budget(adversarial, images[broken], epsilon, norm)
            with torch.no_grad():
                confirmed = judge(adversarial).argmax(1) != labels[broken]
            broken, adversarial = broken[confirmed], adversarial[confirmed]
            result.adversarial[broken], result.fooled[broken] = adversarial, True
            for i in broken.tolist():
                result.broken_by[i] = name
    return result
