"""Protobuf <-> plain values for the robustness RPCs (UploadDataset, EvaluateRobustness and the job RPCs)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
from nnprobe.api.vision.v1 import robustness_pb2 as pb
from PIL import Image

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.sequence.jobs.records import EventRecord, JobRecord
from nnprobe_services.vision.robustness import workflow
from nnprobe_services.vision.robustness.datasets import Dataset, DatasetCollector, DatasetStore, check_name
from nnprobe_services.vision.robustness.requests import EvaluationRequest
from nnprobe_services.vision.robustness.workflow import JobResult, Robustness

NORMS = {pb.ROBUSTNESS_NORM_UNSPECIFIED: "linf", pb.ROBUSTNESS_NORM_LINF: "linf", pb.ROBUSTNESS_NORM_L2: "l2"}
NORM_ENUMS = {"linf": pb.ROBUSTNESS_NORM_LINF, "l2": pb.ROBUSTNESS_NORM_L2}
STATES = {
    "queued": pb.ROBUSTNESS_JOB_STATE_QUEUED,
    "running": pb.ROBUSTNESS_JOB_STATE_RUNNING,
    "succeeded": pb.ROBUSTNESS_JOB_STATE_SUCCEEDED,
    "failed": pb.ROBUSTNESS_JOB_STATE_FAILED,
    "cancelled": pb.ROBUSTNESS_JOB_STATE_CANCELLED,
    "interrupted": pb.ROBUSTNESS_JOB_STATE_INTERRUPTED,
}
STATE_NAMES = {value: name for name, value in STATES.items()}


def png(pixels: np.ndarray) -> bytes:
    """(C, H, W) uint8 as a lossless PNG (zlib level 1)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


async def receive_dataset(
    messages: AsyncIterator[pb.UploadDatasetRequest], datasets: DatasetStore
) -> Dataset:
    """An UploadDataset stream, stored (in a worker thread) once complete: images with labels, or the
    server folder the first message names."""
    stream = aiter(messages)
    first: pb.UploadDatasetRequest | None = await anext(stream, None)  # type: ignore[arg-type]
    if first is None:
        raise InvalidArgument("send at least one message", field="name")
    name = check_name(first.name.strip())
    if first.server_folder:
        if first.images:
            raise InvalidArgument("give images or server_folder, not both", field="server_folder")
        async for _ in stream:
            raise InvalidArgument("a server_folder upload is a single message", field="server_folder")
        return await asyncio.to_thread(datasets.import_folder, name, first.server_folder)
    collector = DatasetCollector(datasets.limits)
    message = first
    while message is not None:
        if message is not first and message.server_folder:
            raise InvalidArgument("only the first message may name a server_folder", field="server_folder")
        for image in message.images:
            collector.add(image.data, image.label)
        message = await anext(stream, None)  # type: ignore[arg-type]
    return await asyncio.to_thread(datasets.save, name, collector)


def dataset_response(dataset: Dataset) -> pb.UploadDatasetResponse:
    return pb.UploadDatasetResponse(
        name=dataset.name, images=len(dataset.images), labels=sorted(set(dataset.labels)), bytes=dataset.bytes
    )


def evaluation(request: pb.EvaluateRobustnessRequest) -> EvaluationRequest:
    """The request as plain values (fields are checked by ``requests.checked``)."""
    if request.norm not in NORMS:
        raise InvalidArgument(f"unknown norm {request.norm}", field="norm")
    if request.model_version < 0:
        raise InvalidArgument(f"must be >= 0, got {request.model_version}", field="model_version")
    return EvaluationRequest(
        model=request.model.strip(),
        dataset=request.dataset.strip(),
        epsilons=tuple(request.epsilons),
        norm=NORMS[request.norm],
        attacks=tuple(request.attacks) or ("standard",),
        seed=request.seed,
        max_queries=request.max_queries,
        bisection=request.bisection,
        steps=request.steps,
        batch_size=request.batch_size or 64,
        version=request.model_version or None,
        name=request.name,
        remote_address=request.remote.address.strip(),
        remote_model=request.remote.model_name.strip(),
        remote_version=request.remote.model_version.strip(),
    )


def job(record: JobRecord) -> pb.RobustnessJob:
    config = record.config
    return pb.RobustnessJob(
        job_id=record.job_id,
        name=record.name,
        state=STATES.get(record.state, pb.ROBUSTNESS_JOB_STATE_UNSPECIFIED),
        model=config["model"],
        dataset=record.corpus_id,
        units_done=record.step,
        units_total=record.total_steps,
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
        epsilons=config["epsilons"],
        norm=NORM_ENUMS[config["norm"]],
        attacks=config["attacks"],
        images=config.get("images", 0),
    )


def states(request: pb.ListRobustnessJobsRequest) -> list[str]:
    for i, value in enumerate(request.states):
        if value not in STATE_NAMES:
            raise InvalidArgument(f"unknown job state {value}", field=f"states[{i}]")
    return [STATE_NAMES[value] for value in request.states]


def limit(request: pb.ListRobustnessJobsRequest) -> int:
    if not 0 <= request.limit <= 1000:
        raise InvalidArgument(f"must be in 0..1000, got {request.limit}", field="limit")
    return request.limit or 100


def result(found: JobResult) -> pb.RobustnessResult:
    """The result message: accuracies, every image's outcome (adversarial images as PNG), warnings, plot."""
    summary, names = found.result, found.class_names
    images = []
    for i, record in enumerate(summary.records):
        adversarial = [b"" if a is None else png(a) for a in record.adversarial]
        prediction = names[record.prediction] if record.prediction < len(names) else str(record.prediction)
        images.append(
            pb.ImageRobustness(
                index=i,
                label=found.labels[i],
                prediction=prediction,
                status=[s or "" for s in record.status],
                broken_by=[b or "" for b in record.broken_by],
                queries=record.queries,
                adversarial_png=adversarial,
                smallest_epsilon=record.smallest_epsilon or 0.0,
            )
        )
    return pb.RobustnessResult(
        clean_correct=summary.clean_correct,
        total=summary.total,
        clean_accuracy=summary.clean_accuracy,
        per_epsilon=[
            pb.EpsilonAccuracy(
                epsilon=s.epsilon, robust=s.robust, accuracy=s.accuracy, low=s.low, high=s.high
            )
            for s in summary.per_epsilon
        ],
        images=images,
        warnings=[
            pb.RobustnessWarning(kind=w.kind, message=w.message, images=list(w.images))
            for w in summary.warnings
        ],
        plot_png=found.plot_png,
    )


def event(record: EventRecord, current: JobRecord, found: JobResult | None) -> pb.WatchRobustnessJobResponse:
    """A stored event as a WatchRobustnessJob message; ``found``: the result, on the job's last event."""
    reply = pb.WatchRobustnessJobResponse(sequence=record.sequence, job=job(current))
    payload = record.payload
    if record.kind == "progress":
        reply.progress.CopyFrom(
            pb.RobustnessProgress(
                units_done=payload["units_done"],
                units_total=payload["units_total"],
                epsilon=payload["epsilon"],
            )
        )
    else:
        reply.message = payload.get("message", "")
    if found is not None:
        reply.result.CopyFrom(result(found))
    return reply


def event_reply(robustness: Robustness, record: EventRecord) -> pb.WatchRobustnessJobResponse:
    """``event`` with the job as it is now, and the result on the event that ended a job that succeeded
    (reads the store: run it in a worker thread)."""
    current = robustness.jobs.get(record.job_id)
    ended = record.kind == "state" and record.payload.get("state") == "succeeded"
    return event(record, current, workflow.result(robustness, current) if ended else None)
