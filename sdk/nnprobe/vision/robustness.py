"""Robustness evaluation results: robust accuracy per ε with Wilson intervals, every image's outcome (with
its 8-bit adversarial PNGs), warnings and the accuracy-vs-ε picture; jobs and their watch events; the
request messages of ``upload_dataset`` and ``evaluate_robustness``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe.api.vision.v1 import robustness_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.json_text import json_text
from nnprobe.pngs import encode_png
from nnprobe.vision.adversarial import parse_epsilon

NORMS = {"linf": pb.ROBUSTNESS_NORM_LINF, "l2": pb.ROBUSTNESS_NORM_L2}
NORM_NAMES = {value: name for name, value in NORMS.items()}
STATES = {
    pb.ROBUSTNESS_JOB_STATE_QUEUED: "queued",
    pb.ROBUSTNESS_JOB_STATE_RUNNING: "running",
    pb.ROBUSTNESS_JOB_STATE_SUCCEEDED: "succeeded",
    pb.ROBUSTNESS_JOB_STATE_FAILED: "failed",
    pb.ROBUSTNESS_JOB_STATE_CANCELLED: "cancelled",
    pb.ROBUSTNESS_JOB_STATE_INTERRUPTED: "interrupted",
}
STATE_VALUES = {name: value for value, name in STATES.items()}


def state_values(states: Iterable[str]) -> list[pb.RobustnessJobState.ValueType]:
    """The job states ``states`` (names such as ``"running"``) as request values; ``ValueError`` naming
    the unknown one and the known names."""
    values = []
    for state in states:
        if state not in STATE_VALUES:
            raise ValueError(f"states: unknown job state {state!r}; choose from {', '.join(STATE_VALUES)}")
        values.append(STATE_VALUES[state])
    return values


TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
#: Images sent per UploadDataset message.
IMAGES_PER_MESSAGE = 64


@rich_result()
@dataclass
class EpsilonAccuracy:
    """Robust accuracy at ``epsilon`` (pixel units): ``robust`` images, ``accuracy`` in [0, 1] and its 95%
    Wilson interval [``low``, ``high``]."""

    epsilon: float
    robust: int
    accuracy: float
    low: float
    high: float


@rich_result()
@dataclass
class ImageRobustness:
    """One image: its ``label`` and clean ``prediction``; per ε its ``status`` (misclassified, robust,
    broken), the attack that broke it (``broken_by``, "" if none), Square's ``queries`` and the adversarial
    8-bit image as PNG bytes (``adversarial``: None where not broken); ``smallest_epsilon`` from bisection
    (0: not asked or never broken)."""

    index: int
    label: str
    prediction: str
    status: list[str]
    broken_by: list[str]
    queries: list[int]
    adversarial: list[bytes | None] = field(repr=False)
    smallest_epsilon: float


@rich_result()
@dataclass
class RobustnessWarning:
    """A reason not to trust the evaluation: ``kind`` (gradient_masking, randomised, probabilities), what
    to do (``message``) and the images concerned."""

    kind: str
    message: str
    images: list[int]


@rich_result(pictures=("plot",), tables={"per_epsilon": "per_epsilon", "images": "images"})
@dataclass
class RobustnessResult:
    """Clean accuracy (``clean_correct`` of ``total``), robust accuracy per ε (``per_epsilon``), every
    image's outcome, ``warnings`` and ``plot`` (PNG of robust accuracy against ε)."""

    clean_correct: int
    total: int
    clean_accuracy: float
    per_epsilon: list[EpsilonAccuracy]
    images: list[ImageRobustness]
    warnings: list[RobustnessWarning]
    plot: bytes | None
    raw: Any = field(default=None, repr=False)

    def to_json(self) -> str:
        """The result without its pictures as strict JSON text (non-finite numbers as "inf" or "nan")."""
        body = {k: v for k, v in asdict(self).items() if k not in ("raw", "plot")}
        for image in body["images"]:
            image.pop("adversarial")
        return json_text(body)

    def to_csv(self) -> str:
        """One row per image and ε: index, label, prediction, epsilon, status, broken_by, queries."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["index", "label", "prediction", "epsilon", "status", "broken_by", "queries"])
        for image in self.images:
            for k, item in enumerate(self.per_epsilon):
                row = [image.index, image.label, image.prediction, item.epsilon, image.status[k]]
                writer.writerow([*row, image.broken_by[k], image.queries[k]])
        return out.getvalue()


@rich_result()
@dataclass
class RobustnessJob:
    """A robustness job: ``state`` (queued, running, succeeded, failed, cancelled, interrupted), units of
    work done of ``units_total`` (one per ε and batch), its request, and its ``result`` once it succeeded."""

    job_id: str
    name: str
    state: str
    model: str
    dataset: str
    units_done: int
    units_total: int
    epsilons: list[float]
    norm: str
    attacks: list[str]
    images: int
    error: str
    created_at: float
    updated_at: float
    result: RobustnessResult | None = None
    raw: Any = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@rich_result()
@dataclass
class RobustnessEvent:
    """One event of a watched job: its ``sequence`` (watch again after it), the job then, progress (units
    done of total, the ε of the last unit), a state ``message``, and the ``result`` on the last event."""

    sequence: int
    job: RobustnessJob
    units_done: int
    units_total: int
    epsilon: float
    message: str
    result: RobustnessResult | None = None


@rich_result()
@dataclass
class DatasetInfo:
    """A stored data set: ``name``, ``images``, its distinct ``labels`` and encoded ``bytes``."""

    name: str
    images: int
    labels: list[str]
    bytes: int


def _result(message: pb.RobustnessResult) -> RobustnessResult:
    images = [
        ImageRobustness(
            int(i.index),
            i.label,
            i.prediction,
            list(i.status),
            list(i.broken_by),
            [int(q) for q in i.queries],
            [bytes(a) or None for a in i.adversarial_png],
            i.smallest_epsilon,
        )
        for i in message.images
    ]
    return RobustnessResult(
        int(message.clean_correct),
        int(message.total),
        message.clean_accuracy,
        [EpsilonAccuracy(e.epsilon, int(e.robust), e.accuracy, e.low, e.high) for e in message.per_epsilon],
        images,
        [RobustnessWarning(w.kind, w.message, [int(i) for i in w.images]) for w in message.warnings],
        bytes(message.plot_png) or None,
        message,
    )


def _job(message: pb.RobustnessJob, result: pb.RobustnessResult | None = None) -> RobustnessJob:
    return RobustnessJob(
        message.job_id,
        message.name,
        STATES.get(message.state, "unspecified"),
        message.model,
        message.dataset,
        int(message.units_done),
        int(message.units_total),
        list(message.epsilons),
        NORM_NAMES.get(message.norm, "linf"),
        list(message.attacks),
        int(message.images),
        message.error,
        message.created_at,
        message.updated_at,
        _result(result) if result is not None and result.total else None,
        message,
    )


def _event(message: pb.WatchRobustnessJobResponse) -> RobustnessEvent:
    result = _result(message.result) if message.HasField("result") else None
    progress = message.progress
    return RobustnessEvent(
        int(message.sequence),
        _job(message.job),
        int(progress.units_done),
        int(progress.units_total),
        progress.epsilon,
        message.message,
        result,
    )


def _encoded(image: Any) -> bytes:
    """PNG/JPEG bytes, a path to such a file, or an (H, W, 3) uint8 array (sent as PNG)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    return encode_png(np.asarray(image))


def _label_text(label: Any, index: int) -> str:
    """``label`` as the UTF-8 text a request carries (bytes are decoded); ``ValueError`` naming
    ``labels[index]`` when it has no UTF-8 form (undecodable bytes, a lone surrogate from a file name)."""
    try:
        text = label.decode() if isinstance(label, bytes | bytearray) else str(label)
        text.encode()
    except UnicodeError:
        raise ValueError(f"labels[{index}]: {label!r} is not UTF-8 text; give class names as text") from None
    return text


def dataset_messages(
    name: str, images: Iterable[Any], labels: Sequence[str], server_folder: str
) -> Iterator[pb.UploadDatasetRequest]:
    """The UploadDataset stream: the name (and ``server_folder``), then images in batches. The labels are
    checked here, before the stream starts (``ValueError`` naming ``labels[i]``)."""
    texts = [_label_text(label, i) for i, label in enumerate(labels)]
    return _dataset_stream(name, images, texts, server_folder)


def _dataset_stream(
    name: str, images: Iterable[Any], labels: Sequence[str], server_folder: str
) -> Iterator[pb.UploadDatasetRequest]:
    if server_folder:
        yield pb.UploadDatasetRequest(name=name, server_folder=server_folder)
        return
    batch: list[pb.LabeledImage] = []
    first = True
    for image, label in zip(images, labels, strict=True):
        batch.append(pb.LabeledImage(data=_encoded(image), label=label))
        if len(batch) == IMAGES_PER_MESSAGE:
            yield pb.UploadDatasetRequest(name=name if first else "", images=batch)
            batch, first = [], False
    if batch or first:
        yield pb.UploadDatasetRequest(name=name if first else "", images=batch)


def _epsilons(eps: Sequence[float | str]) -> list[float]:
    """``eps`` as numbers (``"4/255"`` read as a fraction); ``ValueError`` naming ``eps[i]`` for text that
    is not a number or a fraction, or divides by zero."""
    values = []
    for i, value in enumerate(eps):
        try:
            values.append(parse_epsilon(value))
        except (ValueError, TypeError, ZeroDivisionError):
            raise ValueError(f"eps[{i}]: {value!r} is not a number or a fraction like 4/255") from None
    return values


#: A remote Open Inference model: "HOST:PORT/MODEL[/VERSION]", (address, model) or (address, model, version).
Endpoint = str | tuple[str, str] | tuple[str, str, str]


def remote_model(endpoint: Endpoint) -> pb.RemoteModel:
    """The RemoteModel of ``endpoint``; ``ValueError`` for text without ``/MODEL`` after ``HOST:PORT`` or a
    tuple of another length."""
    if isinstance(endpoint, str):
        slash = endpoint.find("/", endpoint.rfind(":") + 1)
        if slash < 0 or not endpoint[slash + 1 :]:
            raise ValueError(f"endpoint: {endpoint!r} is not HOST:PORT/MODEL[/VERSION]")
        model, _, version = endpoint[slash + 1 :].partition("/")
        return pb.RemoteModel(address=endpoint[:slash], model_name=model, model_version=version)
    if not isinstance(endpoint, (tuple, list)) or len(endpoint) not in (2, 3):
        raise ValueError("endpoint: give (address, model) or (address, model, version)")
    return pb.RemoteModel(address=endpoint[0], model_name=endpoint[1], model_version=str(*endpoint[2:3]))


def evaluation_request(
    model: str | None,
    dataset: str,
    *,
    eps: Sequence[float | str],
    norm: str,
    attacks: str | Sequence[str],
    seed: int,
    max_queries: int,
    bisection: bool,
    steps: int,
    batch_size: int,
    model_version: int,
    name: str,
    endpoint: Endpoint | None = None,
) -> pb.EvaluateRobustnessRequest:
    """The EvaluateRobustness request; ``eps`` entries may be fractions as text (``"4/255"``). Raises
    ``ValueError`` for an unknown ``norm``, an ``eps`` entry that is not a number or a malformed
    ``endpoint``."""
    if norm.lower() not in NORMS:
        raise ValueError(f"norm must be linf or l2, not {norm!r}")
    return pb.EvaluateRobustnessRequest(
        model=model or "",
        remote=remote_model(endpoint) if endpoint is not None else None,
        model_version=model_version,
        dataset=dataset,
        epsilons=_epsilons(eps),
        norm=NORMS[norm.lower()],
        attacks=[attacks] if isinstance(attacks, str) else list(attacks),
        seed=seed,
        max_queries=max_queries,
        bisection=bisection,
        steps=steps,
        batch_size=batch_size,
        name=name,
    )
