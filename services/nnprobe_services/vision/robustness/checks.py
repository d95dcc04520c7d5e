"""The checks on an evaluation's inputs and on a checkpoint it resumes: each failure names its field."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.vision.robustness.grid import NORMS
from nnprobe_services.vision.robustness.results import EvaluationState


def check_inputs(
    images: torch.Tensor, labels: torch.Tensor, eps_list: Sequence[float], norm: str, batch_size: int
) -> list[float]:
    """The ε list as floats, after checking ``images`` (N, C, H, W, values in [0, 1]), ``labels`` (N,)
    integer, ε finite, positive and strictly increasing, ``norm`` and ``batch_size``. Raises
    ``InvalidArgument``."""
    if images.dim() != 4 or len(images) == 0:
        raise InvalidArgument(
            "images", f"expected a non-empty (N, C, H, W) batch; got shape {tuple(images.shape)}"
        )
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise InvalidArgument("images", "pixel values must be finite and in [0, 1]")
    if labels.shape != (len(images),) or labels.dtype.is_floating_point:
        raise InvalidArgument(
            "labels", f"expected {len(images)} integer labels; got shape {tuple(labels.shape)}"
        )
    if norm not in NORMS:
        raise InvalidArgument("norm", f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    epsilons = [float(e) for e in eps_list]
    if not epsilons or any(not math.isfinite(e) or e <= 0 for e in epsilons):
        raise InvalidArgument(
            "eps_list", "give at least one ε, each finite and > 0 (pixel units, e.g. 8/255)"
        )
    if any(b <= a for a, b in itertools.pairwise(epsilons)):
        raise InvalidArgument("eps_list", "ε values must be strictly increasing")
    if batch_size < 1:
        raise InvalidArgument("batch_size", "must be at least 1")
    return epsilons


def check_classes(classes: int, attacks: tuple[str, ...]) -> None:
    """Raise ``InvalidArgument`` (field ``attacks``) when APGD-T's DLR loss lacks the 4 classes it needs."""
    if classes < 4 and "apgd-t" in attacks:
        raise InvalidArgument(
            "attacks",
            f"apgd-t's DLR loss needs at least 4 classes; the model has {classes}: leave apgd-t out",
        )


def check_resume(
    state: EvaluationState,
    epsilons: list[float],
    norm: str,
    attacks: tuple[str, ...],
    seed: int,
    batch_size: int,
    count: int,
) -> None:
    """Raise ``InvalidArgument`` (field ``checkpoint_state``) unless ``state`` belongs to this evaluation."""
    mine = (epsilons, norm, list(attacks), seed, batch_size, count)
    theirs = (state.epsilons, state.norm, state.attacks, state.seed, state.batch_size, len(state.records))
    names = ("eps_list", "norm", "attacks", "seed", "batch_size", "number of images")
    for name, a, b in zip(names, mine, theirs, strict=True):
        if a != b:
            raise InvalidArgument(
                "checkpoint_state", f"the checkpoint's {name} is {b!r}, this evaluation's {a!r}"
            )
