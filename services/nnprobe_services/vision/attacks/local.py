"""Transfer checks on other local models (no gRPC): each transfer model classifies the 8-bit original and
adversarial pictures through its own preprocessing and is judged in its own labels (``verdicts``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nnprobe_services.errors import ServiceError
from nnprobe_services.vision.attacks import verdicts
from nnprobe_services.vision.attacks.adversarial import AdversarialImage
from nnprobe_services.vision.attacks.verdicts import Transfer
from nnprobe_services.vision.classification.classify import top_k
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.images.preprocess import Preprocessing
from nnprobe_services.vision.models import store
from nnprobe_services.vision.models.registry import LoadedModel


def transfer_input(pixels: np.ndarray, prep: Preprocessing, max_pixels: int) -> torch.Tensor:
    """An 8-bit (H, W, 3) uint8 picture as a model with preprocessing ``prep`` takes it: (3, h, w) float32
    in [0, 1], (h, w) = ``prep.crop``. A picture of that size is only scaled (Classify's ``skip_resize``);
    one of another size is resized and centre-cropped as Classify does with its PNG.

    Raises ``InvalidArgument``/``ResourceExhausted`` (on ``adversarial_png``) when the resize cannot be
    done within ``max_pixels``.
    """
    same = tuple(pixels.shape[:2]) == tuple(prep.crop)
    return preprocess.model_input(
        Image.fromarray(pixels),
        prep,
        field="adversarial_png",
        max_pixels=max_pixels,
        label="the adversarial picture",
        skip_resize=same,
    )


def local_transfer(
    other: LoadedModel, result: AdversarialImage, target: str | None, max_pixels: int
) -> Transfer:
    """How ``other`` judges ``result``: its top-1 on the original and on the adversarial picture (through its
    own preprocessing, by its serving backend) and the verdict in its labels; ``target``: the target's
    label (None: untargeted; "": the attacked model names no target class)."""
    name = other.record.name
    prep = other.record.preprocessing
    try:
        pixels = torch.stack(
            [transfer_input(p, prep, max_pixels) for p in (result.original, result.adversarial)]
        )
    except ServiceError as error:
        return verdicts.failed(name, "", f"{name}: {error}")
    logits = other.predict(pixels).float().numpy()  # no gradients needed
    before, after = (top_k(row, 1, other.labels)[0] for row in logits)
    return verdicts.outcome(
        name,
        "",
        before,
        after,
        target,
        other.labels,
        model_version=other.repository_version,
        weights_sha256=other.version,
    )


def transfer_from_store(
    models: store.ModelStore,
    name: str,
    version: int | None,
    result: AdversarialImage,
    target: str | None,
    max_pixels: int,
) -> Transfer:
    """``local_transfer`` to the model ``name`` at repository ``version`` (None: its default); a model that
    cannot be loaded (missing weights included) gives a failed check naming why."""
    try:
        other = models.get(name, version)
    except ServiceError as error:
        return verdicts.failed(name, "", str(error))
    return local_transfer(other, result, target, max_pixels)
