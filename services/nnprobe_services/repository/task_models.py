"""A service's repository of recurrent or token models: the shared store (``folder``) holding models of some
``tasks`` (SequenceService: ``recurrent_cell`` and ``sequence_model``; AttentionService: ``token_model``),
each upload loaded and probed once before it is installed (``probing``), and the plain values ListModels,
UploadModel and DeleteModel answer with. ``load`` is the resolver the analyses use: a model version as a
``torch.fx.GraphModule`` in the precision asked for, read from the folder on every call (replicas sharing
the folder see the same models; versions are never reused, so a name and version always mean one file).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ServiceError
from nnprobe_services.repository import artifacts, folder, loading, probing, tasks
from nnprobe_services.repository.entries import ModelEntry, VersionEntry
from nnprobe_services.repository.tasks import TaskConfig
from nnprobe_services.repository.upload import Upload


@dataclass(frozen=True)
class VersionSummary:
    """One version: its number, format (``onnx``/``pt2``), file sha256 (hex) and size in bytes."""

    version: int
    format: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ModelSummary:
    """A model as ListModels shows it. ``config`` is None and ``problem`` says why when its folder is
    broken (the model can still be deleted)."""

    name: str
    config: TaskConfig | None
    versions: tuple[VersionSummary, ...]
    default_version: int
    problem: str = ""


@dataclass(frozen=True)
class Installed:
    """An installed upload: the model now, the version created, and the default version before (0: a new
    model) and after."""

    model: ModelSummary
    version: int
    sha256: str
    previous_default: int
    default_version: int


@dataclass(frozen=True)
class LoadedModel:
    """A model version loaded for analysis: ``module`` computes in the dtype asked for (on the CPU; move it
    where it runs)."""

    name: str
    version: int
    config: TaskConfig
    module: torch.fx.GraphModule


#: sha256 of files already read, by (path, size, modification time): ListModels does not reread them.
_hashes: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _sha256(path: Path) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        known = _hashes.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _hash_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _summary(entry: ModelEntry[TaskConfig]) -> ModelSummary:
    versions = tuple(
        VersionSummary(v.version, v.format, _sha256(v.path), v.path.stat().st_size) for v in entry.versions
    )
    return ModelSummary(entry.name, entry.config, versions, entry.default_version.version)


class TaskModels:
    """The models of ``accepted`` tasks under ``root`` (created when missing)."""

    def __init__(
        self, root: Path, *, accepted: tuple[str, ...], max_model_bytes: int, max_model_nodes: int
    ) -> None:
        self.accepted = accepted
        self.max_model_bytes = max_model_bytes
        self.max_model_nodes = max_model_nodes
        self.repository: folder.ModelRepository[TaskConfig] = folder.ModelRepository(
            root,
            max_model_bytes=max_model_bytes,
            parse_config=lambda text, field: tasks.parse_yaml(text, field, accepted),
        )

    def models(self) -> list[ModelSummary]:
        """Every model, sorted by name; a broken folder is listed with its problem."""
        summaries = []
        for name in self.repository.names():
            try:
                summaries.append(_summary(self.repository.get(name)))
            except ServiceError as error:
                summaries.append(ModelSummary(name, None, (), 0, problem=error.message))
        return summaries

    def summary(self, name: str) -> ModelSummary:
        """One model (``NotFound`` / ``FailedPrecondition`` naming ``model``)."""
        return _summary(self.repository.get(name))

    def begin_upload(
        self, name: str, *, fmt: str, size: int, sha256: str, config_yaml: str, version: int | None
    ) -> Upload:
        """Check an upload's metadata (errors name ``metadata.*``) and open its staging folder."""
        return self.repository.begin_upload(
            name, fmt=fmt, size=size, sha256=sha256, config_yaml=config_yaml, labels=None, version=version
        )

    def install(self, upload: Upload) -> Installed:
        """Check the bytes, load the staged file and run it on probe inputs of its config's shapes, then make
        it visible. Raises ``InvalidArgument`` naming ``file`` (an unsafe or unloadable file) or
        ``metadata.config_yaml`` (the model does not take or return its task's shapes)."""
        installed = self.repository.install(upload, self._validate)
        return Installed(
            self.summary(upload.name),
            installed.version,
            upload.sha256,
            upload.previous_default,
            upload.default_version,
        )

    def _validate(self, staged: VersionEntry, config: TaskConfig, labels: tuple[str, ...]) -> None:
        detected = artifacts.detect_format(staged.path, "file")
        if detected != staged.format:
            raise InvalidArgument(
                f"is {staged.format}, but the bytes are a {detected} model", field="metadata.format"
            )
        probing.check(self._module(staged.path, torch.float32, "file"), config, "metadata.config_yaml")

    def _module(self, path: Path, dtype: torch.dtype, field: str) -> torch.fx.GraphModule:
        return loading.load_graph(
            path, dtype=dtype, max_nodes=self.max_model_nodes, max_bytes=self.max_model_bytes, field=field
        )

    def delete(self, name: str, version: int | None) -> list[int]:
        """Remove a model (``version`` None) or one version; the versions removed. Numbers stay taken."""
        return self.repository.delete(name, version)

    def load(self, name: str, version: int | None, dtype: torch.dtype, field: str = "model") -> LoadedModel:
        """Model ``name`` at ``version`` (None or 0: its default) loaded in ``dtype``. Raises ``NotFound``
        on ``field`` / ``field_version``, ``FailedPrecondition`` on ``field`` for a broken folder or a file
        that no longer loads."""
        entry, chosen = self.repository.resolve(name, version or None, field)
        try:
            module = self._module(chosen.path, dtype, field)
        except InvalidArgument as error:  # the file changed on disk after its upload
            raise FailedPrecondition(
                f"version {chosen.version} of {name!r} no longer loads: {error.message}", field=field
            ) from None
        return LoadedModel(name, chosen.version, entry.config, module)
