"""The inputs of a robustness job on a model served by a remote Open Inference Protocol endpoint: the
endpoint's metadata and the data set decoded for its input size.

The images reach the endpoint as the data set's decoded pixels, shorter side resized to the larger of the
input's height and width (bilinear, antialiased) and centre-cropped to height x width, as float32 in
[0, 1], NCHW, with no normalisation (the endpoint applies its own). Labels must be class indices as decimal
text (an endpoint's metadata names no classes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnprobe_services.errors import InvalidArgument, Unavailable
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.images.preprocess import Preprocessing
from nnprobe_services.vision.robustness.datasets import DatasetStore
from nnprobe_services.vision.robustness.remote import RemoteModel
from nnprobe_services.vision.robustness.requests import EvaluationRequest


@dataclass
class RemoteInputs:
    """The endpoint's model (close it when done), ``pixels`` (N, 3, H, W) float32 in [0, 1], ``labels``
    (N,) int64 class indices, ``names`` the labels as uploaded."""

    model: RemoteModel
    pixels: torch.Tensor
    labels: torch.Tensor
    names: list[str]


def preprocessing(height: int, width: int) -> Preprocessing:
    """Resize the shorter side to max(height, width), centre-crop height x width, no normalisation."""
    return Preprocessing(max(height, width), (height, width), "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def inputs(
    datasets: DatasetStore,
    limits: decode.ImageLimits,
    request: EvaluationRequest,
    deadline: float | None = None,
) -> RemoteInputs:
    """Read the endpoint's metadata (within ``deadline`` seconds; ``Unavailable`` when it cannot be
    reached, ``NotFound`` for an unknown model, ``FailedPrecondition`` on ``remote`` for a model without an
    FP32 NCHW image input) and decode the data set for it (``NotFound``; ``InvalidArgument`` naming
    ``dataset`` for an unusable image or a label that is not a class index)."""
    data = datasets.load(request.dataset)
    model = RemoteModel(
        request.remote_address, request.remote_model, request.remote_version, metadata_timeout=deadline
    )
    try:
        sig = model.signature
        images = [
            decode.ImageInput(image, None, f"dataset[{i}]", label)
            for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True))
        ]
        try:
            pixels = decode.model_inputs(
                images, preprocessing(sig.height, sig.width), limits, skip_resize=False
            )
        except InvalidArgument as error:
            raise InvalidArgument(f"data set {request.dataset!r}: {error.message}", field="dataset") from None
        labels = [_index(name, sig.classes) for name in data.labels]
    except BaseException:
        model.close()
        raise
    return RemoteInputs(model, pixels, torch.tensor(labels, dtype=torch.long), data.labels)


def check(
    datasets: DatasetStore, limits: decode.ImageLimits, request: EvaluationRequest, deadline: float | None
) -> int:
    """The data set's image count after ``inputs``' checks; when the endpoint is unreachable
    (``Unavailable``) only the data set is checked (the job reads the metadata again when it runs)."""
    try:
        found = inputs(datasets, limits, request, deadline)
    except Unavailable:
        return len(datasets.load(request.dataset).labels)
    found.model.close()
    return len(found.labels)


def _index(label: str, classes: int) -> int:
    if label.isdigit() and int(label) < classes:
        return int(label)
    raise InvalidArgument(
        f"label {label!r} is not a class index in 0..{classes - 1} (a remote model's labels are indices)",
        field="dataset",
    )
