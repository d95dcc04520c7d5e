"""Adversarial examples end to end (no gRPC): classify the originals, run the attack, judge the 8-bit
results and describe each (PNG, perturbation and its norms). Transfer checks live in ``local``, ``remote``
and ``verdicts``."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.vision.attacks import methods
from nnprobe_services.vision.attacks.verdicts import Transfer
from nnprobe_services.vision.classification.classify import ClassScore, top_k
from nnprobe_services.vision.models.registry import LoadedModel


@dataclass
class AdversarialImage:
    """The outcome for one image; pixel arrays are (H, W, 3)."""

    image: int
    original: np.ndarray  # uint8
    adversarial: np.ndarray  # uint8
    perturbation: np.ndarray  # float32, multiples of 1/255
    l0: int
    l2: float
    linf: float
    original_top: list[ClassScore]
    final_top: list[ClassScore]
    success: bool
    iterations: int
    seconds: float
    goal_class: int
    float_adversarial: torch.Tensor = field(repr=False)
    transfers: list[Transfer] = field(default_factory=list)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) on the 8-bit lattice -> (H, W, 3) uint8."""
    return np.rint(pixels.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1: on photos about 5% larger than Pillow's default level 6, in less than
    half the time."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def describe(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Perturbation (float32, pixel units) and its L0 (changed channels), L2 and L-infinity sizes."""
    steps = adversarial.astype(np.int32) - original.astype(np.int32)
    perturbation = (steps / 255.0).astype(np.float32)
    exact = steps.astype(np.float64) / 255.0
    return (
        perturbation,
        int(np.count_nonzero(steps)),
        float(np.sqrt((exact**2).sum())),
        float(np.abs(exact).max()),
    )


def generate(
    model: LoadedModel,
    pixels: torch.Tensor,
    target: int | None,
    spec: methods.AttackSpec,
    *,
    k: int,
    should_stop: Callable[[], bool],
) -> Iterator[methods.Progress | AdversarialImage]:
    """Attack ``pixels`` (N, 3, H, W), already on the 8-bit lattice. ``target`` None: untargeted.

    Yields the attack's progress events and one ``AdversarialImage`` per image (in completion order).
    """
    start = time.monotonic()
    device = model.device

    def judge(x: torch.Tensor) -> torch.Tensor:  # the served model's logits (e.g. its ONNX Runtime session)
        return model.predict(x).to(device)

    images = pixels.to(device)
    logits = judge(images)
    original_logits = logits.float().cpu().numpy()
    original_tops = [top_k(row, k, model.labels) for row in original_logits]
    classes = original_logits.shape[1]
    if target is not None and not 0 <= target < classes:
        raise InvalidArgument(f"must be in 0..{classes - 1}, got {target}", field="target.class_index")
    if target is None:
        labels = torch.tensor([int(row.argmax()) for row in original_logits], device=device)
    else:
        labels = torch.full((len(images),), target, dtype=torch.long, device=device)
    # On the lattice, these are the logits the attack's check of the originals needs: no second pass.
    known = logits if torch.equal(methods.quantize(images), images) else None
    events = methods.attack(model.module, images, labels, target is not None, spec, should_stop, known, judge)
    for event in events:
        if isinstance(event, methods.Progress):
            yield event
            continue
        index, outcome = event
        final_logits = outcome.logits.float().cpu().numpy()
        original = to_uint8(images[index])
        adversarial = to_uint8(outcome.adversarial)
        perturbation, l0, l2, linf = describe(original, adversarial)
        yield AdversarialImage(
            image=index,
            original=original,
            adversarial=adversarial,
            perturbation=perturbation,
            l0=l0,
            l2=l2,
            linf=linf,
            original_top=original_tops[index],
            final_top=top_k(final_logits, k, model.labels),
            success=outcome.success,
            iterations=outcome.iterations,
            seconds=time.monotonic() - start,
            goal_class=int(labels[index]),
            float_adversarial=outcome.float_adversarial.detach().cpu(),
        )
