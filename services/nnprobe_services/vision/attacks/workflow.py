"""One GenerateAdversarial request with plain inputs and outputs (no gRPC): decode the images, load the
model, run the attack, classify each result with the other local models asked for, and encode the 8-bit
pictures. Transfers to remote servers are left to the caller (they need no compute thread)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from nnprobe_services.errors import Cancelled, StopSignal
from nnprobe_services.vision.attacks import adversarial, local, methods, verdicts
from nnprobe_services.vision.attacks.adversarial import AdversarialImage
from nnprobe_services.vision.attacks.metrics import AttackMetrics
from nnprobe_services.vision.classification.classify import load_model
from nnprobe_services.vision.classification.workflow import ImageReader
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.images.decode import ImageLimits
from nnprobe_services.vision.models import store


@dataclass(frozen=True)
class AttackRequest:
    """``model`` and ``transfer_models``: keys of ``models.records()`` or repository names. ``version`` and
    ``transfer_versions`` (one per transfer model): a repository version, None for the default version.
    ``target`` None: untargeted. ``top_k``: classes listed before and after the attack. ``images`` reads
    the images (in the compute thread); ``labels``: the model's class names (None: ImageNet's)."""

    model: str
    images: ImageReader
    target: int | None
    spec: methods.AttackSpec
    top_k: int
    limits: ImageLimits
    transfer_models: list[str] = field(default_factory=list)
    version: int | None = None
    transfer_versions: list[int | None] = field(default_factory=list)
    labels: tuple[str, ...] | None = None


@dataclass
class AttackResult:
    """One image's outcome with its original and adversarial pictures as PNG bytes (H, W, 3, 8 bits).
    ``goal_label``: what transfer models are judged against (``verdicts.target_label``: None untargeted,
    else the attacked model's label of the target class, "" when it has none)."""

    image: AdversarialImage
    original_png: bytes
    adversarial_png: bytes
    goal_label: str | None = None


def run(
    request: AttackRequest,
    models_store: store.ModelStore,
    stop: StopSignal,
    metrics: AttackMetrics | None = None,
) -> Iterator[methods.Progress | AttackResult]:
    """Yield the attack's progress events and one ``AttackResult`` per image (in completion order).

    Raises ``InvalidArgument``/``ResourceExhausted`` for unusable images, ``FailedPrecondition`` when the
    model's weights are missing, and ``Cancelled`` when ``stop`` is set between iterations. When the
    attack stops early (``Cancelled``, or the consumer closes this generator), ``metrics`` records the last
    iteration completed and why.
    """
    plain = request.images()
    prep = models_store.describe(request.model)[0].preprocessing
    pixels = methods.quantize(decode.model_inputs(plain, prep, request.limits, skip_resize=False))
    model = load_model(models_store, request.model, request.version)
    goal_label = verdicts.target_label(model.labels, request.target)
    iteration = 0
    events = adversarial.generate(
        model, pixels, request.target, request.spec, k=request.top_k, should_stop=stop
    )
    try:
        for event in events:
            if isinstance(event, methods.Progress):
                iteration = event.iteration
                yield event
                continue
            versions = request.transfer_versions or [None] * len(request.transfer_models)
            for name, version in zip(request.transfer_models, versions, strict=True):
                event.transfers.append(
                    local.transfer_from_store(
                        models_store, name, version, event, goal_label, request.limits.max_pixels
                    )
                )
            pngs = adversarial.png(event.original), adversarial.png(event.adversarial)
            yield AttackResult(event, *pngs, goal_label=goal_label)
    except Cancelled as error:
        if metrics is not None:
            metrics.stopped(
                error.done if error.done is not None else iteration, request.spec.steps, stop.reason
            )
        raise
    except GeneratorExit:
        if metrics is not None:
            metrics.stopped(iteration, request.spec.steps, stop.reason)
        raise
    finally:
        events.close()  # type: ignore[attr-defined]
