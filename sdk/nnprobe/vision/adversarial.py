"""Adversarial examples (``generate_adversarial``, ``attack``) and their transfer to other models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.pngs import encode_png, signed_picture
from nnprobe.vision.classify import ClassScore, class_scores
from nnprobe.vision.images import image_messages

_GOALS = {
    None: pb.ATTACK_GOAL_UNSPECIFIED,
    "targeted": pb.ATTACK_GOAL_TARGETED,
    "untargeted": pb.ATTACK_GOAL_UNTARGETED,
}
_METHODS = {
    "adam": pb.ATTACK_METHOD_ADAM,
    "fgsm": pb.ATTACK_METHOD_FGSM,
    "bim": pb.ATTACK_METHOD_BIM,
    "pgd": pb.ATTACK_METHOD_PGD,
    "mi_fgsm": pb.ATTACK_METHOD_MI_FGSM,
    "cw_l2": pb.ATTACK_METHOD_CW_L2,
}
_NORMS = {None: pb.ATTACK_NORM_UNSPECIFIED, "linf": pb.ATTACK_NORM_LINF, "l2": pb.ATTACK_NORM_L2}
ATTACK_METHODS = tuple(_METHODS)


@rich_result()
@dataclass
class AttackProgress:
    """One image after one iteration."""

    image: int
    iteration: int
    loss: float
    goal_probability: float
    top1: ClassScore


#: Transfer verdicts by their protobuf values ("": no verdict, the check failed).
TRANSFER_VERDICTS = {
    pb.TRANSFER_VERDICT_UNSPECIFIED: "",
    pb.TRANSFER_VERDICT_FOOLED: "fooled",
    pb.TRANSFER_VERDICT_NOT_FOOLED: "not fooled",
    pb.TRANSFER_VERDICT_NOT_APPLICABLE: "not applicable",
}


@rich_result()
@dataclass
class TransferResult:
    """How another model (local, or on the server at ``address``) classifies the adversarial image, judged
    in its own labels: ``original_top1`` and ``top1`` are its top class on the original (the attacked pixels)
    and on the adversarial image, each through its own preprocessing. ``verdict``: "fooled", "not fooled",
    "not applicable" (targeted, and it has no class of the target's label; ``note`` says why) or "" (the
    check failed: ``error``). ``fooled`` is ``verdict == "fooled"``. ``model_version``: its repository
    version (0: built in or not reported); ``weights_sha256``: its weights file's sha256 (empty: unknown)."""

    model: str
    address: str
    top1: ClassScore | None
    fooled: bool
    error: str
    original_top1: ClassScore | None = None
    verdict: str = ""
    model_version: int = 0
    weights_sha256: str = ""
    note: str = ""


#: An attack's pictures: the adversarial image, the original and the perturbation, at the model's input size.
_PICTURES = ("adversarial_png", "original_png", "perturbation_png")


def _top_rows(result: AdversarialResult) -> list[dict[str, Any]]:
    """Rank by rank: the class before the attack beside the class after it."""
    rows = []
    for rank in range(max(len(result.original_top), len(result.final_top))):
        before = result.original_top[rank] if rank < len(result.original_top) else None
        after = result.final_top[rank] if rank < len(result.final_top) else None
        rows.append(
            {
                "rank": rank + 1,
                "original": before.label if before else "",
                "original_probability": before.probability if before else None,
                "adversarial": after.label if after else "",
                "adversarial_probability": after.probability if after else None,
            }
        )
    return rows


@rich_result(
    pictures=_PICTURES,
    tables={"top": _top_rows, "transfers": "transfers"},
)
@dataclass
class AdversarialResult:
    """The outcome for one image. Pixels are the model's input size; ``perturbation`` (H, W, 3) float32."""

    image: int
    name: str
    original_png: bytes
    adversarial_png: bytes
    perturbation: np.ndarray
    l0: int
    l2: float
    linf: float
    original_top: list[ClassScore]
    final_top: list[ClassScore]
    success: bool
    iterations: int
    seconds: float
    goal_class: int
    transfers: list[TransferResult]
    raw: Any = field(repr=False, default=None)

    @property
    def perturbation_png(self) -> bytes:
        """The perturbation as a PNG: mid-gray is 0, the brightest and darkest are ±``linf`` (drawn here)."""
        return encode_png(signed_picture(np.asarray(self.perturbation, dtype=np.float64)))

    def save(self, path: str | Path, picture: str = "adversarial_png") -> Path:
        """Write a PNG to ``path``: ``adversarial_png`` (default), ``original_png`` or ``perturbation_png``.
        Raises ``ValueError`` for another name."""
        if picture not in _PICTURES:
            raise ValueError(
                f"picture must be adversarial_png, original_png or perturbation_png, not {picture!r}"
            )
        target = Path(path)
        target.write_bytes(getattr(self, picture))
        return target


def _adversarial_result(r: Any) -> AdversarialResult:
    return AdversarialResult(
        image=r.image,
        name=r.name,
        original_png=r.original_png,
        adversarial_png=r.adversarial_png,
        perturbation=tensors.to_numpy(r.perturbation),
        l0=r.l0,
        l2=r.l2,
        linf=r.linf,
        original_top=class_scores(r.original_top),
        final_top=class_scores(r.final_top),
        success=r.success,
        iterations=r.iterations,
        seconds=r.seconds,
        goal_class=r.goal_class,
        transfers=[_transfer_result(t) for t in r.transfers],
        raw=r,
    )


def _transfer_result(t: Any) -> TransferResult:
    def scored(s: Any) -> ClassScore:
        return ClassScore(s.index, s.label, s.probability)

    return TransferResult(
        t.model,
        t.address,
        scored(t.top1) if t.HasField("top1") else None,
        t.fooled,
        t.error,
        original_top1=scored(t.original_top1) if t.HasField("original_top1") else None,
        verdict=TRANSFER_VERDICTS.get(t.verdict, ""),
        model_version=t.model_version,
        weights_sha256=t.weights_sha256,
        note=t.note,
    )


def _attack_progress(p: Any) -> AttackProgress:
    return AttackProgress(
        p.image,
        p.iteration,
        p.loss,
        p.goal_probability,
        ClassScore(p.top1.index, p.top1.label, p.top1.probability),
    )


def parse_epsilon(value: float | str, name: str = "eps") -> float:
    """``4/255``, ``0.0157`` or a number -> float, in pixel units.

    Raises:
        ValueError: naming ``name``, for text that is not a number or a fraction, or a zero denominator.
    """
    try:
        if isinstance(value, str):
            numerator, sep, denominator = value.partition("/")
            return float(numerator) / float(denominator) if sep else float(value)
        return float(value)
    except (ValueError, TypeError, ZeroDivisionError):
        shown = str(value)[:40]
        raise ValueError(f"{name}: {shown!r} is not a number or a fraction like 4/255") from None


def _attack_request(
    images: Any,
    *,
    target: int | str | None,
    untargeted: bool,
    method: str,
    norm: str | None,
    eps: float | str | None,
    step_size: float | str | None,
    steps: int,
    seed: int,
    random_start: bool | None,
    early_stop: bool | None,
    refine_steps: int,
    learning_rate: float | None,
    momentum_decay: float | None,
    cw_c: float | None,
    cw_confidence: float,
    model: str | None,
    top_k: int,
    transfer_models: Sequence[str],
    transfer_addresses: Sequence[str],
    names: Sequence[str] | None,
    model_version: int = 0,
    transfer_model_versions: Sequence[int] = (),
) -> pb.GenerateAdversarialRequest:
    if method.lower() not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, not {method!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be linf or l2, not {norm!r}")
    request = pb.GenerateAdversarialRequest(
        model=model or "",
        images=image_messages(images, names),
        goal=pb.ATTACK_GOAL_UNTARGETED if untargeted else pb.ATTACK_GOAL_UNSPECIFIED,
        method=_METHODS[method.lower()],
        norm=_NORMS[norm],
        steps=steps,
        seed=seed,
        refine_steps=refine_steps,
        cw_confidence=cw_confidence,
        top_k=top_k,
        transfer_models=list(transfer_models),
        transfer_addresses=list(transfer_addresses),
        model_version=model_version,
        transfer_model_versions=list(transfer_model_versions),
    )
    if target is not None:
        _set_target(request, target, untargeted)
    _set_given(
        request,
        epsilon=None if eps is None else parse_epsilon(eps),
        step_size=None if step_size is None else parse_epsilon(step_size, "step_size"),
        random_start=random_start,
        early_stop=early_stop,
        learning_rate=learning_rate,
        momentum_decay=momentum_decay,
        cw_c=cw_c,
    )
    return request


def _set_target(request: pb.GenerateAdversarialRequest, target: int | str, untargeted: bool) -> None:
    """The goal class, by label or by index (a string of digits is an index); targeted unless
    ``untargeted``."""
    request.goal = pb.ATTACK_GOAL_TARGETED if not untargeted else request.goal
    if isinstance(target, str) and not _is_integer(target.strip().lstrip("-")):
        request.target.label = target
    else:
        request.target.class_index = int(target)


def _set_given(request: pb.GenerateAdversarialRequest, **optional: Any) -> None:
    """Set the optional fields that were given (not None); the others stay unset: the server's defaults."""
    for name, value in optional.items():
        if value is not None:
            setattr(request, name, value)


def _is_integer(text: str) -> bool:
    """ASCII decimal digits only (``str.isdigit`` also accepts superscripts and other scripts' digits)."""
    return bool(text) and text.isascii() and text.isdigit()
