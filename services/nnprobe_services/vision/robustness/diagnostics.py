"""AutoAttack's warnings about an evaluation that cannot be trusted (Croce & Hein 2020, Section 5 and the
reference code's checks): the black-box attack succeeding where the white-box ones failed (gradient
masking), logits that change between identical calls (a randomised model: use EOT), and outputs that are
already probabilities (the losses expect logits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRADIENT_MASKING = "gradient_masking"
RANDOMISED = "randomised"
PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class RobustnessWarning:
    """``kind`` (one of the constants above), a readable ``message`` and the image indices concerned."""

    kind: str
    message: str
    images: tuple[int, ...] = ()


def probabilities_warning(logits: torch.Tensor) -> RobustnessWarning | None:
    """Warn when every row of ``logits`` (N, classes) is non-negative and sums to 1 (within 10^-4)."""
    if len(logits) == 0:
        return None
    sums = logits.double().sum(1)
    if bool((logits >= 0).all()) and bool(((sums - 1).abs() < 1e-4).all()):
        return RobustnessWarning(
            PROBABILITIES,
            "the model's outputs are non-negative and sum to 1 per row: they look like probabilities, not "
            "logits; the attacks' losses (cross-entropy, DLR, margin) are weaker on them — return logits",
        )
    return None


def randomised_warning(first: torch.Tensor, second: torch.Tensor) -> RobustnessWarning | None:
    """Warn when two calls on the same inputs gave different ``first`` and ``second`` logits (N, classes)
    beyond float noise (relative 10^-5, absolute 10^-6)."""
    differs = ~torch.isclose(first, second, rtol=1e-5, atol=1e-6).all(1)
    if bool(differs.any()):
        rows = tuple(int(i) for i in differs.nonzero().flatten())
        return RobustnessWarning(
            RANDOMISED,
            f"the model's logits changed between two identical calls on {len(rows)} image(s): it is "
            "randomised; the white-box attacks need expectation over transformation (eot_iter > 1)",
            rows,
        )
    return None


def gradient_masking_warning(black_box_only: list[int], epsilon: float) -> RobustnessWarning | None:
    """Warn when the black-box attack broke images ``black_box_only`` that every white-box attack at
    ``epsilon`` failed on: the gradients mislead (gradient masking or obfuscation)."""
    if not black_box_only:
        return None
    return RobustnessWarning(
        GRADIENT_MASKING,
        f"at ε={epsilon:g} the black-box Square attack broke {len(black_box_only)} image(s) that the "
        "white-box attacks could not: the model's gradients are likely masked, and white-box robust "
        "accuracy alone would overestimate its robustness",
        tuple(black_box_only),
    )
