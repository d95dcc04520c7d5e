"""GenerateAdversarial messages to plain values and back: the goal, the attack's settings and the transfer
targets from the request (each check naming its field), and progress events and results to responses."""

from __future__ import annotations

import math

from nnprobe import tensors
from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import quote
from nnprobe_services.vision.attacks import methods, transfer, verdicts
from nnprobe_services.vision.attacks.workflow import AttackRequest, AttackResult
from nnprobe_services.vision.classification.classify import ClassScore
from nnprobe_services.vision.classification.convert import image_inputs
from nnprobe_services.vision.classification.workflow import Classification
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models import registry

METHODS = {
    pb.ATTACK_METHOD_UNSPECIFIED: "pgd",
    pb.ATTACK_METHOD_ADAM: "adam",
    pb.ATTACK_METHOD_FGSM: "fgsm",
    pb.ATTACK_METHOD_BIM: "bim",
    pb.ATTACK_METHOD_PGD: "pgd",
    pb.ATTACK_METHOD_MI_FGSM: "mi_fgsm",
    pb.ATTACK_METHOD_CW_L2: "cw_l2",
}
NORMS: dict[int, str] = {pb.ATTACK_NORM_LINF: "linf", pb.ATTACK_NORM_L2: "l2"}
LINF_ONLY = ("fgsm", "bim", "mi_fgsm")
#: Defaults of the optional positive settings.
POSITIVES = {"learning_rate": 0.01, "momentum_decay": 1.0, "cw_c": 1.0}


# -- request ---------------------------------------------------------------------------------------------
def attack_request(
    request: pb.GenerateAdversarialRequest, classification: Classification, max_steps: int, max_elements: int
) -> AttackRequest:
    """The attack a request asks for, checked in the order clients know; its images are read later, in the
    compute thread (``max_elements`` bounds each raw pixel tensor, ``max_steps`` the iterations)."""
    store = classification.models
    name = classification.model_name(request.model)
    top_k = classification.top_k(request.top_k, name)
    record, labels = store.describe(name)
    goal = target(request, record.num_classes, labels)
    settings = spec(request, max_steps)
    others = [
        classification.model_name(o or "-", field=f"transfer_models[{i}]")
        for i, o in enumerate(request.transfer_models)
    ]
    check_transfer_targets(request)
    version = store.version(name, request.model_version, "model_version")
    versions = [
        store.version(other, v, f"transfer_model_versions[{i}]")
        for i, (other, v) in enumerate(zip(others, transfer_versions(request), strict=True))
    ]
    check_distinct_transfer_models(others, versions)
    decode.count_images(len(request.images), "images", classification.max_images)
    return AttackRequest(
        name,
        lambda: image_inputs(request.images, max_elements),
        goal,
        settings,
        top_k,
        classification.limits,
        others,
        version,
        versions,
        labels,
    )


def target(
    request: pb.GenerateAdversarialRequest, classes: int, labels: tuple[str, ...] | None = None
) -> int | None:
    """The goal class of a targeted attack (by index or ImageNet label), None for an untargeted one."""
    goal = valid.enum_value(request.goal, pb.AttackGoal, "goal", pb.ATTACK_GOAL_UNSPECIFIED)
    has_target = request.HasField("target") and request.target.WhichOneof("target") is not None
    if goal == pb.ATTACK_GOAL_UNTARGETED and has_target:
        raise InvalidArgument("must be absent with an untargeted goal", field="target")
    if goal == pb.ATTACK_GOAL_TARGETED and not has_target:
        raise InvalidArgument("is required with a targeted goal", field="target")
    if not has_target:
        return None
    if request.target.WhichOneof("target") == "class_index":
        index = request.target.class_index
        if not 0 <= index < (classes or 2**31 - 1):  # classes 0: checked once the model is loaded
            raise InvalidArgument(f"must be in 0..{classes - 1}, got {index}", field="target.class_index")
        return index
    wanted = request.target.label.strip().lower()
    names = [label.lower() for label in (registry.imagenet_labels() if labels is None else labels)]
    if wanted not in names:
        kind = (
            "ImageNet class"
            if labels is None or labels == registry.imagenet_labels()
            else "class of the model"
        )
        raise InvalidArgument(f"no {kind} is called {quote(request.target.label)}", field="target.label")
    return names.index(wanted)


def spec(r: pb.GenerateAdversarialRequest, max_steps: int) -> methods.AttackSpec:
    """The attack's settings with their defaults; ``max_steps`` bounds ``steps`` and ``refine_steps``."""
    method, norm = _method_and_norm(r)
    epsilon = r.epsilon if r.HasField("epsilon") else 8 / 255
    if not (math.isfinite(epsilon) and 0 < epsilon <= 1):
        raise InvalidArgument(f"must be in (0, 1] pixel units, got {epsilon}", field="epsilon")
    steps = r.steps or {"fgsm": 1, "cw_l2": 100}.get(method, 10)
    if steps <= 0 or steps > max_steps:
        raise InvalidArgument(f"must be in 1..{max_steps}, got {r.steps}", field="steps")
    if method == "fgsm" and steps != 1:
        raise InvalidArgument("fgsm takes exactly one step", field="steps")
    step_size = r.step_size if r.HasField("step_size") else epsilon / (4 if norm == "linf" else 5)
    if not (math.isfinite(step_size) and 0 < step_size <= 1):
        raise InvalidArgument(f"must be in (0, 1] pixel units, got {step_size}", field="step_size")
    if r.HasField("random_start") and r.random_start and method != "pgd":
        raise InvalidArgument("only pgd has a random start", field="random_start")
    if not 0 <= r.refine_steps <= max_steps:
        raise InvalidArgument(f"must be in 0..{max_steps}, got {r.refine_steps}", field="refine_steps")
    values = {}
    for key, default in POSITIVES.items():
        value = getattr(r, key) if r.HasField(key) else default  # type: ignore[arg-type]
        if not (math.isfinite(value) and value > 0):
            raise InvalidArgument(f"must be a positive number, got {value}", field=key)
        values[key] = value
    valid.finite_non_negative(r.cw_confidence, "cw_confidence")
    return methods.AttackSpec(
        method=method,
        norm=norm,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        seed=r.seed,
        random_start=r.random_start if r.HasField("random_start") else method == "pgd",
        early_stop=r.early_stop if r.HasField("early_stop") else True,
        refine_steps=r.refine_steps,
        cw_confidence=r.cw_confidence,
        **values,
    )


def _method_and_norm(r: pb.GenerateAdversarialRequest) -> tuple[str, str]:
    method = METHODS.get(r.method)
    if method is None:
        raise InvalidArgument(f"unknown value {r.method}", field="method")
    norm_code = valid.enum_value(r.norm, pb.AttackNorm, "norm", pb.ATTACK_NORM_UNSPECIFIED)
    norm = NORMS.get(norm_code, "l2" if method == "cw_l2" else "linf")
    if method in LINF_ONLY and norm != "linf":
        raise InvalidArgument(f"{method} supports the L-infinity norm only", field="norm")
    if method == "cw_l2":
        if norm != "l2":
            raise InvalidArgument("cw_l2 is an L2 attack", field="norm")
        if r.HasField("epsilon"):
            raise InvalidArgument("cw_l2 has no epsilon budget; leave it out", field="epsilon")
    return method, norm


def check_transfer_targets(request: pb.GenerateAdversarialRequest) -> None:
    """At most ``transfer.MAX_TARGETS`` models and addresses together, each address of host:port form and
    given once."""
    if len(request.transfer_models) + len(request.transfer_addresses) > transfer.MAX_TARGETS:
        raise InvalidArgument(
            f"at most {transfer.MAX_TARGETS} transfer models and addresses together",
            field="transfer_addresses" if request.transfer_addresses else "transfer_models",
        )
    for i, address in enumerate(request.transfer_addresses):
        problem = transfer.address_problem(address)
        if problem:
            raise InvalidArgument(problem, field=f"transfer_addresses[{i}]")
        if address in request.transfer_addresses[:i]:
            first = list(request.transfer_addresses).index(address)
            raise InvalidArgument(
                f"repeats transfer_addresses[{first}] ({address}); give each server once",
                field=f"transfer_addresses[{i}]",
            )


def transfer_versions(request: pb.GenerateAdversarialRequest) -> list[int]:
    """One repository version per transfer model (0: its default): ``transfer_model_versions`` as given,
    or zeros when it is empty. Raises ``InvalidArgument`` when its length is neither 0 nor that of
    ``transfer_models``."""
    given, models = list(request.transfer_model_versions), request.transfer_models
    if not given:
        return [0] * len(models)
    if len(given) != len(models):
        raise InvalidArgument(
            f"has {len(given)} entries for {len(models)} transfer models: give one per transfer model "
            "(0 for a default version) or none",
            field="transfer_model_versions",
        )
    return given


def check_distinct_transfer_models(names: list[str], versions: list[int | None]) -> None:
    """Each transfer model (name and version; None: its default version) at most once: ``InvalidArgument``
    on ``transfer_models[i]`` naming the entry it repeats."""
    seen: dict[tuple[str, int | None], int] = {}
    for i, key in enumerate(zip(names, versions, strict=True)):
        if key in seen:
            raise InvalidArgument(
                f"repeats transfer_models[{seen[key]}] ({key[0]}); give each model once",
                field=f"transfer_models[{i}]",
            )
        seen[key] = i


# -- responses -------------------------------------------------------------------------------------------
def score(value: ClassScore) -> pb.ClassScore:
    return pb.ClassScore(index=value.index, label=value.label, probability=value.probability)


def progress(
    event: methods.Progress, labels: tuple[str, ...] | None = None
) -> pb.GenerateAdversarialResponse:
    """One progress event; ``labels``: the model's class names (default ImageNet's)."""
    labels = registry.imagenet_labels() if labels is None else labels
    return pb.GenerateAdversarialResponse(
        progress=pb.AttackProgress(
            image=event.image,
            iteration=event.iteration,
            loss=event.loss,
            goal_probability=event.goal_probability,
            top1=pb.ClassScore(
                index=event.top1,
                label=labels[event.top1] if event.top1 < len(labels) else str(event.top1),
                probability=event.top1_probability,
            ),
        )
    )


def result(outcome: AttackResult, name: str) -> pb.GenerateAdversarialResponse:
    """The result message of one image; ``name`` is the client's label of the image."""
    r = outcome.image
    return pb.GenerateAdversarialResponse(
        result=pb.AdversarialResult(
            image=r.image,
            name=name,
            original_png=outcome.original_png,
            adversarial_png=outcome.adversarial_png,
            perturbation=tensors.to_tensor(r.perturbation),
            l0=r.l0,
            l2=r.l2,
            linf=r.linf,
            original_top=[score(s) for s in r.original_top],
            final_top=[score(s) for s in r.final_top],
            success=r.success,
            iterations=r.iterations,
            seconds=r.seconds,
            goal_class=r.goal_class,
            transfers=[_transfer(t) for t in r.transfers],
        )
    )


#: Verdicts to their protobuf values.
VERDICTS = {
    verdicts.Verdict.UNSPECIFIED: pb.TRANSFER_VERDICT_UNSPECIFIED,
    verdicts.Verdict.FOOLED: pb.TRANSFER_VERDICT_FOOLED,
    verdicts.Verdict.NOT_FOOLED: pb.TRANSFER_VERDICT_NOT_FOOLED,
    verdicts.Verdict.NOT_APPLICABLE: pb.TRANSFER_VERDICT_NOT_APPLICABLE,
}


def _transfer(t: verdicts.Transfer) -> pb.TransferResult:
    return pb.TransferResult(
        model=t.model,
        address=t.address,
        top1=score(t.top1) if t.top1 is not None else None,
        fooled=t.fooled,
        error=t.error,
        original_top1=score(t.original_top1) if t.original_top1 is not None else None,
        verdict=VERDICTS[t.verdict],
        model_version=t.model_version,
        weights_sha256=t.weights_sha256,
        note=t.note,
    )
