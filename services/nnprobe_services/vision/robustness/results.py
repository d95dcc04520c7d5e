"""What a robustness evaluation returns, and the checkpoint it resumes from.

Per image: its clean prediction and, at each ε, its status ("misclassified" when the clean image is already
wrong, "robust" or "broken"), the attack that broke it, Square's model queries and the 8-bit adversarial
image (uint8, C×H×W). Per ε: robust accuracy with its 95% Wilson score interval. ``EvaluationState`` is the
per-image record so far: plain values (``to_dict``/``from_dict`` are JSON-ready) that ``evaluate`` resumes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe_services.vision.robustness.diagnostics import RobustnessWarning
from nnprobe_services.vision.robustness.intervals import wilson_interval

MISCLASSIFIED, ROBUST, BROKEN = "misclassified", "robust", "broken"


@dataclass
class ImageRecord:
    """One image: ``label`` and clean ``prediction``; per ε (lists as long as the ε list, None where not yet
    evaluated) ``status``, ``broken_by``, ``queries`` and ``adversarial`` (uint8 (C, H, W) when broken);
    ``smallest_epsilon``: the smallest breaking ε bisection found (None when not asked or never broken)."""

    label: int
    prediction: int
    status: list[str | None]
    broken_by: list[str | None]
    queries: list[int]
    adversarial: list[np.ndarray | None]
    smallest_epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        images = [None if a is None else _encode(a) for a in self.adversarial]
        return {**{k: getattr(self, k) for k in _PLAIN}, "adversarial": images}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        images = [None if a is None else _decode(a) for a in data["adversarial"]]
        return cls(**{k: data[k] for k in _PLAIN}, adversarial=images)


_PLAIN = ("label", "prediction", "status", "broken_by", "queries", "smallest_epsilon")


def _encode(image: np.ndarray) -> dict[str, Any]:
    return {"shape": list(image.shape), "data": base64.b64encode(image.astype(np.uint8).tobytes()).decode()}


def _decode(data: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data["data"]), dtype=np.uint8).reshape(data["shape"]).copy()


@dataclass
class EvaluationState:
    """The evaluation's identity (ε list, norm, attacks, seed, batch size) and its per-image records."""

    epsilons: list[float]
    norm: str
    attacks: list[str]
    seed: int
    batch_size: int
    records: list[ImageRecord]
    warnings: list[RobustnessWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in ("epsilons", "norm", "attacks", "seed", "batch_size")}
        warnings = [{"kind": w.kind, "message": w.message, "images": list(w.images)} for w in self.warnings]
        return {**head, "records": [r.to_dict() for r in self.records], "warnings": warnings}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationState:
        warnings = [RobustnessWarning(w["kind"], w["message"], tuple(w["images"])) for w in data["warnings"]]
        return cls(
            list(data["epsilons"]),
            data["norm"],
            list(data["attacks"]),
            int(data["seed"]),
            int(data["batch_size"]),
            [ImageRecord.from_dict(r) for r in data["records"]],
            warnings,
        )


@dataclass(frozen=True)
class EpsilonSummary:
    """Robust accuracy at ``epsilon``: ``robust`` of ``total`` images, with its Wilson interval."""

    epsilon: float
    robust: int
    total: int
    accuracy: float
    low: float
    high: float


@dataclass
class RobustnessResult:
    """Clean accuracy (``clean_correct`` of ``total``, with its Wilson interval), one ``EpsilonSummary``
    per ε, the per-image ``records``, the ``warnings`` and the ``state`` to resume from."""

    norm: str
    attacks: tuple[str, ...]
    clean_correct: int
    total: int
    clean_accuracy: float
    clean_interval: tuple[float, float]
    per_epsilon: list[EpsilonSummary]
    records: list[ImageRecord]
    warnings: list[RobustnessWarning]
    state: EvaluationState

    def __repr__(self) -> str:
        accuracies = ", ".join(f"ε={s.epsilon:g}: {s.accuracy:.1%}" for s in self.per_epsilon)
        return f"RobustnessResult(clean {self.clean_accuracy:.1%} of {self.total}; robust {accuracies})"


def summarise(state: EvaluationState, confidence: float = 0.95) -> RobustnessResult:
    """The result of a finished ``state``: accuracies and their Wilson intervals at ``confidence``."""
    records, total = state.records, len(state.records)
    correct = sum(r.prediction == r.label for r in records)
    summaries = []
    for k, epsilon in enumerate(state.epsilons):
        robust = sum(r.status[k] == ROBUST for r in records)
        low, high = wilson_interval(robust, total, confidence)
        summaries.append(EpsilonSummary(epsilon, robust, total, robust / total if total else 0.0, low, high))
    return RobustnessResult(
        state.norm,
        tuple(state.attacks),
        correct,
        total,
        correct / total if total else 0.0,
        wilson_interval(correct, total, confidence),
        summaries,
        records,
        list(state.warnings),
        state,
    )
