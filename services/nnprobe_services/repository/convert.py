"""UploadModel, ListModels and DeleteModel messages of a recurrent or token model repository, to plain values
and back. SequenceService and AttentionService declare the same messages in their own packages
(``models.proto``), so each function takes the generated module ``pb`` of the calling service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.artifacts import FORMATS
from nnprobe_services.repository.task_models import Installed, ModelSummary, TaskModels
from nnprobe_services.repository.upload import Upload

#: ModelFormat values by format name (``onnx`` 1, ``pt2`` 2: the same numbers in every package).
FORMAT_CODES = {"onnx": 1, "pt2": 2}
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}


def upload_metadata(message: Any) -> dict[str, Any]:
    """The first UploadModel message as ``TaskModels.begin_upload`` keyword arguments."""
    if message is None or message.WhichOneof("part") != "metadata":
        raise InvalidArgument("the first message must carry the metadata", field="metadata")
    meta = message.metadata
    fmt = FORMAT_NAMES.get(meta.format)
    if fmt is None:
        raise InvalidArgument(f"must be ONNX or TORCH_EXPORT ({', '.join(FORMATS)})", field="metadata.format")
    if meta.version < 0:
        raise InvalidArgument(f"must be >= 0, got {meta.version}", field="metadata.version")
    return {
        "name": meta.name,
        "fmt": fmt,
        "size": meta.size_bytes,
        "sha256": meta.sha256,
        "config_yaml": meta.config_yaml,
        "version": meta.version or None,
    }


async def receive_upload(messages: AsyncIterator[Any], models: TaskModels) -> Upload:
    """An UploadModel stream written into a new upload: its metadata first, then its chunks (each written in
    a worker thread). The upload is discarded when the stream fails."""
    metadata = upload_metadata(await anext(aiter(messages), None))
    name = metadata.pop("name")
    upload = await asyncio.to_thread(lambda: models.begin_upload(name, **metadata))
    try:
        async for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("only the first message carries metadata", field="metadata")
            await asyncio.to_thread(upload.write, message.chunk)
    except BaseException:
        upload.discard()
        raise
    return upload


def model_message(pb: ModuleType, model: ModelSummary) -> Any:
    """A ``RepositoryModel`` of ``model``."""
    message = pb.RepositoryModel(
        name=model.name,
        default_version=model.default_version,
        problem=model.problem,
        versions=[
            pb.RepositoryModelVersion(
                version=v.version, format=FORMAT_CODES[v.format], sha256=v.sha256, size_bytes=v.size_bytes
            )
            for v in model.versions
        ],
    )
    config = model.config
    if config is not None:
        message.task = config.task
        message.input_size = config.input_size or 0
        message.hidden_size = config.hidden_size
        message.states = config.states if config.state_sizes else 0
        message.pooled = config.pooled
        message.vocabulary = config.vocabulary or 0
        message.batch_size = config.batch_size or 0
        message.sequence_length = config.sequence_length or 0
        message.config_yaml = config.to_yaml()
    return message


def list_models(pb: ModuleType, models: TaskModels) -> Any:
    """The ListModels response: every model, sorted by name."""
    return pb.ListModelsResponse(models=[model_message(pb, m) for m in models.models()])


def upload_response(pb: ModuleType, installed: Installed, started: float) -> Any:
    """The UploadModel response; ``started``: when the upload began (``time.monotonic()``)."""
    return pb.UploadModelResponse(
        model=model_message(pb, installed.model),
        version=installed.version,
        sha256=installed.sha256,
        seconds=time.monotonic() - started,
        default_version_changed=installed.default_version != installed.previous_default,
        previous_default_version=installed.previous_default,
    )


def deletion(request: Any) -> tuple[str, int | None]:
    """The model and version (None: every version) a DeleteModel request removes."""
    if request.version < 0:
        raise InvalidArgument(f"must be >= 0, got {request.version}", field="version")
    return request.name.strip(), request.version or None
