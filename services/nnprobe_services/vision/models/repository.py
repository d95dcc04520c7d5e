"""The model repository: a folder in Triton's layout, shared by every replica that mounts it.

::

    <root>/<name>/config.yaml            the model's configuration (``config``)
    <root>/<name>/labels.txt             class names, one per line (the file ``config.yaml`` names)
    <root>/<name>/<version>/model.onnx   an ONNX model (external data files beside it), or
    <root>/<name>/<version>/model.pt2    a torch.export archive

Changes are atomic on one filesystem: an upload is written and validated in ``<root>/.staging/``, then renamed
into place (a new model's whole folder, or one new version folder); a delete renames the folder into
``<root>/.trash/`` before removing it. Installs and deletes hold an advisory ``flock`` on ``<root>/.lock`` so
replicas on one volume do not race. Listing reads the folder each time, so every replica sees the same models.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models.artifacts import FILE_NAMES, FORMATS
from nnprobe_services.vision.models.config import ModelConfig

STAGING = ".staging"
TRASH = ".trash"
#: Staging folders older than this (seconds) are leftovers of a crashed upload and are removed.
STALE_SECONDS = 3600.0


@dataclass(frozen=True)
class VersionEntry:
    """One version's file: ``format`` is ``onnx`` or ``pt2``; ``sha256`` is of ``path``'s bytes."""

    name: str
    version: int
    format: str
    path: Path


@dataclass(frozen=True)
class ModelEntry:
    """A model folder: its config, labels (empty when it names none) and versions, oldest first."""

    name: str
    config: ModelConfig
    labels: tuple[str, ...]
    versions: tuple[VersionEntry, ...]

    @property
    def default_version(self) -> VersionEntry:
        wanted = self.config.default_version
        for entry in self.versions:
            if entry.version == wanted:
                return entry
        if wanted is not None:
            raise FailedPrecondition(
                f"model {self.name!r} names default_version {wanted}, which is not in the repository",
                field="model",
            )
        return self.versions[-1]


def _version_file(folder: Path) -> tuple[str, Path] | None:
    for fmt in FORMATS:
        path = folder / FILE_NAMES[fmt]
        if path.is_file():
            return fmt, path
    return None


class ModelRepository:
    """Reads and changes the repository under ``root`` (created when missing)."""

    def __init__(self, root: Path, *, max_model_bytes: int) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes
        (self.root / STAGING).mkdir(parents=True, exist_ok=True)
        (self.root / TRASH).mkdir(exist_ok=True)
        self._sweep()

    # -- reading ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model with a ``config.yaml``, sorted."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / "config.yaml").is_file()
        )

    def get(self, name: str, field: str = "model") -> ModelEntry:
        """The model ``name``; ``NotFound`` when absent, ``FailedPrecondition`` when its folder is broken."""
        model_config.check_name(name, field)
        folder = self.root / name
        try:
            text = (folder / "config.yaml").read_text()
        except FileNotFoundError:
            raise NotFound(f"no model {name!r} in the repository", field=field) from None
        try:
            config = model_config.parse_yaml(text, f"{name}/config.yaml")
        except InvalidArgument as error:
            raise FailedPrecondition(f"the repository's {error}", field=field) from None
        labels: tuple[str, ...] = ()
        if config.labels is not None:
            try:
                labels = model_config.parse_labels((folder / config.labels).read_text())
            except (OSError, InvalidArgument) as error:
                raise FailedPrecondition(f"labels of {name!r}: {error}", field=field) from None
        versions = []
        for child in folder.iterdir():
            if child.is_dir() and model_config.is_version_name(child.name):
                found = _version_file(child)
                if found is not None:
                    versions.append(VersionEntry(name, int(child.name), found[0], found[1]))
        if not versions:
            raise FailedPrecondition(f"model {name!r} has no version folder with a model file", field=field)
        return ModelEntry(name, config, labels, tuple(sorted(versions, key=lambda v: v.version)))

    def resolve(
        self, name: str, version: int | None, field: str = "model"
    ) -> tuple[ModelEntry, VersionEntry]:
        """The model and one of its versions (``None``: the default version)."""
        entry = self.get(name, field)
        if version is None:
            return entry, entry.default_version
        for candidate in entry.versions:
            if candidate.version == version:
                return entry, candidate
        have = ", ".join(str(v.version) for v in entry.versions)
        raise NotFound(f"model {name!r} has no version {version}; it has {have}", field=f"{field}_version")

    # -- changing --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove crashed uploads' staging folders and the trash."""
        now = time.time()
        for child in (self.root / STAGING).iterdir():
            with contextlib.suppress(OSError):
                if now - child.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(child, ignore_errors=True)
        for child in (self.root / TRASH).iterdir():
            shutil.rmtree(child, ignore_errors=True)

    def begin_upload(
        self,
        name: str,
        *,
        fmt: str,
        size: int,
        sha256: str,
        config_yaml: str,
        labels: str | None,
        version: int | None = None,
    ) -> Upload:
        """Validate an upload's metadata and open its staging folder. Errors name the metadata field."""
        model_config.check_name(name, "metadata.name")
        if fmt not in FORMATS:
            raise InvalidArgument(
                f"must be one of {', '.join(FORMATS)}, got {fmt!r}", field="metadata.format"
            )
        if size <= 0:
            raise InvalidArgument(f"must be positive, got {size}", field="metadata.size_bytes")
        if size > self.max_model_bytes:
            raise ResourceExhausted(
                f"is {size} bytes; the limit is {self.max_model_bytes} (max_model_bytes)",
                field="metadata.size_bytes",
            )
        digest = sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument("must be 64 hexadecimal digits", field="metadata.sha256")
        config = model_config.parse_yaml(config_yaml, "metadata.config_yaml") if config_yaml.strip() else None
        label_list = model_config.parse_labels(labels, "metadata.labels") if labels else None
        if config is None and label_list is not None:
            raise InvalidArgument("labels come with a config; give config_yaml too", field="metadata.labels")
        if config is not None and label_list is not None and config.labels is None:
            config = ModelConfig(**{**config.__dict__, "labels": "labels.txt"})
        if config is not None and config.labels is not None and label_list is None:
            raise InvalidArgument(
                f"names labels file {config.labels!r}; send its lines", field="metadata.labels"
            )
        if config is None and not (self.root / name / "config.yaml").is_file():
            raise InvalidArgument("a new model needs its config", field="metadata.config_yaml")
        if version is not None:
            model_config.check_version(version, "metadata.version")
        folder = self.root / STAGING / uuid.uuid4().hex
        folder.mkdir()
        return Upload(self, folder, name, fmt, size, digest, config, label_list, version)

    def install(self, upload: Upload, validate: Callable[[VersionEntry, ModelConfig, tuple[str, ...]], None]):
        """Check the bytes, run ``validate`` on the staged version, then make it visible atomically."""
        try:
            upload.finish()
            existing = self._existing_config(upload.name)
            config = upload.config or existing
            assert config is not None
            if existing is not None and upload.config is not None and upload.config != existing:
                raise FailedPrecondition(
                    f"model {upload.name!r} exists with another config; upload without a config to add a "
                    "version, or delete the model first",
                    field="metadata.config_yaml",
                )
            labels = upload.labels if upload.labels is not None else self._labels(upload.name, config)
            staged = VersionEntry(upload.name, upload.version or 0, upload.format, upload.file)
            validate(staged, config, labels)
            with self._locked():
                return self._publish(upload, config, labels)
        finally:
            upload.discard()

    def _existing_config(self, name: str) -> ModelConfig | None:
        try:
            return self.get(name, "metadata.name").config
        except NotFound:
            return None

    def _labels(self, name: str, config: ModelConfig) -> tuple[str, ...]:
        if config.labels is None:
            return ()
        return model_config.parse_labels((self.root / name / config.labels).read_text())

    def _publish(self, upload: Upload, config: ModelConfig, labels: tuple[str, ...]) -> VersionEntry:
        target = self.root / upload.name
        if target.exists() and not (target / "config.yaml").is_file():
            raise FailedPrecondition(f"{upload.name!r} is a folder but not a model", field="metadata.name")
        names = [p.name for p in target.iterdir()] if target.exists() else []
        taken = [int(name) for name in names if name.isascii() and name.isdigit()]
        version = upload.version or max(taken, default=0) + 1
        if version in taken:
            raise FailedPrecondition(
                f"model {upload.name!r} has a version {version}; delete it first or choose another",
                field="metadata.version",
            )
        version_dir = upload.folder / "model" / str(version)
        version_dir.parent.mkdir(exist_ok=True)
        upload.file.parent.rename(version_dir)
        if not target.exists():
            (upload.folder / "model" / "config.yaml").write_text(config.to_yaml())
            if config.labels is not None:
                (upload.folder / "model" / config.labels).write_text(
                    "".join(f"{label}\n" for label in labels)
                )
            (upload.folder / "model").rename(target)
        else:
            version_dir.rename(target / str(version))
        fmt_file = target / str(version) / FILE_NAMES[upload.format]
        return VersionEntry(upload.name, version, upload.format, fmt_file)

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove a model (``version`` None) or one version; return the versions removed."""
        entry = self.get(name, "name")
        with self._locked():
            if version is None or len(entry.versions) == 1:
                if version is not None and entry.versions[0].version != version:
                    raise NotFound(f"model {name!r} has no version {version}", field="version")
                doomed, removed = self.root / name, [v.version for v in entry.versions]
            else:
                if version not in [v.version for v in entry.versions]:
                    raise NotFound(f"model {name!r} has no version {version}", field="version")
                if entry.config.default_version == version:
                    raise FailedPrecondition(
                        f"version {version} is model {name!r}'s default_version; delete the model instead",
                        field="version",
                    )
                doomed, removed = self.root / name / str(version), [version]
            trash = self.root / TRASH / uuid.uuid4().hex
            doomed.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return removed


class Upload:
    """An upload in its staging folder: ``write`` chunks, then ``ModelRepository.install``."""

    def __init__(
        self,
        repository: ModelRepository,
        folder: Path,
        name: str,
        fmt: str,
        size: int,
        sha256: str,
        config: ModelConfig | None,
        labels: tuple[str, ...] | None,
        version: int | None,
    ) -> None:
        self.repository = repository
        self.folder = folder
        self.name = name
        self.format = fmt
        self.size = size
        self.sha256 = sha256
        self.config = config
        self.labels = labels
        self.version = version
        self.file = folder / "version" / FILE_NAMES[fmt]
        self.file.parent.mkdir()
        self.received = 0
        self._digest = hashlib.sha256()
        self._handle = self.file.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ``ResourceExhausted`` past the declared size (the upload is then discarded)."""
        if self.received + len(chunk) > self.size:
            self.discard()
            raise ResourceExhausted(
                f"the upload sent more than the {self.size} bytes its metadata declared", field="chunk"
            )
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """Close the file; ``InvalidArgument`` when it is short or its sha256 differs."""
        self._handle.close()
        if self.received != self.size:
            raise InvalidArgument(
                f"the upload ended after {self.received} of {self.size} bytes (truncated)", field="chunk"
            )
        actual = self._digest.hexdigest()
        if actual != self.sha256:
            raise InvalidArgument(
                f"the bytes' sha256 is {actual}, not {self.sha256}", field="metadata.sha256"
            )

    def discard(self) -> None:
        """Remove the staging folder (nothing of the upload remains)."""
        with contextlib.suppress(OSError):
            self._handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)
