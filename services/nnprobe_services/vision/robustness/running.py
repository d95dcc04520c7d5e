"""Running a claimed robustness job on this replica: decode its data set as Classify does, load the model,
run ``evaluate`` from the job's checkpoint (if any), checkpoint after every unit, and record how it ended:
SUCCEEDED, CANCELLED, FAILED, or handed back to the shared queue when this replica stops."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument
from nnprobe_services.sequence.jobs.records import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Claim,
    LeaseLost,
)
from nnprobe_services.sequence.jobs.replica import RunningJob
from nnprobe_services.vision.classification.classify import load_model
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models.registry import LoadedModel
from nnprobe_services.vision.models.store import ModelStore
from nnprobe_services.vision.robustness import remote_inputs
from nnprobe_services.vision.robustness.control import Model
from nnprobe_services.vision.robustness.datasets import DatasetStore
from nnprobe_services.vision.robustness.ensemble import WHITE_BOX
from nnprobe_services.vision.robustness.evaluate import evaluate
from nnprobe_services.vision.robustness.jobs import RobustnessJobs
from nnprobe_services.vision.robustness.requests import EvaluationRequest
from nnprobe_services.vision.robustness.results import EvaluationState

log = logging.getLogger("nnprobe.vision.robustness")


@dataclass
class Inputs:
    """A job's model and data: ``pixels`` (N, 3, H, W) float32 in [0, 1] on the model's device, ``labels``
    (N,) int64 class indices, ``names`` the data set's labels as uploaded."""

    model: LoadedModel
    pixels: torch.Tensor
    labels: torch.Tensor
    names: list[str]


def class_index(label: str, classes: int, class_names: tuple[str, ...], field: str) -> int:
    """A data-set label as the model's class index: one of the model's class names, or an index as decimal
    text; ``InvalidArgument`` on ``field`` otherwise."""
    if label in class_names:
        return class_names.index(label)
    if label.isdigit() and int(label) < classes:
        return int(label)
    raise InvalidArgument(
        f"label {label!r} is neither a class name of the model nor a class index in 0..{classes - 1}",
        field=field,
    )


def inputs(
    models: ModelStore, datasets: DatasetStore, limits: decode.ImageLimits, request: EvaluationRequest
):
    """Load the model and decode the data set (``NotFound`` for either; ``InvalidArgument`` naming
    ``dataset`` for an unusable image or label; ``FailedPrecondition`` on ``attacks`` when the model has no
    gradients and a white-box attack is asked for)."""
    record = models.describe(request.model)[0]
    model = load_model(models, request.model, request.version)
    gradient_model(model, request.attacks)
    data = datasets.load(request.dataset)
    images = [
        decode.ImageInput(image, None, f"dataset[{i}]", label)
        for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True))
    ]
    try:
        pixels = decode.model_inputs(images, record.preprocessing, limits, skip_resize=False)
    except InvalidArgument as error:
        raise InvalidArgument(f"data set {request.dataset!r}: {error.message}", field="dataset") from None
    pixels = pixels.to(model.device)
    classes = int(model.predict(pixels[:1]).shape[1])
    labels = [class_index(name, classes, model.labels, "dataset") for name in data.labels]
    return Inputs(model, pixels, torch.tensor(labels, dtype=torch.long, device=model.device), data.labels)


def gradient_model(model: LoadedModel, attacks: tuple[str, ...]) -> Model | None:
    """The differentiable model the white-box ``attacks`` need, None when they are all black-box (Square
    queries the served engine only). ``FailedPrecondition`` on ``attacks`` when the model has no gradients
    (an ONNX graph without a PyTorch conversion), saying that the black-box attack works."""
    white_box = [name for name in attacks if name in WHITE_BOX]
    if not white_box:
        return None
    try:
        return model.module
    except FailedPrecondition as error:
        raise FailedPrecondition(
            f"{error.message}; white-box attacks ({', '.join(white_box)}) need gradients, the black-box "
            'attack works: attacks=["square"]',
            field="attacks",
        ) from None


def units(images: int, epsilons: int, batch_size: int) -> int:
    """Units of work of an evaluation: one per ε and batch."""
    return epsilons * -(-images // batch_size)


def run_claimed(
    jobs: RobustnessJobs,
    models: ModelStore,
    datasets: DatasetStore,
    limits,
    claim: Claim,
    running: RunningJob,
) -> None:
    """Run a job the supervisor claimed for this replica to its end, or until it is stopped; record the
    outcome. Every event is fenced by the claim's lease."""
    job_id = claim.job.job_id
    release = {"owner": "", "lease_expires_at": 0.0, "cancel_requested": False}
    try:
        message = f"running (replica {jobs.replica_id})"
        if claim.takeover:
            message = (
                f"taken over by replica {jobs.replica_id} from {claim.previous_owner}, whose lease expired"
            )
        jobs.add_event(job_id, "state", {"state": RUNNING, "message": message}, step=jobs.units_done(job_id))
        finished = False if running.cancel else _evaluate(jobs, models, datasets, limits, claim, running)
        if running.lost:
            raise LeaseLost(job_id)
        if finished:
            jobs.add_event(
                job_id, "state", {"state": SUCCEEDED, "message": "finished"}, state=SUCCEEDED, **release
            )
        elif running.cancel:
            jobs.add_event(
                job_id, "state", {"state": CANCELLED, "message": "cancelled"}, state=CANCELLED, **release
            )
        else:
            done = jobs.units_done(job_id)
            payload = {"state": QUEUED, "message": f"handed over by replica {jobs.replica_id} at unit {done}"}
            if (
                jobs.store.release(
                    job_id,
                    jobs.replica_id,
                    running.attempt,
                    jobs.get(job_id).last_sequence,
                    payload,
                    step=done,
                )
                is None
            ):
                raise LeaseLost(job_id)
            jobs.notify(job_id)
    except LeaseLost:
        log.warning("job %s: another replica owns it now; this replica stopped running it", job_id)
    except Exception as error:  # recorded on the job; the server keeps running
        jobs.record_failure(job_id, error)
    finally:
        jobs.supervisor.finished(job_id)


def _evaluate(jobs: RobustnessJobs, models, datasets, limits, claim: Claim, running: RunningJob) -> bool:
    """Evaluate from the checkpoint; True when finished (the final state, bisection included, saved),
    False when stopped. A remote model is queried through its endpoint (Square only)."""
    request = EvaluationRequest.from_dict(claim.job.config)
    if request.is_remote:
        data = remote_inputs.inputs(datasets, limits, request)
        try:
            return _run(jobs, claim, running, request, None, data.pixels, data.labels, data.model.predict)
        finally:
            data.model.close()
    local = inputs(models, datasets, limits, request)
    model = local.model

    def judge(x: torch.Tensor) -> torch.Tensor:
        return model.predict(x).to(model.device)

    model_fn = gradient_model(model, request.attacks)
    return _run(jobs, claim, running, request, model_fn, local.pixels, local.labels, judge)


def _run(jobs, claim: Claim, running: RunningJob, request, model_fn, pixels, labels, judge) -> bool:
    job_id = claim.job.job_id
    try:
        result = evaluate(
            model_fn,
            pixels,
            labels,
            request.epsilons,
            request.attacks,
            request.norm,
            request.seed,
            stop=running.stop.is_set,
            checkpoint_state=jobs.checkpoint(job_id),
            judge=judge,
            settings=request.settings(),
            batch_size=request.batch_size,
            bisection_steps=request.bisection_steps,
            on_checkpoint=lambda state: _save(jobs, job_id, running, state),
        )
    except Cancelled:
        return False
    jobs.save_checkpoint(job_id, running, result.state.to_dict())
    return True


def _save(jobs: RobustnessJobs, job_id: str, running: RunningJob, state: EvaluationState) -> None:
    jobs.save_checkpoint(job_id, running, state.to_dict())
