"""``VisionClient``'s adversarial-example methods (``generate_adversarial``, ``attack``) and the event
conversion they share with ``nnprobe.aio.VisionClient``."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.vision.adversarial import (
    AdversarialResult,
    AttackProgress,
    _adversarial_result,
    _attack_progress,
    _attack_request,
)
from nnprobe.vision.images import ImageLike

P = ParamSpec("P")
R = TypeVar("R")


def attack_event(event: Any) -> AttackProgress | AdversarialResult | None:
    """One event of a ``GenerateAdversarial`` stream: an ``AttackProgress`` or an ``AdversarialResult``."""
    if event.HasField("progress"):
        return _attack_progress(event.progress)
    if event.HasField("result"):
        return _adversarial_result(event.result)
    return None


def attack_progress(step: AttackProgress, request: pb.GenerateAdversarialRequest) -> Progress:
    """An attack's ``AttackProgress`` as the ``Progress`` of ``attack``: iteration ``done`` of the steps
    asked for (0 when the server's default applies), the image's top-1 as the message."""
    message = f"image {step.image}: {step.top1.label} ({step.goal_probability:.3f} goal probability)"
    return Progress(step.iteration, request.steps, "iterations", message, step)


def collect(
    event: AttackProgress | AdversarialResult | None,
    request: pb.GenerateAdversarialRequest,
    results: list[AdversarialResult],
    on_progress: ProgressCallback | None,
) -> None:
    """``attack``'s handling of one event: results are kept, progress goes to ``on_progress``."""
    if isinstance(event, AdversarialResult):
        results.append(event)
    elif isinstance(event, AttackProgress) and on_progress is not None:
        on_progress(attack_progress(event, request))


#: The keywords of ``attack`` and ``generate_adversarial`` (appended to both docstrings): meaning, unit,
#: default.
ATTACK_KEYWORDS = """
Args:
    images: a file path, encoded bytes, a PIL image or an (H, W[, C]) array (uint8, or float in
        [0, 1]), or a list of them; each is resized and centre-cropped to the model's input.
    target: the goal class, an index or a label (a string of digits is an index); targeted.
    untargeted: leave the original class instead (no ``target``). Default False.
    method: ``adam``, ``fgsm``, ``bim``, ``pgd`` (default), ``mi_fgsm`` or ``cw_l2``.
    norm: the budget's norm, ``linf`` or ``l2``; None: the method's (``l2`` for ``cw_l2``).
    eps: budget in [0, 1] pixel units (``"4/255"`` works); None: 8/255. Not for ``cw_l2``.
    step_size: step in pixel units; None: eps/4 (L-infinity) or eps/5 (L2). Unused by FGSM.
    steps: iterations; 0: 10 (1 for FGSM, 100 for CW-L2), at most the server's limit.
    seed: seed of PGD's random start. Default 0.
    random_start: PGD's random start in the ball; None: on.
    early_stop: stop an image once its 8-bit version meets the goal; None: on.
    refine_steps: extra one-level sign steps when the 8-bit image misses the goal. Default 0.
    learning_rate: Adam's learning rate (``adam``, ``cw_l2``); None: 0.01.
    momentum_decay: MI-FGSM's momentum decay; None: 1.0.
    cw_c: CW-L2's trade-off constant c; None: 1.0.
    cw_confidence: CW-L2's confidence kappa (logit margin). Default 0.
    model: the model attacked (``list_models``); None: the server's default.
    model_version: the repository version of ``model``; 0: its default version.
    top_k: classes reported for the original and final images. Default 5.
    transfer_models: other local models that classify the final images (transfer check).
    transfer_model_versions: one version per transfer model (0: its default); empty: defaults.
    transfer_addresses: other VisionService servers that classify the final images.
    names: labels of the images in the results (file names are used for paths).
    on_progress: called with a ``nnprobe.Progress`` after each image's iteration: ``done`` the
        iteration of ``total`` = ``steps`` (0 when the server's default applies), unit
        ``iterations``, ``detail`` the ``AttackProgress`` (loss, goal probability, top-1).
    timeout: seconds for the whole attack; None: no deadline; ``USE_CLIENT_DEFAULT``: the
        client's.

Raises:
    nnprobe.InvalidArgument: a bad option or image (``field_violations`` names it).
    nnprobe.NotFound: an unknown model, version or target label.
    nnprobe.ResourceExhausted: the server's compute queue is full.
    ValueError: an unknown ``method`` or ``norm``, before anything is sent.
"""


def _with_keywords(method: Callable[P, R]) -> Callable[P, R]:
    """Append ``ATTACK_KEYWORDS`` to ``method``'s docstring (indented as the docstring is)."""
    method.__doc__ = (method.__doc__ or "") + textwrap.indent(ATTACK_KEYWORDS, "        ")
    return method


class AdversarialMethods(BaseClient):
    """The adversarial-example methods of ``VisionClient``."""

    _stub: Any

    @_with_keywords
    def generate_adversarial(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        target: int | str | None = None,
        untargeted: bool = False,
        method: str = "pgd",
        norm: str | None = None,
        eps: float | str | None = None,
        step_size: float | str | None = None,
        steps: int = 0,
        seed: int = 0,
        random_start: bool | None = None,
        early_stop: bool | None = None,
        refine_steps: int = 0,
        learning_rate: float | None = None,
        momentum_decay: float | None = None,
        cw_c: float | None = None,
        cw_confidence: float = 0.0,
        model: str | None = None,
        model_version: int = 0,
        top_k: int = 5,
        transfer_models: Sequence[str] = (),
        transfer_model_versions: Sequence[int] = (),
        transfer_addresses: Sequence[str] = (),
        names: Sequence[str] | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Iterator[AttackProgress | AdversarialResult]:
        """Stream an attack: an ``AttackProgress`` per image and iteration, then one ``AdversarialResult``
        per image (in the order they finish). Closing the iterator (or leaving the loop) cancels the attack
        on the server. The keywords are ``attack``'s but ``on_progress``.
        """
        request = _attack_request(**request_arguments(locals()))
        for event in self._stream(self._stub.GenerateAdversarial, request, timeout):
            converted = attack_event(event)
            if converted is not None:
                yield converted

    @_with_keywords
    def attack(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        target: int | str | None = None,
        untargeted: bool = False,
        method: str = "pgd",
        norm: str | None = None,
        eps: float | str | None = None,
        step_size: float | str | None = None,
        steps: int = 0,
        seed: int = 0,
        random_start: bool | None = None,
        early_stop: bool | None = None,
        refine_steps: int = 0,
        learning_rate: float | None = None,
        momentum_decay: float | None = None,
        cw_c: float | None = None,
        cw_confidence: float = 0.0,
        model: str | None = None,
        model_version: int = 0,
        top_k: int = 5,
        transfer_models: Sequence[str] = (),
        transfer_model_versions: Sequence[int] = (),
        transfer_addresses: Sequence[str] = (),
        names: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> list[AdversarialResult]:
        """Attack each image and return one ``AdversarialResult`` per image, in image order (the
        ``GenerateAdversarial`` RPC, run to its end).
        """
        request = _attack_request(**request_arguments(locals()))
        results: list[AdversarialResult] = []
        with reporting(progress, on_progress, "attack", "iterations") as report:
            for event in self._stream(self._stub.GenerateAdversarial, request, timeout):
                collect(attack_event(event), request, results, report)
        return sorted(results, key=lambda r: r.image)
