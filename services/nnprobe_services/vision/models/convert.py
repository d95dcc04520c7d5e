"""ListModels, UploadModel and DeleteModel messages: the model catalogue (built-in and repository models),
an upload's metadata and chunks, and a deletion as plain values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ServiceError
from nnprobe_services.repository.artifacts import FORMATS
from nnprobe_services.vision.models import backends, registry, store
from nnprobe_services.vision.models.repository import Upload, VersionEntry

FORMAT_CODES = {"onnx": pb.MODEL_FORMAT_ONNX, "pt2": pb.MODEL_FORMAT_TORCH_EXPORT}
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
BACKEND_OF = {"onnx": "onnxruntime", "pt2": "pytorch"}


def list_models(models_store: store.ModelStore, default: str) -> pb.ListModelsResponse:
    """Every servable model, ``default`` first, then the other built-ins, then the repository's. Reads the
    repository folder and hashes files (once per file version), so it runs in a worker thread."""
    response = pb.ListModelsResponse(default_model=default)
    names = sorted(models_store.names(), key=lambda n: n != default)
    response.models.extend(model_info(models_store, name, default) for name in names)
    return response


def _preprocessing(prep: registry.Preprocessing) -> pb.Preprocessing:
    return pb.Preprocessing(
        resize=prep.resize,
        crop=pb.Extent(height=prep.crop[0], width=prep.crop[1]),
        interpolation=prep.interpolation,
        mean=list(prep.mean),
        std=list(prep.std),
    )


def model_info(models_store: store.ModelStore, name: str, default: str) -> pb.ModelInfo:
    """One model as ListModels shows it; a broken repository folder shows as MODEL_STATE_UNAVAILABLE."""
    if models_store.is_builtin(name):
        return _builtin_info(models_store, name, default)
    info = pb.ModelInfo(name=name, is_default=name == default, in_repository=True)
    try:
        _repository_info(models_store, name, info)
    except (ServiceError, OSError) as error:  # a broken folder, or one deleted while being read
        unavailable = pb.ModelInfo(name=name, is_default=name == default, in_repository=True)
        unavailable.state = pb.MODEL_STATE_UNAVAILABLE
        unavailable.state_message = error.message if isinstance(error, ServiceError) else str(error)
        return unavailable
    return info


def _repository_info(models_store: store.ModelStore, name: str, info: pb.ModelInfo) -> None:
    """Fill ``info`` for repository model ``name``; a broken folder raises ``FailedPrecondition``."""
    assert models_store.repository is not None
    entry = models_store.repository.get(name)
    record, labels = models_store.describe(name)
    chosen = entry.default_version
    loaded = models_store.loaded(name, chosen.version)
    config = entry.config
    info.architecture, info.source = record.architecture, record.source
    info.weights_present, info.weights_path, info.weights_file_name = True, str(chosen.path), chosen.path.name
    info.version = registry.sha256_of(chosen.path)
    info.preprocessing.CopyFrom(_preprocessing(record.preprocessing))
    info.num_classes, info.num_labels = record.num_classes, len(labels)
    info.backend = loaded.backend.name if loaded else BACKEND_OF[chosen.format]
    if loaded is not None:
        info.device = loaded.backend.device
    elif chosen.format == "onnx":
        info.device = "cuda" if backends.onnx_providers(models_store.device)[0].startswith("CUDA") else "cpu"
    else:
        info.device = str(models_store.device)
    info.state = pb.MODEL_STATE_LOADED if loaded else pb.MODEL_STATE_AVAILABLE
    info.input_spec.CopyFrom(
        pb.InputSpec(
            height=config.height,
            width=config.width,
            channel_order=config.channel_order,
            value_max=config.value_range[1],
            layout=config.layout,
            dtype=config.dtype,
        )
    )
    info.default_version = chosen.version
    for version in entry.versions:
        info.versions.append(
            pb.ModelVersion(
                version=version.version,
                format=FORMAT_CODES[version.format],
                sha256=registry.sha256_of(version.path),
                size_bytes=version.path.stat().st_size,
            )
        )


def _builtin_info(models_store: store.ModelStore, name: str, default: str) -> pb.ModelInfo:
    record = registry.records()[name]
    where = models_store.location(name)
    loaded = models_store.loaded(name)
    prep = record.preprocessing
    if loaded is not None:
        state, backend, device = pb.MODEL_STATE_LOADED, loaded.backend.name, loaded.backend.device
    else:
        state = pb.MODEL_STATE_AVAILABLE if where.path is not None else pb.MODEL_STATE_UNAVAILABLE
        backend = "onnxruntime" if models_store.builtin_uses_onnx() else "pytorch"
        device = str(models_store.device)
    return pb.ModelInfo(
        name=name,
        architecture=record.architecture,
        source=record.source,
        weights_present=where.path is not None,
        weights_path=str(where.path or ""),
        weights_file_name=record.file_name,
        searched=list(where.searched),
        version=registry.sha256_of(where.path) if where.path is not None else "",
        preprocessing=_preprocessing(prep),
        num_classes=record.num_classes,
        is_default=name == default,
        backend=backend,
        device=device,
        state=state,
        state_message="" if where.path is not None else f"weights file {record.file_name} not found",
        input_spec=pb.InputSpec(
            height=prep.crop[0],
            width=prep.crop[1],
            channel_order="rgb",
            value_max=1.0,
            layout="nchw",
            dtype="float32",
        ),
        num_labels=record.num_classes if record.num_classes == 1000 else 0,
    )


def upload_metadata(message: pb.UploadModelRequest | None) -> dict:
    """The first UploadModel message as ``ModelStore.begin_upload`` keyword arguments."""
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
        "labels": "\n".join(meta.labels) if meta.labels else None,
        "version": meta.version or None,
    }


async def receive_upload(
    messages: AsyncIterator[pb.UploadModelRequest], models_store: store.ModelStore
) -> Upload:
    """An UploadModel stream written into a new upload: its metadata first, then its chunks (each written in
    a worker thread). The upload is discarded when the stream fails."""
    metadata = upload_metadata(await anext(aiter(messages), None))
    upload = models_store.begin_upload(**metadata)
    try:
        async for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("only the first message carries metadata", field="metadata")
            await asyncio.to_thread(upload.write, message.chunk)
    except BaseException:
        upload.discard()
        raise
    return upload


def upload_response(
    info: pb.ModelInfo, installed: VersionEntry, upload: Upload, started: float
) -> pb.UploadModelResponse:
    """The installed version and whether it changed the default version; ``started``: when the upload
    began (``time.monotonic()``)."""
    return pb.UploadModelResponse(
        model=info,
        version=installed.version,
        sha256=upload.sha256,
        seconds=time.monotonic() - started,
        default_version_changed=upload.default_version != upload.previous_default,
        previous_default_version=upload.previous_default,
    )


def deletion(request: pb.DeleteModelRequest, default_model: str) -> tuple[str, int | None]:
    """The model and version (None: every version) a DeleteModel request removes; the server's default
    model is refused."""
    if request.version < 0:
        raise InvalidArgument(f"must be >= 0, got {request.version}", field="version")
    name = request.name.strip()
    if name == default_model:
        raise FailedPrecondition(f"{name!r} is the server's default model", field="name")
    return name, request.version or None
