"""The classifiers a vision server can serve (``list_models``) and its model repository (``upload_model``,
``delete_model``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.progress_bar import reporting


@rich_result()
@dataclass
class Preprocessing:
    """A model's preprocessing: shorter side to ``resize``, centre crop ``crop`` (h, w), /255, normalise."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@rich_result(tables={"versions": "versions"})
@dataclass
class ModelInfo:
    """One classifier the server can serve."""

    name: str
    architecture: str
    source: str
    weights_present: bool
    weights_path: str
    weights_file_name: str
    searched: list[str]
    #: sha256 of the weights file ("" when absent).
    version: str
    preprocessing: Preprocessing
    num_classes: int
    is_default: bool
    #: ``onnxruntime`` or ``pytorch``.
    backend: str = ""
    #: Where it runs (``cpu``, ``cuda``...).
    device: str = ""
    #: ``available``, ``loaded`` or ``unavailable``.
    state: str = ""
    #: Why it is unavailable.
    state_message: str = ""
    #: Input (height, width), channel order (``rgb``/``bgr``), largest pixel value (1 or 255), memory layout
    #: (``nchw``/``nhwc``) and element type (``float32``/``uint8``).
    input_size: tuple[int, int] = (0, 0)
    channel_order: str = ""
    value_max: float = 0.0
    input_layout: str = ""
    input_dtype: str = ""
    num_labels: int = 0
    in_repository: bool = False
    #: Repository versions, oldest first.
    versions: list[ModelVersion] = field(default_factory=list)
    default_version: int = 0
    raw: Any = field(repr=False, default=None)


@rich_result()
@dataclass
class ModelVersion:
    """One version of a repository model: number, format (``onnx``/``pt2``), sha256 (hex), size in bytes."""

    version: int
    format: str
    sha256: str
    size_bytes: int


@rich_result()
@dataclass
class UploadResult:
    """What UploadModel created: the model as listed, the version, the file's sha256, seconds taken, and
    whether the upload changed the version served by default (``previous_default_version``: the one served
    before, 0 for a new model; ``model.default_version``: the one served now)."""

    model: ModelInfo
    version: int
    sha256: str
    seconds: float
    raw: Any = field(repr=False, default=None)
    default_version_changed: bool = False
    previous_default_version: int = 0


STATES = {
    pb.MODEL_STATE_AVAILABLE: "available",
    pb.MODEL_STATE_LOADED: "loaded",
    pb.MODEL_STATE_UNAVAILABLE: "unavailable",
}
FORMATS = {"onnx": pb.MODEL_FORMAT_ONNX, "pt2": pb.MODEL_FORMAT_TORCH_EXPORT}
FORMAT_NAMES = {code: name for name, code in FORMATS.items()}
#: Bytes per UploadModel message.
CHUNK_BYTES = 1 << 20


def _model_info(m: Any) -> ModelInfo:
    p = m.preprocessing
    return ModelInfo(
        name=m.name,
        architecture=m.architecture,
        source=m.source,
        weights_present=m.weights_present,
        weights_path=m.weights_path,
        weights_file_name=m.weights_file_name,
        searched=list(m.searched),
        version=m.version,
        preprocessing=Preprocessing(
            p.resize, (p.crop.height, p.crop.width), p.interpolation, tuple(p.mean), tuple(p.std)
        ),
        num_classes=m.num_classes,
        is_default=m.is_default,
        backend=m.backend,
        device=m.device,
        state=STATES.get(m.state, ""),
        state_message=m.state_message,
        input_size=(m.input_spec.height, m.input_spec.width),
        channel_order=m.input_spec.channel_order,
        value_max=m.input_spec.value_max,
        input_layout=m.input_spec.layout,
        input_dtype=m.input_spec.dtype,
        num_labels=m.num_labels,
        in_repository=m.in_repository,
        versions=[
            ModelVersion(v.version, FORMAT_NAMES.get(v.format, ""), v.sha256, v.size_bytes)
            for v in m.versions
        ],
        default_version=m.default_version,
        raw=m,
    )


def _config_text(config: str | os.PathLike[str] | Mapping[str, Any] | None) -> str:
    """YAML text: a mapping (written as JSON, which YAML reads), a path to a YAML file, or YAML text."""
    if config is None:
        return ""
    if isinstance(config, Mapping):
        return json.dumps(config)
    if isinstance(config, os.PathLike) or (
        isinstance(config, str) and "\n" not in config and config.endswith((".yaml", ".yml"))
    ):
        return Path(config).read_text()
    return str(config)


def _labels(labels: Sequence[str] | os.PathLike[str] | str | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, os.PathLike | str):
        lines = Path(labels).read_text().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.strip() for line in lines]
    return list(labels)


def upload_model_messages(
    *,
    path: str | os.PathLike[str],
    name: str,
    config: str | os.PathLike[str] | Mapping[str, Any] | None,
    labels: Sequence[str] | os.PathLike[str] | str | None,
    version: int,
    format: str | None,
    on_progress: ProgressCallback | None,
) -> Iterator[pb.UploadModelRequest]:
    """The request stream of ``upload_model`` (sync and asyncio clients): the metadata with the file's
    sha256, then the file in chunks, reporting each chunk sent to ``on_progress``.

    Raises ValueError for an unknown ``format``, before anything is sent.
    """
    source = Path(path)
    fmt = format or ("pt2" if source.suffix == ".pt2" else "onnx")
    if fmt not in FORMATS:
        raise ValueError(f"format must be onnx or pt2, not {fmt!r}")
    size = source.stat().st_size
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    metadata = pb.UploadModelMetadata(
        name=name,
        version=version,
        format=FORMATS[fmt],
        size_bytes=size,
        sha256=digest.hexdigest(),
        config_yaml=_config_text(config),
        labels=_labels(labels),
    )
    return _upload_chunks(metadata, source, on_progress)


def _upload_chunks(
    metadata: pb.UploadModelMetadata, source: Path, on_progress: ProgressCallback | None
) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(metadata=metadata)
    sent, size = 0, metadata.size_bytes
    with source.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield pb.UploadModelRequest(chunk=block)
            sent += len(block)
            if on_progress is not None:
                on_progress(Progress(sent, size, "bytes", source.name))


def upload_result(response: Any) -> UploadResult:
    """An ``UploadModelResponse`` as an ``UploadResult``."""
    return UploadResult(
        _model_info(response.model),
        response.version,
        response.sha256,
        response.seconds,
        response,
        default_version_changed=response.default_version_changed,
        previous_default_version=response.previous_default_version,
    )


class ModelMethods(BaseClient):
    """The model-catalogue method of ``VisionClient``."""

    _stub: Any

    def list_models(
        self, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        """Every classifier the server can serve, the default first."""
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_model_info(m) for m in response.models]

    def upload_model(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        labels: Sequence[str] | os.PathLike[str] | str | None = None,
        version: int = 0,
        format: str | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> UploadResult:
        """Upload ``model.onnx`` or a ``torch.export`` archive (``.pt2``) into the server's model repository.

        ``config``: the model's ``config.yaml`` as a mapping, a YAML file path or YAML text (required for a
        new model; see the README for its fields). ``labels``: class names, or a file of one per line.
        ``version``: 0 picks the next. ``format``: ``onnx`` or ``pt2`` (default: from the file's suffix).
        ``on_progress`` is called with a ``nnprobe.Progress`` (unit ``bytes``: sent of the file's size) after
        each chunk. The server checks the sha256, refuses pickles and TorchScript, and loads the model
        before it becomes visible.
        """
        arguments = request_arguments(locals())
        with reporting(progress, on_progress, f"upload {name}", "B") as report:
            messages = upload_model_messages(**arguments, on_progress=report)
            return upload_result(self._unary(self._stub.UploadModel, messages, timeout))

    def delete_model(
        self, name: str, *, version: int = 0, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[int]:
        """Remove a repository model (``version`` 0) or one version; returns the versions removed."""
        request = pb.DeleteModelRequest(name=name, version=version)
        return list(self._unary(self._stub.DeleteModel, request, timeout).removed_versions)
