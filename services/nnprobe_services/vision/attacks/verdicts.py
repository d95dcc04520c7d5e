"""Transfer verdicts (no gRPC, no torch): whether another model is fooled by an adversarial image, judged in
that model's own view. Models number their classes as they like, so a verdict compares class LABELS (the
transfer model's top-1 labels against each other or against the target's label), never class indices.

* Untargeted: fooled when the transfer model's top-1 label on the adversarial image differs from its own
  top-1 label on the original (the attacked pixels).
* Targeted: fooled when its top-1 label on the adversarial image is the target's label (the attacked model's
  name of the target class); not applicable when it has no class of that label.

Labels match after ``strip().casefold()``, as target labels of requests do.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from nnprobe_services.vision.classification.classify import ClassScore


class Verdict(enum.Enum):
    """A transfer model's verdict; ``UNSPECIFIED`` when the check failed."""

    UNSPECIFIED = 0
    FOOLED = 1
    NOT_FOOLED = 2
    NOT_APPLICABLE = 3


@dataclass
class Transfer:
    """One transfer check. ``top1`` and ``original_top1``: the transfer model's top class on the adversarial
    image and on the original (None when ``error``). ``model_version``: its repository version (0: built
    in, or not reported); ``weights_sha256``: its weights file's sha256 (empty: unknown). ``note`` says why
    a verdict is ``NOT_APPLICABLE``."""

    model: str
    address: str
    top1: ClassScore | None
    fooled: bool
    error: str = ""
    original_top1: ClassScore | None = None
    verdict: Verdict = Verdict.UNSPECIFIED
    model_version: int = 0
    weights_sha256: str = ""
    note: str = ""


def same_label(a: str, b: str) -> bool:
    """Whether two class names are the same class: equal after ``strip().casefold()``."""
    return a.strip().casefold() == b.strip().casefold()


def judge(original: str, adversarial: str, target: str | None, labels: Sequence[str]) -> tuple[Verdict, str]:
    """The verdict of a transfer model whose top-1 labels are ``original`` (on the original) and
    ``adversarial`` (on the adversarial image), and why it is not applicable (empty otherwise).

    ``target``: None for an untargeted attack; else the target's label ("" when the attacked model has no
    name for the target class). ``labels``: the transfer model's class names (empty when it has none).
    """
    if target is None:
        return (Verdict.NOT_FOOLED if same_label(original, adversarial) else Verdict.FOOLED), ""
    if not target.strip():
        return Verdict.NOT_APPLICABLE, "the attacked model has no label for the target class"
    if not any(same_label(name, target) for name in labels):
        return Verdict.NOT_APPLICABLE, f"it has no class labelled {target!r}"
    return (Verdict.FOOLED if same_label(adversarial, target) else Verdict.NOT_FOOLED), ""


def outcome(
    model: str,
    address: str,
    before: ClassScore,
    after: ClassScore,
    target: str | None,
    labels: Sequence[str],
    *,
    model_version: int = 0,
    weights_sha256: str = "",
) -> Transfer:
    """The transfer result of a model that answered ``before`` (top-1 on the original) and ``after`` (top-1
    on the adversarial image); ``target`` and ``labels`` as ``judge`` takes them."""
    verdict, note = judge(before.label, after.label, target, labels)
    return Transfer(
        model,
        address,
        after,
        verdict is Verdict.FOOLED,
        original_top1=before,
        verdict=verdict,
        model_version=model_version,
        weights_sha256=weights_sha256,
        note=note,
    )


def failed(model: str, address: str, error: str) -> Transfer:
    """A transfer check that got no answer (missing weights, an unreachable server): no verdict."""
    return Transfer(model, address, None, False, error)


def target_label(labels: Sequence[str], target: int | None) -> str | None:
    """The label transfer models are judged against: None for an untargeted attack (``target`` None); the
    attacked model's name of class ``target`` (``labels``: its class names); "" when it names none."""
    if target is None:
        return None
    return labels[target] if 0 <= target < len(labels) else ""
