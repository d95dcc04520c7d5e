"""The model repository of SequenceService and AttentionService: the user's own recurrent cells, sequence
models and token models (``upload_model``, ``list_models``, ``delete_model`` on ``SequenceClient`` and
``AttentionClient``). Both services declare the same messages in their own package; a client names its
generated module in ``_MODELS_PB``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.display import rich_result
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.vision.models import CHUNK_BYTES, _config_text

#: ModelFormat values (the same numbers in both packages).
FORMATS = {"onnx": 1, "pt2": 2}
FORMAT_NAMES = {code: name for name, code in FORMATS.items()}


@rich_result()
@dataclass
class RepositoryModelVersion:
    """One version: number, format (``onnx``/``pt2``), sha256 of the file (hex), size in bytes."""

    version: int
    format: str
    sha256: str
    size_bytes: int


@rich_result(tables={"versions": "versions"})
@dataclass
class RepositoryModel:
    """A repository model as its ``config.yaml`` declares it. ``task``: ``recurrent_cell``,
    ``sequence_model`` or ``token_model``; ``input_size`` I (0: token ids or a token model);
    ``hidden_size`` H (a token model's d_model D); ``states``: 1 (h) or 2 (h and c) for a cell;
    ``vocabulary``: token ids taken (0: floats); ``batch_size``/``sequence_length``: fixed B/T (0: any);
    ``problem``: why a broken folder cannot be used ("" when it can)."""

    name: str
    task: str
    input_size: int
    hidden_size: int
    states: int
    pooled: bool
    vocabulary: int
    batch_size: int
    sequence_length: int
    versions: list[RepositoryModelVersion]
    default_version: int
    config_yaml: str = field(repr=False, default="")
    problem: str = ""
    raw: Any = field(repr=False, default=None)


@rich_result()
@dataclass
class RepositoryUpload:
    """What UploadModel created: the model as listed, the version, the file's sha256, seconds taken, and
    whether the default version changed (``previous_default_version``: the one before, 0 for a new model)."""

    model: RepositoryModel
    version: int
    sha256: str
    seconds: float
    default_version_changed: bool = False
    previous_default_version: int = 0
    raw: Any = field(repr=False, default=None)


def repository_model(m: Any) -> RepositoryModel:
    """A ``RepositoryModel`` message as a ``RepositoryModel``."""
    return RepositoryModel(
        name=m.name,
        task=m.task,
        input_size=m.input_size,
        hidden_size=m.hidden_size,
        states=m.states,
        pooled=m.pooled,
        vocabulary=m.vocabulary,
        batch_size=m.batch_size,
        sequence_length=m.sequence_length,
        versions=[
            RepositoryModelVersion(v.version, FORMAT_NAMES.get(v.format, ""), v.sha256, v.size_bytes)
            for v in m.versions
        ],
        default_version=m.default_version,
        config_yaml=m.config_yaml,
        problem=m.problem,
        raw=m,
    )


def upload_result(response: Any) -> RepositoryUpload:
    """An ``UploadModelResponse`` as a ``RepositoryUpload``."""
    return RepositoryUpload(
        repository_model(response.model),
        response.version,
        response.sha256,
        response.seconds,
        response.default_version_changed,
        response.previous_default_version,
        response,
    )


def upload_messages(
    pb: ModuleType,
    *,
    path: str | Path,
    name: str,
    config: str | Path | Mapping[str, Any] | None,
    version: int,
    format: str | None,
    on_progress: ProgressCallback | None,
) -> Iterator[Any]:
    """The UploadModel request stream: metadata with the file's sha256, then the file in chunks, each
    reported to ``on_progress``. Raises ``ValueError`` for an unknown ``format`` before anything is sent."""
    source = Path(path)
    fmt = format or ("pt2" if source.suffix == ".pt2" else "onnx")
    if fmt not in FORMATS:
        raise ValueError(f"format must be onnx or pt2, not {fmt!r}")
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    metadata = pb.UploadModelMetadata(
        name=name,
        version=version,
        format=FORMATS[fmt],
        size_bytes=source.stat().st_size,
        sha256=digest.hexdigest(),
        config_yaml=_config_text(config),
    )
    return _chunks(pb, metadata, source, on_progress)


def _chunks(
    pb: ModuleType, metadata: Any, source: Path, on_progress: ProgressCallback | None
) -> Iterator[Any]:
    yield pb.UploadModelRequest(metadata=metadata)
    sent = 0
    with source.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield pb.UploadModelRequest(chunk=block)
            sent += len(block)
            if on_progress is not None:
                on_progress(Progress(sent, metadata.size_bytes, "bytes", source.name))


class RepositoryModelMethods(BaseClient):
    """``upload_model``, ``list_models`` and ``delete_model`` of a service with a recurrent or token model
    repository."""

    _stub: Any
    _MODELS_PB: ModuleType

    def list_models(
        self, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[RepositoryModel]:
        """Every model of the server's repository, sorted by name, with its task, declared shapes and
        versions."""
        response = self._unary(self._stub.ListModels, self._MODELS_PB.ListModelsRequest(), timeout)
        return [repository_model(m) for m in response.models]

    def upload_model(
        self,
        path: str | Path,
        *,
        name: str,
        config: str | Path | Mapping[str, Any] | None = None,
        version: int = 0,
        format: str | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> RepositoryUpload:
        """Upload an ONNX model (``.onnx``, opset 17 converts best) or a ``torch.export`` archive (``.pt2``)
        into the server's model repository.

        ``config``: the model's ``config.yaml`` as a mapping, a YAML file path or YAML text, for example
        ``{"task": "recurrent_cell", "input_size": 3, "hidden_size": 5, "states": 2}`` (required for a new
        model; see docs/recurrent.md and docs/attention.md). ``version``: 0 picks the next (numbers are
        never reused). ``format``: ``onnx`` or ``pt2`` (default: from the suffix). ``on_progress`` gets a
        ``nnprobe.Progress`` in bytes after each chunk. The server refuses pickles and TorchScript, and runs
        the model once on inputs of the declared shapes: a mismatch is ``InvalidArgument`` naming
        ``metadata.config_yaml`` with the shapes expected and got.
        """
        arguments = request_arguments(locals())
        with reporting(progress, on_progress, f"upload {name}", "B") as report:
            messages = upload_messages(self._MODELS_PB, **arguments, on_progress=report)
            return upload_result(self._unary(self._stub.UploadModel, messages, timeout))

    def delete_model(
        self, name: str, *, version: int = 0, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[int]:
        """Remove a repository model (``version`` 0) or one version; returns the versions removed. Their
        numbers are never given to a later upload."""
        request = self._MODELS_PB.DeleteModelRequest(name=name, version=version)
        return list(self._unary(self._stub.DeleteModel, request, timeout).removed_versions)
